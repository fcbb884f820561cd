"""The validation report: speed-up statistics on injected timings, why a model is slower, and
report.md / report.html written from a hand-made result (no timing, no ONNX Runtime).

report.html is checked with Python's html.parser (no headless browser on this machine):
well-formed, every image a data: URI holding a PNG, nothing fetched from elsewhere, and the
key figures present.
"""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from hawq_onnx.io.plan import LayerPlan, Plan, RegionGrid
from hawq_onnx.validation.kernel_census import KernelCensus, LayerKernel
from hawq_onnx.validation.latency import (
    LatencyResult,
    LatencyStats,
    SpeedupStats,
    round_medians,
    round_plan,
    settled,
)
from hawq_onnx.validation.ort_eval import Accuracy
from hawq_onnx.validation.report import ReportOrigin, format_table, plot_paths, write_reports
from hawq_onnx.validation.slowdown import slowdown_reasons
from hawq_onnx.validation.validate import LayerReport, ModelResult, ReferenceAgreement, ValidationReport

# --- statistics on injected timings ------------------------------------------------------


def test_round_plan_covers_the_runs_in_enough_rounds():
    assert round_plan(50) == (5, 10)
    assert round_plan(3) == (3, 1)
    assert round_plan(1) == (1, 1)
    rounds, per = round_plan(7)
    assert rounds == 5 and rounds * per >= 7


def test_speedup_is_the_median_of_per_round_ratios_with_its_spread():
    # Float takes 2 ms a run; the model 1 ms, but 2 ms in its third round (a busy machine).
    ref = [2.0] * 20
    model = [1.0] * 8 + [2.0] * 4 + [1.0] * 8
    assert list(round_medians(model, 4)) == [1.0, 1.0, 2.0, 1.0, 1.0]
    st = SpeedupStats.from_times(ref, model, round_runs=4)
    assert st.rounds == 5 and st.median == 2.0 and st.min == 1.0 and st.max == 2.0
    assert (st.q25, st.q75) == (2.0, 2.0) and st.stable is True   # one bad round of five is outside the middle half
    assert "2.00x" in st.describe() and "unstable" not in st.describe()


def test_a_speedup_that_does_not_settle_is_called_unstable():
    st = SpeedupStats.from_ratios([0.97, 1.04, 1.48, 1.1, 0.9], target_spread=0.10)
    assert st.median == pytest.approx(1.04)
    assert st.q25 == pytest.approx(0.97) and st.q75 == pytest.approx(1.1)
    assert st.relative_spread == pytest.approx(0.13 / 1.04)
    assert st.stable is False and "unstable" in st.describe()
    assert SpeedupStats.from_ratios([1.2, 1.3]).stable is None   # too few rounds to judge
    json.dumps(st.to_json(), allow_nan=False)


def test_settled_asks_every_model():
    # b varies within each round but every round's median is the same: settled.
    steady = {"float": [2.0] * 6, "a": [1.0] * 6, "b": [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]}
    assert settled(steady, "float", 2, 0.1)
    # a is steady, b's rounds disagree: not settled.
    noisy = {"float": [2.0] * 6, "a": [1.0] * 6, "b": [1.0, 1.0, 2.0, 2.0, 0.5, 0.5]}
    assert not settled(noisy, "float", 2, 0.1)


def test_latency_result_speedup_against_any_reference():
    times = {"float": [2.0] * 10, "quantized": [1.0] * 10, "ort-int8": [0.5] * 10}
    lat = LatencyResult("CPUExecutionProvider", 2, 1, 10, [1], "p",
                        {k: {1: LatencyStats.from_times(1, v, round_runs=2)} for k, v in times.items()})
    assert lat.speedup("quantized", "float", 1) == 2.0
    assert lat.speedup("quantized", "ort-int8", 1) == 0.5
    assert lat.models["float"][1].rounds == 5
    assert lat.to_json()["models"]["float"]["1"]["round_runs"] == 2


# --- a hand-made validation result ----------------------------------------------------------

def _census(modes: dict[str, str], ops: dict[str, int], q: int = 0, dq: int = 0) -> KernelCensus:
    layers = [LayerKernel(n, n, "Conv", f"{n}.weight", "QLinearConv" if m == "integer" else "Conv", m)
              for n, m in modes.items()]
    integer = {k: v for k, v in ops.items() if k.startswith("Q") and k != "QuantizeLinear"}
    return KernelCensus("x.onnx", "CPUExecutionProvider", "extended", layers, integer, dq, q, ops)


