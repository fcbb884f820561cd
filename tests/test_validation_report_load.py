"""ValidationReport.load: report.json read back into the same report, and one-line errors for anything else.

Two reports: a hand-made one that reaches every corner of the format (three models, a
multi-input signature, top-5, slowdown reasons, the gate), and a real one from ``validate`` on
the digits pair with two timed runs (seconds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from hawq_onnx.core.model_inputs import InputSpec, Signature
from hawq_onnx.errors import HawqError
from hawq_onnx.validation.kernel_census import KernelCensus, LayerKernel
from hawq_onnx.validation.latency import LatencyResult, LatencyStats, SpeedupStats
from hawq_onnx.validation.ort_eval import Accuracy
from hawq_onnx.validation.validate import LayerReport, ModelResult, ReferenceAgreement, ValidationReport

BATCHES = (1, 64, 8)  # "64" sorts before "8" in the file: the order must not matter


def _census(modes: dict[str, str]) -> KernelCensus:
    layers = [LayerKernel(n, f"/{n}/Conv", "Conv", f"{n}.weight", "QLinearConv" if m == "integer" else "Conv", m)
              for n, m in modes.items()]
    ops = {"Conv": 1, "QLinearConv": 1, "QuantizeLinear": 2, "DequantizeLinear": 3}
    return KernelCensus("", "CPUExecutionProvider", "extended", layers, {"QLinearConv": 1}, 3, 2, ops)


def _made_up() -> ValidationReport:
    rng = np.random.default_rng(0)
    times = {k: list(rng.uniform(lo, 2 * lo, 12)) for k, lo in (("float", 2.0), ("quantized", 1.0), ("ort-int8", 1.5))}
    lat = LatencyResult("CPUExecutionProvider", 2, 1, 12, list(BATCHES), "protocol text",
                        {k: {b: LatencyStats.from_times(b, t, round_runs=3 if b > 1 else 0) for b in BATCHES}
                         for k, t in times.items()}, target_spread=0.2)
    models = []
    for label, path, acc in (("float", "/x/f.onnx", Accuracy(500, 450, 490)), ("quantized", "/x/q.onnx",
                             Accuracy(500, 440, 488)), ("ort-int8", None, Accuracy(500, 445, 489))):
        m = ModelResult(label, path, 1000 if label == "float" else 300, {"float32": 900, "int8": 100}, acc,
                        _census({"a": "integer", "b": "emulated" if label == "quantized" else "float"}))
        m.size_ratio = m.file_bytes / 1000
        if label != "float":
            m.drop_points, m.agreement, m.kernel_agreement = 2.0, 0.97, 1.0 / 3
        m.latency = lat.models[label]
        m.speedup_stats = {b: lat.speedup_stats(label, "float", b) for b in BATCHES}
        m.speedup = {b: st.median for b, st in m.speedup_stats.items()}
        models.append(m)
    models[1].slower_because = {64: ["1 of 2 layers run emulated (b)", "2 QuantizeLinear"]}
    layers = [LayerReport("a", "/a/Conv", "Conv", "int8", 8, 8, 100, 400, "QLinearConv", "integer", 0.5, 2.0, 0.01),
              LayerReport("b", "/b/Conv", "Conv", "int4", 4, None, 60, None, "Conv", "emulated")]
    shape = Signature((InputSpec("input_ids", (16,), "int64"), InputSpec("mask", (16,), "int64")), "keyword")
    return ValidationReport("glue/sst2", 500, 2, "input_ids, mask", shape, "as given", models, layers, lat,
                            max_drop=1.5, sensitivity="/x/sensitivity.json",
                            fake_quant=ReferenceAgreement(500, 0.996, 1.25))


def _check_same(loaded: ValidationReport, r: ValidationReport) -> None:
    assert loaded.to_json() == r.to_json()
    assert [m.label for m in loaded.models] == [m.label for m in r.models]
    assert loaded.input_shape == r.input_shape and loaded.layers == r.layers and loaded.fake_quant == r.fake_quant
    assert loaded.gate_passed == r.gate_passed
    for a, b in zip(loaded.models, r.models):
        assert isinstance(a.accuracy, Accuracy) and a.accuracy == b.accuracy
        assert a.census.layers == b.census.layers and all(isinstance(k, LayerKernel) for k in a.census.layers)
        assert a.census.op_counts == b.census.op_counts and a.census.integer_ops == b.census.integer_ops
        assert a.speedup_stats == b.speedup_stats and all(isinstance(s, SpeedupStats) for s in a.speedup_stats.values())
        assert a.speedup == b.speedup and a.slower_because == b.slower_because
        for batch, stats in a.latency.items():
            # The raw times stay behind; every figure made from them does not.
            assert stats.times_ms == [] and stats.to_json() == b.latency[batch].to_json()
            assert (stats.median_ms, stats.rounds) == (b.latency[batch].median_ms, b.latency[batch].rounds)
        if r.latency is not None:
            assert loaded.latency.models[a.label] is a.latency
    if r.latency is not None:
        assert isinstance(loaded.latency, LatencyResult) and set(loaded.latency.models) == set(r.latency.models)


def test_a_made_up_report_round_trips(tmp_path):
    r = _made_up()
    path = r.save(tmp_path / "report.json")
    loaded = ValidationReport.load(path)
    _check_same(loaded, r)
    assert loaded.gate_passed is False and loaded.quantized.accuracy.top5 == pytest.approx(488 / 500)
    assert loaded.model("ort-int8").path is None and loaded.quantized.census.path == "/x/q.onnx"
    # Saving the loaded report gives the same bytes, and from_json reads the dict itself.
    assert loaded.save(tmp_path / "again.json").read_bytes() == path.read_bytes()
    assert ValidationReport.from_json(r.to_json()).to_json() == r.to_json()


def test_a_report_without_latency_or_reference_round_trips(tmp_path):
    r = _made_up()
    r.latency, r.fake_quant, r.max_drop, r.sensitivity, r.input_shape = None, None, None, None, (3, 32, 32)
    for m in r.models:
        m.latency, m.speedup, m.speedup_stats, m.slower_because = {}, {}, {}, {}
    loaded = ValidationReport.load(r.save(tmp_path / "report.json"))
    _check_same(loaded, r)
    assert loaded.latency is None and loaded.input_shape == (3, 32, 32) and loaded.gate_passed is None


def test_a_real_report_round_trips(tmp_path):
    import onnxruntime as ort

    from hawq_onnx.core.bn_fold import fold_batchnorm
    from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
    from hawq_onnx.sources.data import load_data
    from hawq_onnx.sources.model import load_model
    from hawq_onnx.validation.ort_baseline import ort_int8
    from hawq_onnx.validation.ort_eval import model_io
    from hawq_onnx.validation.validate import validate

    loaded_model = load_model("digits-cnn")
    fold_batchnorm(loaded_model.module, loaded_model.spec.input_shape)
    f, q = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    save_onnx(float_onnx(loaded_model.module, loaded_model.spec.input_shape), f)
    session = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    ort_int8(f, load_data("digits", loaded_model.spec).calib, q, model_io(session, f))
    r = validate(f, q, "digits", model_ref="digits-cnn", runs=2, warmup=1, batch_sizes=(1, 4), threads=1,
                 limit=64, max_drop=50.0, reference=lambda x: session.run(None, {"input": x})[0])
    loaded = ValidationReport.load(r.save(tmp_path / "report.json"))
    _check_same(loaded, r)
    assert loaded.quantized.census.layers and loaded.quantized.census.integer_kernels > 0
    assert loaded.gate_passed is True


def test_an_old_report_without_census_layers_loads(tmp_path):
    r = _made_up()
    doc = r.to_json()
    for m in doc["models"].values():  # what report.json held before the census's layers were written
        del m["kernels"]["layers"], m["kernels"]["op_counts"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    loaded = ValidationReport.load(path)
    assert all(m.census.layers == [] and m.census.op_counts == {} for m in loaded.models)
    assert loaded.layers == r.layers and loaded.quantized.speedup_stats == r.quantized.speedup_stats
    again = loaded.to_json()
    for m in again["models"].values():
        del m["kernels"]["layers"], m["kernels"]["op_counts"], m["kernels"]["layers_by_mode"]
    for m in doc["models"].values():
        del m["kernels"]["layers_by_mode"]
    assert again == doc


def _edit(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        doc = _made_up().to_json()
        change(doc)
        path.write_text(json.dumps(doc))
    return write


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "not json": (lambda p: p.write_text("this is not JSON\n"), "not valid JSON"),
    "truncated": (lambda p: p.write_text(json.dumps(_made_up().to_json())[:500]), "not valid JSON"),
    "empty": (lambda p: p.write_text(""), "not valid JSON"),
    "a list": (lambda p: p.write_text("[1, 2]"), "not a hawq-onnx validation report"),
    "a plan": (lambda p: p.write_text(json.dumps({"format": "hawq-onnx-plan", "version": 2})),
               "its format is 'hawq-onnx-plan'"),
    "newer version": (_edit(lambda d: d.update(version=2)), "has version 2"),
    "version true": (_edit(lambda d: d.update(version=True)), "has version True"),
    "no models": (_edit(lambda d: d.pop("models")), "'models' is missing"),
    "no quantized model": (_edit(lambda d: d["models"].pop("quantized")), "no quantized model"),
    "relabelled model": (_edit(lambda d: d["models"]["float"].update(label="other")), "labelled 'other'"),
    "no samples": (_edit(lambda d: d["data"].pop("samples")), "'samples' is missing"),
    "samples a string": (_edit(lambda d: d["data"].update(samples="500")), "'samples' is not an integer"),
    "bytes a bool": (_edit(lambda d: d["models"]["float"].update(file_bytes=True)), "'file_bytes' is not an integer"),
    "zero samples": (_edit(lambda d: d["models"]["float"]["accuracy"].update(samples=0)), "at least 1"),
    "bad batch key": (_edit(lambda d: d["models"]["float"]["latency"].update({"one": {}})), "'one'"),
    "latency stats missing": (_edit(lambda d: d["models"]["quantized"]["latency"]["1"].pop("median_ms")),
                              "'median_ms' is missing"),
    "census layer not an object": (_edit(lambda d: d["models"]["quantized"]["kernels"]["layers"].append(3)),
                                   "expected an object"),
    "input shape a string": (_edit(lambda d: d["data"].update(input_shape="1,8,8")), "'input_shape' is not a list"),
    "input dimension a float": (_edit(lambda d: d["data"].update(input_shape=[1, 8.5])), "not an integer"),
    "bad signature": (_edit(lambda d: d["data"].update(input_shape={"form": "single"})), "signature"),
    "layer bits a string": (_edit(lambda d: d["layers"][0].update(bits="8")), "'bits' is not an integer"),
    "reasons not a list": (_edit(lambda d: d["models"]["quantized"]["slower_than_float_because"].update({"64": "x"})),
                           "not a list"),
    "a number beyond float": (_edit(lambda d: d["models"]["float"].update(size_ratio=10 ** 400)),
                              "'size_ratio' is not a finite number"),
    "gate a number": (_edit(lambda d: d.update(gate=1.5)), "'gate' is not an object"),
    "zero speed-up": (_edit(lambda d: d["models"]["quantized"]["speedup_spread"]["1"].update(median=0)), "positive"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_one_hawq_error(case, tmp_path):
    write, expected = BAD[case]
    path = tmp_path / "report.json"
    write(path)
    with pytest.raises(HawqError) as info:
        ValidationReport.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message, message


def test_a_missing_file_and_a_bad_dict(tmp_path):
    with pytest.raises(HawqError, match="does not exist"):
        ValidationReport.load(tmp_path / "absent.json")
    with pytest.raises(HawqError, match=r"^validation report is not a hawq-onnx validation report"):
        ValidationReport.from_json({"format": "hawq-onnx-sensitivity"})
