"""`quantize`: every stage into one folder, reuse of unchanged stages, the summary."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.image as mpimg
import onnx
import onnxruntime as ort
import pytest

from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import load_plan
from hawq_onnx.io.sensitivity_report import load_sensitivity
from hawq_onnx.options import AnalyzeOptions, FinetuneOptions, QuantizeOptions, ValidateOptions
from hawq_onnx.pipeline import STAGES_FILE, quantize

FAST = QuantizeOptions(analyze=AnalyzeOptions(batch_size=64), validate=ValidateOptions(runs=0))
STEPPED = QuantizeOptions(analyze=FAST.analyze, finetune=FinetuneOptions(step_lr=0.01), validate=FAST.validate)
ARTEFACTS = ["sensitivity.json", "sensitivity.png", "plan.json", "pareto.png", "quantized.pt", "quantized.plan.json",
             "model.float.onnx", "model.qdq.onnx", "model.qdq.plan.json", "report.json", "report.md", "report.html"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    lines: list[str] = []
    summary = quantize(out=out, options=FAST, say=lines.append)
    return out, summary, lines


def test_every_artefact_is_there_and_loads(first_run):
    out, summary, _ = first_run
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
    for name in ("model.float.onnx", "model.qdq.onnx"):
        onnx.checker.check_model(onnx.load(str(out / name)), full_check=True)
        ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
    for name in ("sensitivity.png", "pareto.png", "report.accuracy_vs_size.png", "report.layers.png"):
        assert mpimg.imread(str(out / name)).shape[0] > 100
    assert len(load_sensitivity(out / "sensitivity.json").layers) == 6
    assert load_plan(out / "quantized.plan.json").calibrated
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["quantized"]["accuracy"]["top1"] == pytest.approx(summary.quant_top1)
    # The file computes what the PyTorch fake-quant model of its exported plan computes (issue 5's bar).
    assert load_plan(out / "model.qdq.plan.json").region_grids
    agreement = report["fake_quant_agreement"]
    assert agreement["samples"] == 359 and agreement["top1"] >= 0.995 and agreement["p99_steps"] <= 1.0
    assert summary.fake_quant_agreement == agreement["top1"]
    md = (out / "report.md").read_text()
    assert "its PyTorch reference (plan + export grids)" in md
    assert "## How this model was made" in md and "![Pareto frontier](pareto.png)" in md
    assert "fine-tuned (PyTorch, plan grids only)" in md and str(out / "model.qdq.onnx") in md
    assert summary.finetuned_top1 == load_plan(out / "quantized.plan.json").calibration["quant_top1"]
    assert summary.export_cost_points == pytest.approx(100 * (summary.finetuned_top1 - summary.quant_top1))
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


def test_summary_meets_the_default_job_goals(first_run):
    _, summary, _ = first_run
    assert summary.weight_ratio >= 8.0            # at least 8x weight compression
    assert summary.file_ratio > 4.0
    assert summary.float_top1 >= 0.97
    assert summary.drop_points <= 0.5             # the default job's goal
    assert summary.ran == ["analyze", "allocate", "finetune", "export", "validate"] and summary.reused == []


def test_second_run_reuses_every_stage_and_force_recomputes_one(first_run):
    out, summary, _ = first_run
    lines: list[str] = []
    again = quantize(out=out, options=FAST, say=lines.append)
    assert again.reused == ["analyze", "allocate", "finetune", "export", "validate"] and again.ran == []
    assert any("reused" in line for line in lines)
    assert again.quant_top1 == summary.quant_top1
    # A changed budget reruns every stage: the traces were settled for the old budget's plan.
    changed = quantize(budget="10x", out=out, options=FAST)
    assert changed.reused == [] and changed.weight_ratio >= 10.0
    assert changed.sensitivity.settings["settled_for"]["budgets"] == ["10x"]
    # An output modified by hand is not trusted.
    stages = json.loads((out / STAGES_FILE).read_text())
    assert "analyze" in stages["stages"]
    (out / "report.md").write_text("edited")
    edited = quantize(budget="10x", out=out, options=FAST)
    assert edited.ran == ["validate"]
    # --step-lr reaches fine-tuning: it reruns from there, and the plan records it.
    stepped = quantize(budget="10x", out=out, options=STEPPED)
    assert stepped.reused == ["analyze", "allocate"]
    assert load_plan(out / "quantized.plan.json").calibration["step_lr"] == 0.01


def test_out_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(HawqError, match="is a file"):
        quantize(out=f, options=FAST)


def test_cli_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "quantize", "--budget", "100x",
                        "--out", str(tmp_path / "o"), "--runs", "0", "--epochs", "1", "--analysis-batch-size", "32"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: budget 100x")
    assert "Traceback" not in r.stderr
