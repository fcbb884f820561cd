"""The public Python API on a user's own nn.Module and data: DataLoaders with tuple and dict
batches, data without labels, typed results that save and load, and the same artefacts as the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import hawq_onnx as hq
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model
from hawq_onnx.sources.user_data import FLOAT_MODEL_LABELS, LOSS_WITHOUT_LABELS

ROOT = Path(__file__).resolve().parents[1]
FAST_ANALYSIS = dict(batches=1, trace_tol=0.2, max_iter=20, sketch=0)


@pytest.fixture(scope="module")
def user():
    """What a user holds: the digits CNN as a plain nn.Module, and DataLoaders of normalised tensors."""
    loaded = load_model("digits-cnn")
    data = load_data("digits", loaded.spec)
    train = TensorDataset(torch.from_numpy(data.train.x), torch.from_numpy(data.train.y))
    test = TensorDataset(torch.from_numpy(data.test.x), torch.from_numpy(data.test.y))
    return loaded.module, DataLoader(train, batch_size=64, shuffle=False), DataLoader(test, batch_size=128), data


@pytest.fixture(scope="module")
def staged(user, tmp_path_factory):
    """Every stage once, by hand, on tuple batches."""
    model, train, test, _ = user
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens = hq.analyze(model, train, **FAST_ANALYSIS, settle_for=("8x",), settle_allocation=hq.AllocateOptions(a_bits=(8,)))
    plan = hq.allocate(sens, budget="8x", a_bits=(8,))
    qmodel = hq.finetune(model, plan, train, eval_data=test, steps=6)
    exported = hq.export(qmodel)
    float_onnx = hq.export(model, data=test)
    report = hq.validate(float_onnx, exported, test, reference=qmodel, runs=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's module is untouched
    return sens, plan, qmodel, exported, float_onnx, report


def test_the_public_names():
    assert set(hq.__all__) >= {"analyze", "allocate", "finetune", "export", "validate", "package", "inspect",
                               "quantize", "Sensitivity", "Plan", "QuantizedModel", "ValidationReport",
                               "AnalyzeOptions", "QuantizeOptions", "HawqError", "__version__"}
    assert re.match(r"\d+\.\d+", hq.__version__)
    for name in hq.__all__:
        assert getattr(hq, name) is not None
    with pytest.raises(AttributeError):
        hq.no_such_thing  # noqa: B018


def test_stages_by_hand_on_a_dataloader(staged, user):
    sens, plan, qmodel, exported, float_onnx, report = staged
    _, _, test, data = user
    assert isinstance(sens, hq.Sensitivity) and len(sens.layers) == 6
    assert sens.settings["loss"] == "cross_entropy" and sens.data == "python:DataLoader"
    assert sens.settings["samples"] == 256  # one seeded random batch of batch_size
    assert isinstance(plan, hq.Plan) and plan.totals["ratio"] >= 8.0
    assert isinstance(qmodel, hq.QuantizedModel) and qmodel.plan.calibrated
    with torch.no_grad():
        scores = qmodel(torch.from_numpy(data.test.x[:8]))
    assert scores.shape == (8, 10)
    assert isinstance(exported, hq.ExportedModel) and exported.grids and exported.target in ("ort-vnni", "ort-avx2")
    assert exported.file_bytes < float_onnx.file_bytes / 3
    onnx.checker.check_model(exported.model, full_check=True)
    assert isinstance(report, hq.ValidationReport) and report.samples == len(data.test)
    assert report.fake_quant is not None and report.fake_quant.top1 >= 0.995
    assert report.float.accuracy.top1 > 0.9


def test_results_save_and_load(staged, user, tmp_path):
    sens, plan, qmodel, exported, _, report = staged
    model = user[0]
    assert hq.Sensitivity.load(sens.save(tmp_path / "s.json")).to_json() == sens.to_json()
    assert hq.Plan.load(plan.save(tmp_path / "p.json")) == plan
    qmodel.save(tmp_path / "q.pt")
    again = hq.QuantizedModel.load(tmp_path / "q.pt", model, input_shape=(1, 8, 8))
    x = torch.from_numpy(user[3].test.x[:32])
    with torch.no_grad():
        assert torch.equal(again(x), qmodel(x))
    exported.save(tmp_path / "m.onnx")
    loaded = hq.ExportedModel.load(tmp_path / "m.onnx")
    assert loaded.plan == exported.plan and loaded.model.SerializeToString() == exported.model.SerializeToString()
    assert json.loads(report.save(tmp_path / "r.json").read_text())["format"] == "hawq-onnx-validation"
    assert hq.ValidationReport.load(tmp_path / "r.json").to_json() == report.to_json()


def test_package_and_inspect_take_objects(staged, tmp_path):
    _, _, _, exported, _, report = staged
    ins = hq.inspect(exported)
    assert isinstance(ins, hq.Inspection) and len(ins.layers) == 6
    bundle = hq.package(exported, tmp_path / "bundle", report=report)
    assert (tmp_path / "bundle" / "model.ort").is_file() and bundle.manifest["check"]
    assert isinstance(hq.inspect(tmp_path / "bundle"), hq.Bundle)


def test_dict_batches_are_keyword_inputs(user):
    model, _, _, data = user

    class Pixels(torch.utils.data.Dataset):
        def __len__(self):
            return 256

        def __getitem__(self, i):
            return {"pixels": torch.from_numpy(data.train.x[i]), "labels": int(data.train.y[i])}

    loader = DataLoader(Pixels(), batch_size=64)
    with pytest.raises(hq.HawqError, match="keyword argument 'pixels'.*pass input_fn"):
        hq.analyze(model, loader, **FAST_ANALYSIS)  # the CNN's forward has no parameter "pixels"
    sens = hq.analyze(model, loader, input_fn=lambda b: b["pixels"], **FAST_ANALYSIS)
    assert sens.settings["loss"] == "cross_entropy"  # the dict's "labels" were used
    plain = hq.analyze(model, [(b["pixels"], b["labels"]) for b in loader], **FAST_ANALYSIS)
    assert [la.trace for la in sens.layers] == [la.trace for la in plain.layers]


def test_without_labels_the_float_model_labels(user):
    model, _, _, data = user
    x = torch.from_numpy(data.train.x[:320])
    sens = hq.analyze(model, DataLoader(x, batch_size=64), **FAST_ANALYSIS)
    assert sens.settings["loss"] == LOSS_WITHOUT_LABELS
    plan = hq.allocate(sens, "8x", a_bits=(8,))
    qmodel = hq.finetune(model, plan, x.numpy(), steps=4)
    assert qmodel.plan.calibration["distill_weight"] == 1.0 and FLOAT_MODEL_LABELS in qmodel.plan.calibration["data"]
    assert qmodel.float_accuracy == 1.0  # the labels are the float model's own top-1
    report = hq.validate(hq.export(model, input_shape=(1, 8, 8)), hq.export(qmodel), data.test.x, runs=0)
    assert FLOAT_MODEL_LABELS in report.data and report.float.accuracy.top1 == 1.0


def test_bad_arguments_name_the_parameter(user):
    model, train, _, _ = user
    with pytest.raises(hq.HawqError, match="unknown option.*batchs"):
        hq.analyze(model, train, batchs=2)
    with pytest.raises(hq.HawqError, match="weights"):
        hq.analyze(model, train, weights="w.pt")
    with pytest.raises(hq.HawqError, match="data must be"):
        hq.analyze(model, 42)
    with pytest.raises(hq.HawqError, match="labels must be"):
        hq.analyze(model, [(torch.zeros(4, 1, 8, 8), torch.zeros(4, 2))])
    with pytest.raises(hq.HawqError, match="options must be a AnalyzeOptions"):
        hq.analyze(model, train, options=hq.FinetuneOptions())
    with pytest.raises(hq.HawqError, match=r"analyze: batches must be an int, got str '2'"):
        hq.analyze(model, train, batches="2")
    with pytest.raises(hq.HawqError, match="steps must be an int, got bool"):
        hq.finetune(model, "plan.json", train, steps=True)  # checked before the plan is read


def test_keyword_options_take_the_forms_users_write():
    from hawq_onnx.options import AllocateOptions, FinetuneOptions, with_overrides

    opts = with_overrides(None, AllocateOptions, {"w_bits": 4, "a_bits": [4, 8], "pins": {"conv1": [8, 8]}}, "allocate")
    assert opts.w_bits == (4,) and opts.a_bits == (4, 8) and opts.pins == {"conv1": (8, 8)}
    tuned = with_overrides(None, FinetuneOptions, {"lr": 1, "epochs": np.int64(2), "steps": None}, "finetune")
    assert tuned.lr == 1.0 and isinstance(tuned.epochs, float) and tuned.steps is None
    with pytest.raises(hq.HawqError, match="pins must be a mapping"):
        with_overrides(None, AllocateOptions, {"pins": "conv1=8"}, "allocate")
    with pytest.raises(hq.HawqError, match="distill must be True or False"):
        with_overrides(None, FinetuneOptions, {"distill": 1}, "finetune")


def test_quantize_in_memory_on_a_module(user):
    model, train, test, _ = user
    options = hq.QuantizeOptions(analyze=hq.AnalyzeOptions(**FAST_ANALYSIS, batch_size=64),
                                 finetune=hq.FinetuneOptions(steps=6), validate=hq.ValidateOptions(runs=0))
    result = hq.quantize(model, train, eval_data=test, budget="8x", options=options)
    assert isinstance(result, hq.QuantizeResult) and result.out_dir is None and result.files == {}
    assert result.weight_ratio >= 8.0 and result.fake_quant_agreement >= 0.995
    assert result.report is not None and result.exported.grids and result.quantized.plan.calibrated
    # the analysis settled its traces for this run's own plan: 8x with quantize's 4-bit activations
    settled = result.sensitivity.settings["settled_for"]
    assert result.sensitivity.settings["stopping"] == "decision"
    assert settled["budgets"] == ["8x"] and settled["a_bits"] == [4] and settled["w_bits"] == [2, 4, 8]
    assert all(layer.top_eigenvalue is None for layer in result.sensitivity.layers)


def _without(obj, keys):
    if isinstance(obj, dict):
        return {k: _without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_without(v, keys) for v in obj]
    return obj


def test_api_and_cli_write_the_same_artefacts(tmp_path):
    """The default job through the API and through the command line: the same files, byte for
    byte, but for sensitivity.json's wall-clock seconds and report.json's paths."""
    options = hq.QuantizeOptions(analyze=hq.AnalyzeOptions(batch_size=64), finetune=hq.FinetuneOptions(epochs=0.5),
                                 validate=hq.ValidateOptions(runs=0))
    hq.quantize(out=tmp_path / "api", options=options)
    cli = subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "quantize", "--out",
                          str(tmp_path / "cli"), "--analysis-batch-size", "64", "--runs", "0", "--epochs", "0.5"],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    a, b = tmp_path / "api", tmp_path / "cli"
    for name in ("model.float.onnx", "model.qdq.onnx", "plan.json", "quantized.pt", "quantized.plan.json",
                 "model.qdq.plan.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name, keys in (("sensitivity.json", {"seconds"}), ("report.json", {"path", "sensitivity"})):
        assert _without(json.loads((a / name).read_text()), keys) == _without(json.loads((b / name).read_text()), keys)


def test_errors_name_parameters_and_the_cli_names_flags(user):
    from hawq_onnx.cli import message
    from hawq_onnx.errors import OptionError

    exc = OptionError("{batches} and {batch_size} must be positive; see {pins}", "batches", "batch_size", "pins")
    assert str(exc) == "batches and batch_size must be positive; see pins"
    assert message(exc) == "--batches and --batch-size must be positive; see --pin"
    with pytest.raises(hq.HawqError) as caught:
        hq.analyze(user[0], user[1], batches=0)
    assert str(caught.value).startswith("batches and batch_size must be positive")
    r = subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "analyze", "--batches", "0",
                        "--out", "never.json"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --batches and --batch-size must be positive")


def test_a_loss_of_ones_own(user):
    import torch.nn.functional as F

    model, train, test, _ = user

    def smoothed(output, labels):
        return F.cross_entropy(output, labels, label_smoothing=0.2)

    own = hq.analyze(model, train, loss_fn=smoothed, **FAST_ANALYSIS)
    plain = hq.analyze(model, train, **FAST_ANALYSIS)
    assert own.settings["loss"] == "custom (test_a_loss_of_ones_own.<locals>.smoothed)"
    assert [la.trace for la in own.layers] != [la.trace for la in plain.layers]  # the loss's Hessian, not CE's
    tuned = hq.finetune(model, hq.allocate(own, "8x", a_bits=(8,)), train, eval_data=test, steps=3,
                        loss_fn=smoothed)
    assert "smoothed" in tuned.plan.calibration["loss"]


def test_labels_beyond_the_models_classes_are_refused(user):
    model, _, _, data = user
    x, y = data.test.x[:64], (np.arange(64) % 12).astype(np.int64)  # the digits CNN has 10 outputs
    with pytest.raises(hq.HawqError, match="labels go up to 11, but the model has 10 outputs"):
        hq.analyze(model, (x, y), **FAST_ANALYSIS)
    with pytest.raises(hq.HawqError, match="(labels go up to|a label is) 11, but the model has 10 outputs"):
        hq.validate(hq.export(model, input_shape=(1, 8, 8)), hq.export(model, input_shape=(1, 8, 8)),
                    DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16), runs=0)