class _Row:
    def __init__(self, layer: str, storage: str, macs: int) -> None:
        self.layer, self.storage, self.macs = layer, storage, macs


class _Inspection:
    def __init__(self, rows: list[_Row]) -> None:
        self.layers = rows


def test_slowdown_reasons_read_the_graph():
    float_census = _census({"a": "float", "b": "float"}, {"Conv": 2, "Relu": 2})
    quant = _census({"a": "integer", "b": "emulated"}, {"QLinearConv": 1, "Conv": 1, "Clip": 3,
                                                        "QuantizeLinear": 1, "DequantizeLinear": 2}, q=1, dq=2)
    reasons = slowdown_reasons(quant, float_census, _Inspection([_Row("a", "uint8", 1000), _Row("b", "int4", 1000)]),
                               float_median_ms=0.05, batch_size=1)
    text = "\n".join(reasons)
    assert reasons[0].startswith("1 of 2 layers run emulated")
    assert "1 QuantizeLinear and 2 DequantizeLinear" in text and "3 extra Clip" in text
    assert "uint8" in text and "(a)" in text and "0.050 ms" in text
    clean = _census({"a": "integer"}, {"QLinearConv": 1})
    assert "nothing in the optimized graph" in slowdown_reasons(clean, float_census, _Inspection([]), 5.0, 64)[0]


def _png(path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(path, format="png")
    return path


def _result() -> ValidationReport:
    times = {"float": [2.0] * 10, "quantized": [2.5, 2.5, 1.5, 1.5, 3.0, 3.0, 2.0, 2.0, 2.6, 2.6]}
    lat = LatencyResult("CPUExecutionProvider", 2, 1, 10, [1], "p",
                        {k: {1: LatencyStats.from_times(1, v, round_runs=2)} for k, v in times.items()})
    fl = ModelResult("float", "/x/model.float.onnx", 80_000, {"float32": 76_000}, Accuracy(359, 355, None),
                     _census({"stem": "float", "fc": "float"}, {"Conv": 1, "Gemm": 1}))
    qu = ModelResult("quantized", "/x/model.qdq.onnx", 16_000, {"int4": 3_000, "uint8": 500},
                     Accuracy(359, 354, None), _census({"stem": "integer", "fc": "integer"},
                                                       {"QLinearConv": 1, "QGemm": 1, "QuantizeLinear": 1}, q=1),
                     drop_points=100 / 359, agreement=0.99, size_ratio=0.2)
    fl.size_ratio = 1.0
    for m in (fl, qu):
        m.latency = lat.models[m.label]
        m.speedup_stats = {1: lat.speedup_stats(m.label, "float", 1)}
        m.speedup = {1: m.speedup_stats[1].median}
    qu.slower_because = {1: ["2 layer(s) (stem, fc) store 8-bit weights as uint8"]}
    layers = [LayerReport("stem", "stem", "Conv", "uint8", 8, 8, 224, 576, "QLinearConv", "integer", 0.8, 2.1, 0.0148),
              LayerReport("fc", "fc", "Gemm", "int4", 4, 8, 370, 1280, "QGemm", "integer", 0.1, 0.4, 0.0013)]
    return ValidationReport("digits", 359, 10, "input", (1, 8, 8), "as given", [fl, qu], layers, lat,
                            fake_quant=ReferenceAgreement(359, 1.0, 0.0))


def _origin(tmp_path: Path) -> ReportOrigin:
    layers = [LayerPlan("stem", "conv2d", 144, 16, 9216, 8, 8), LayerPlan("fc", "linear", 320, 10, 320, 4, 8)]
    pareto = [{"bits": {}, "omega": 0.4, "ratio": 14.9, "weight_bytes": 5072.0, "chosen": False},
              {"bits": {}, "omega": 0.0098, "ratio": 8.9, "weight_bytes": 8528.0, "chosen": True},
              {"bits": {}, "omega": 0.002, "ratio": 4.0, "weight_bytes": 18896.0, "chosen": False}]
    cal = {"data": "digits", "order": "hawq", "steps": 55, "batch_size": 128, "optimizer": "adam", "lr": 1e-4,
           "distill": True, "distill_weight": 0.5, "temperature": 2.0, "loss": "cross_entropy", "seed": 0,
           "samples": 512, "quant_top1": 356 / 359, "float_top1": 355 / 359}
    plan = Plan("digits-cnn", "fbcd", layers, budget={"text": "8x", "bytes": 9448},
                totals={"ratio": 8.86}, allocation={"candidates": {"w_bits": [2, 4, 8], "a_bits": [4]},
                                                    "pinned": {"stem": [8, 8]}, "metric": "trace"},
                pareto=pareto, calibration=cal,
                region_grids=[RegionGrid("relu", "relu", 8, 0.02, 0)])
    return ReportOrigin(plan=plan, epochs=5.0, target="ort-cpu", finetuned_samples=359,
                        sensitivity_png=_png(tmp_path / "sensitivity.png"), pareto_png=_png(tmp_path / "pareto.png"))


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        for key in ("src", "href", "action", "data"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_reports_md_and_self_contained_html(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    origin = _origin(out)
    written = write_reports(_result(), out / "report.md", origin)
    assert [p.name for p in written] == ["report.md", "report.html", "report.accuracy_vs_size.png", "report.layers.png"]
    assert tuple(plot_paths(out / "report.md"))[2] == out / "report.html"
    md = (out / "report.md").read_text()
    for needle in ("![per-layer Hessian sensitivity](sensitivity.png)", "![Pareto frontier](pareto.png)",
                   "![accuracy against size](report.accuracy_vs_size.png)", "## How this model was made",
                   "budget 8x", "55 steps of 128 samples (5 epochs)", "seed 0",
                   "fine-tuned (PyTorch, plan grids only)", "exported (ONNX Runtime)",
                   "its PyTorch reference (plan + export grids)", "The export cost **0.56 points**",
                   "**agrees with float**", "positive means this model gets more samples wrong",
                   "slower than float because", "unstable"):
        assert needle in md, needle
    for jargon in ("normalisation: as given", "steps of an 8-bit output grid"):
        assert jargon not in md

    doc = (out / "report.html").read_text()
    checker = _Checker()
    checker.feed(doc)
    checker.close()
    assert doc.startswith("<!DOCTYPE html>")
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert "script" not in checker.tags and "link" not in checker.tags and "style" in checker.tags
    assert len(checker.images) == 4
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(io.BytesIO(png), format="png").ndim == 3
    assert all(u.startswith("data:") for u in checker.urls)
    assert "http://" not in doc and "https://" not in doc and "url(" not in doc
    text = " ".join(checker.text)
    for figure in ("98.89 %", "98.61 %", "99.16 %", "0.56 points", "budget 8x", "5.00x smaller", "unstable"):
        assert figure in text, figure


def test_terminal_table_flags_unstable_and_slow():
    text = format_table(_result())
    assert "unstable" in text and "slower than float at batch 1" in text
    assert "exported (ONNX Runtime)" in text


def test_report_json_keeps_its_fields_and_adds_the_spread():
    doc = json.loads(json.dumps(_result().to_json(), allow_nan=False))
    q = doc["models"]["quantized"]
    assert set(q["latency"]["1"]) >= {"runs", "median_ms", "p90_ms", "mean_ms", "min_ms"}
    assert q["speedup"]["1"] == pytest.approx(q["speedup_spread"]["1"]["median"])
    assert q["speedup_spread"]["1"]["stable"] is False
    assert q["slower_than_float_because"]["1"]
    assert np.isfinite(q["speedup_spread"]["1"]["relative_spread"])


def test_a_bare_validation_reads_the_plan_its_export_wrote_beside_the_file(tmp_path):
    from hawq_onnx.io.plan import save_plan
    from hawq_onnx.validation.report_origin import origin_beside

    quantized = tmp_path / "model.qdq.onnx"
    assert origin_beside(quantized) is None  # nothing beside it, no analysis: no section
    save_plan(_origin(tmp_path).plan, tmp_path / "model.qdq.plan.json")
    origin = origin_beside(quantized)
    assert origin is not None and origin.plan.budget["text"] == "8x" and origin.finetuned_top1 == 356 / 359
    assert origin.export_cost_points(0.99, 359) is None  # the fine-tuned figure's samples are unknown here
    (tmp_path / "model.qdq.plan.json").write_text("{not json")
    assert origin_beside(quantized) is None  # a plan that does not read is left out, not an error
