"""validate: accuracy, sizes and integer kernels agree with independent ONNX Runtime measurements.

The pair: the BN-folded digits CNN exported to float ONNX, and ONNX Runtime's own
quantize_static of it (QDQ, u8 activations, s8 per-channel weights). A third model puts two of
its weights in INT4 behind DequantizeLinear, which ONNX Runtime cannot fuse (emulated layers,
and an accuracy drop for the gate test).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from hawq_onnx.models.registry import ZOO
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.cli import cli
from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.errors import HawqError
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity, save_sensitivity
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model
from hawq_onnx.validation.data_spec import MEAN_KEY, STD_KEY
from hawq_onnx.validation.kernel_census import is_integer_op, kernel_census
from hawq_onnx.validation.latency import measure_latency
from hawq_onnx.validation.ort_baseline import ort_int8
from hawq_onnx.validation.ort_eval import model_io, open_session
from hawq_onnx.validation.validate import ValidationReport, validate

LAYERS = ("stem", "block_conv1", "block_conv2", "down", "conv", "fc")
INT4_LAYERS = ("block_conv1", "down")


def _int4_weights(q: onnx.ModelProto, layers: tuple[str, ...]) -> onnx.ModelProto:
    """Requantize some int8 weights to INT4 (scale x16) feeding DequantizeLinear directly: ONNX
    Runtime 1.32 does not fuse that into QLinearConv (FACTS.md), so these layers run emulated."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    inits = {t.name: t for t in m.graph.initializer}
    for layer in layers:
        w, s, z = (inits[f"{layer}.weight_{k}"] for k in ("quantized", "scale", "zero_point"))
        q4 = np.clip(np.rint(numpy_helper.to_array(w) / 16.0), -7, 7).astype(np.int8)
        w.CopyFrom(helper.make_tensor(w.name, TensorProto.INT4, q4.shape, q4.flatten().tolist()))
        s.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(s) * 16).astype(np.float32), s.name))
        z.CopyFrom(helper.make_tensor(z.name, TensorProto.INT4, z.dims, numpy_helper.to_array(z).flatten().tolist()))
        # Keep bias scale = input scale x weight scale, or ONNX Runtime would not fuse even int8.
        b, bs = inits[f"{layer}.bias_quantized"], inits[f"{layer}.bias_quantized_scale"]
        b.CopyFrom(numpy_helper.from_array(np.rint(numpy_helper.to_array(b) / 16.0).astype(np.int32), b.name))
        bs.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(bs) * 16).astype(np.float32), bs.name))
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("validate")
    loaded = load_model("digits-cnn")
    fold_batchnorm(loaded.module, loaded.spec.input_shape)
    paths = {"float": d / "float.onnx", "int8": d / "ort_int8.onnx", "int4": d / "int4.onnx"}
    save_onnx(float_onnx(loaded.module, loaded.spec.input_shape), paths["float"])
    dataset = load_data("digits", loaded.spec)
    io = model_io(open_session(paths["float"], 1), paths["float"])  # ort_int8 feeds by the model's own inputs
    ort_int8(paths["float"], dataset.calib, paths["int8"], io)
    save_onnx(_int4_weights(onnx.load(str(paths["int8"])), INT4_LAYERS), paths["int4"])
    return paths


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", ZOO["digits-cnn"])


def _ort_top1(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[int, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)
    return int((pred == y).sum()), pred


def _integer_ops_in_optimized(path: Path, level: ort.GraphOptimizationLevel, tmp: Path) -> int:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(tmp)
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp)).graph.node]
    return sum(1 for op in ops if op.startswith("QLinear") or op in ("QGemm", "ConvInteger", "MatMulInteger"))


def test_accuracy_and_sizes_match_independent_ort(pair, digits):
    r = validate(pair["float"], pair["int8"], "digits", model_ref="digits-cnn", runs=0, eval_batch_size=50)
    x, y = digits.test.x, digits.test.y
    correct_f, pred_f = _ort_top1(pair["float"], x, y)
    correct_q, pred_q = _ort_top1(pair["int8"], x, y)
    assert r.samples == len(y) == 359
    assert r.float.accuracy.correct_top1 == correct_f
    assert r.quantized.accuracy.correct_top1 == correct_q
    assert r.float.accuracy.correct_top5 is None  # 10 classes: no top-5
    assert r.quantized.drop_points == pytest.approx(100.0 * (correct_f - correct_q) / len(y))
    assert r.quantized.agreement == pytest.approx(float((pred_f == pred_q).mean()))
    assert r.float.file_bytes == os.path.getsize(pair["float"])
    assert r.quantized.file_bytes == os.path.getsize(pair["int8"])
    assert r.quantized.size_ratio == pytest.approx(os.path.getsize(pair["int8"]) / os.path.getsize(pair["float"]))
    assert r.quantized.bytes_by_type["int8"] > 0 and "int8" not in r.float.bytes_by_type
    assert r.latency is None and r.quantized.latency == {}


def test_agreement_with_a_reference_model(pair, digits):
    x = digits.test.x[:60]
    float_scores = ort.InferenceSession(str(pair["float"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    # The float model as its own "reference": the file's scores are exactly the reference's.
    r = validate(pair["float"], pair["float"], digits, runs=0, limit=60, reference=lambda batch: float_scores)
    assert r.fake_quant is not None and r.fake_quant.samples == 60
    assert r.fake_quant.top1 == 1.0 and r.fake_quant.p99_steps < 1e-3
    assert r.to_json()["fake_quant_agreement"]["top1"] == 1.0
    with pytest.raises(HawqError, match="PyTorch reference gives scores of shape"):
        validate(pair["float"], pair["float"], digits, runs=0, limit=60, reference=lambda batch: float_scores[:, :3])


def _unoptimized_pred(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)


def test_integer_kernels_against_the_file_run_unoptimized(pair, digits, caplog):
    r = validate(pair["float"], pair["int8"], digits, runs=0)
    x = digits.test.x
    _, deployed = _ort_top1(pair["int8"], x, digits.test.y)
    expected = float((deployed == _unoptimized_pred(pair["int8"], x)).mean())
    assert r.float.kernel_agreement is None
    assert r.quantized.kernel_agreement == pytest.approx(expected)
    assert r.to_json()["models"]["quantized"]["kernels"]["agreement_with_unoptimized"] == pytest.approx(expected)
    # A session that computes something else than the file says is flagged (as U8S8 saturation is
    # on CPUs without VNNI): here the "deployed" scores are another sample's.
    from hawq_onnx.validation.ort_eval import model_io, open_session
    from hawq_onnx.validation.validate import _kernel_agreement

    io = model_io(open_session(pair["int8"], 1), pair["int8"])
    scores = ort.InferenceSession(str(pair["int8"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with caplog.at_level("WARNING"):
        same = _kernel_agreement(pair["int8"], io, lambda: iter([x]), len(x), np.roll(scores, 1, axis=0), 1,
                                 ["CPUExecutionProvider"], False, "quantized")
    assert same < 0.5 and "agrees with the same file run unoptimized on only" in caplog.text


def test_limit_and_top5(pair, digits):
    # 10 classes: top-5 is not reported; --limit evaluates the first N test samples only.
    r = validate(pair["float"], pair["int8"], digits, runs=0, limit=40)
    correct, _ = _ort_top1(pair["float"], digits.test.x[:40], digits.test.y[:40])
    assert r.samples == 40 and r.float.accuracy.correct_top1 == correct


def test_census_agrees_with_optimized_graph(pair, tmp_path):
    for key in ("float", "int8", "int4"):
        census = kernel_census(pair[key])
        for level, name in ((ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "ext"),
                            (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "all")):
            assert census.integer_kernels == _integer_ops_in_optimized(pair[key], level, tmp_path / f"{key}.{name}.onnx")
        assert [layer.layer for layer in census.layers] == list(LAYERS)
    assert {layer.mode for layer in kernel_census(pair["float"]).layers} == {"float"}
    int8 = kernel_census(pair["int8"])
    assert {layer.mode for layer in int8.layers} == {"integer"}
    assert int8.integer_ops == {"QGemm": 1, "QLinearAdd": 1, "QLinearConv": 5}
    int4 = kernel_census(pair["int4"])
    modes = {layer.layer: layer.mode for layer in int4.layers}
    assert {n for n, m in modes.items() if m == "emulated"} == set(INT4_LAYERS)
    assert all(is_integer_op(layer.kernel) for layer in int4.layers if layer.layer not in INT4_LAYERS)


def test_latency_worker_failure_is_one_hawq_error(tmp_path):
    from hawq_onnx.errors import HawqError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(HawqError, match="latency measurement failed: ONNX Runtime cannot load"):
        measure_latency({"a": bad}, x, runs=1, warmup=0)


def test_latency_structure(pair):
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    r = measure_latency({"float": pair["float"], "quantized": pair["int8"]}, x, batch_sizes=(1, 8),
                        threads=1, runs=3, warmup=1)
    assert set(r.models) == {"float", "quantized"}
    for per in r.models.values():
        assert set(per) == {1, 8}
        for s in per.values():
            # 3 runs are at least 3 rounds of 1; more rounds follow while the speed-ups disagree
            assert s.runs >= 3 and len(s.times_ms) == s.runs == s.rounds and 0 < s.min_ms <= s.median_ms <= s.p90_ms
    assert r.speedup("float", "float", 8) == 1.0
    assert r.speedup_stats("quantized", "float", 8).rounds == r.models["float"][8].rounds
    assert json.loads(json.dumps(r.to_json()))["models"]["quantized"]["8"]["runs"] >= 3


def _sensitivity(path: Path, params: dict[str, int] | None = None) -> Path:
    """A report on the digits CNN's layers (their real sizes, made-up curvatures)."""
    if params is None:
        module = load_model("digits-cnn").module
        params = {n: module.get_submodule(n).weight.numel() for n in LAYERS}
    layers = [LayerSensitivity(name=n, kind="conv2d", params=params[n], out_channels=16, macs=1000,
                               top_eigenvalue=1.0 + i, eigen_iterations=5, eigen_converged=True, trace=10.0 * (i + 1),
                               trace_std_error=0.1, trace_probes=8, trace_converged=True, seconds=0.0)
              for i, n in enumerate(LAYERS)]
    save_sensitivity(Sensitivity("digits-cnn", "x", "digits", {}, layers), path)
    return path


def _is_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_cli_end_to_end_with_baseline_reports(pair, tmp_path):
    out_json, report = tmp_path / "r.json", tmp_path / "rep" / "report.md"
    sens = _sensitivity(tmp_path / "sens.json")
    res = CliRunner().invoke(cli, [
        "validate", "--float-onnx", str(pair["float"]), "--quantized-onnx", str(pair["int4"]), "--data", "digits",
        "--model", "digits-cnn", "--baseline", "ort-int8", "--runs", "2", "--warmup", "1", "--batch-sizes", "1,4",
        "--threads", "1", "--sensitivity", str(sens), "--json", str(out_json), "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "ort-int8" in res.stdout and "QLinearConv" in res.stdout
    doc = json.loads(out_json.read_text())
    assert set(doc["models"]) == {"float", "quantized", "ort-int8"}
    assert ValidationReport.load(out_json).to_json() == doc  # what the CLI wrote reads back whole
    assert doc["models"]["ort-int8"]["kernels"]["integer_kernels"] == 7
    assert doc["models"]["quantized"]["kernels"]["layers_by_mode"]["emulated"] == 2
    assert doc["models"]["quantized"]["latency"]["4"]["runs"] >= 2
    assert set(doc["models"]["quantized"]["speedup"]) == {"1", "4"}
    assert set(doc["models"]["quantized"]["speedup_spread"]) == {"1", "4"}
    layers = {row["layer"]: row for row in doc["layers"]}
    assert layers["down"]["bits"] == 4 and layers["down"]["storage"] == "int4" and layers["down"]["mode"] == "emulated"
    assert layers["conv"]["trace"] == 50.0 and layers["stem"]["top_eigenvalue"] == 1.0
    # The baseline is ONNX Runtime's quantization of the same float model: the int8 pair's numbers.
    same = validate(pair["float"], pair["int8"], "digits", model_ref="digits-cnn", runs=0)
    assert doc["models"]["ort-int8"]["accuracy"]["correct_top1"] == same.quantized.accuracy.correct_top1
    assert report.is_file() and "![accuracy against size]" in report.read_text()
    assert "data:image/png;base64," in report.with_suffix(".html").read_text()
    for png in ("report.accuracy_vs_size.png", "report.layers.png"):
        _is_png(report.parent / png)


def test_json_to_stdout(pair):
    res = CliRunner().invoke(cli, ["validate", "--float-onnx", str(pair["float"]), "--quantized-onnx", str(pair["int8"]),
                                   "--data", "digits", "--model", "digits-cnn", "--runs", "0", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["format"] == "hawq-onnx-validation" and doc["latency"] is None
    assert "top-1" in res.stderr  # the table moves to stderr


def test_gate_exits_1_after_writing_reports(pair, tmp_path):
    out_json = tmp_path / "gate.json"
    args = ["validate", "--float-onnx", str(pair["float"]), "--quantized-onnx", str(pair["int4"]), "--data", "digits",
            "--model", "digits-cnn", "--runs", "0", "--json", str(out_json)]
    doc_drop = validate(pair["float"], pair["int4"], "digits", model_ref="digits-cnn", runs=0).quantized.drop_points
    assert doc_drop > 0.1
    res = CliRunner().invoke(cli, args + ["--max-drop", "0.1"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: top-1 drop")
    assert json.loads(out_json.read_text())["gate"] == {"max_drop": 0.1, "passed": False}
    assert CliRunner().invoke(cli, args + ["--max-drop", str(doc_drop + 0.01)]).exit_code == 0


def test_spec_from_onnx_metadata(pair, tmp_path):
    m = onnx.load(str(pair["float"]))
    onnx.helper.set_model_props(m, {MEAN_KEY: "[0.5]", STD_KEY: "0.5"})
    tagged = tmp_path / "tagged.onnx"
    onnx.save(m, str(tagged))
    from_meta = validate(tagged, pair["int8"], "digits", runs=0)
    from_model = validate(pair["float"], pair["int8"], "digits", model_ref="digits-cnn", runs=0)
    assert from_meta.normalisation.startswith("ONNX metadata")
    assert from_meta.float.accuracy.correct_top1 == from_model.float.accuracy.correct_top1


def _run_error(args: list[str]) -> str:
    res = CliRunner().invoke(cli, ["validate", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(pair, tmp_path):
    f, q = str(pair["float"]), str(pair["int8"])
    assert "does not exist" in _run_error(["--float-onnx", str(tmp_path / "nope.onnx"), "--quantized-onnx", q, "--data", "digits"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 not a protobuf at all" * 10)
    assert "junk.onnx" in _run_error(["--float-onnx", f, "--quantized-onnx", str(junk), "--data", "digits"])
    assert "not available" in _run_error(["--float-onnx", f, "--quantized-onnx", q, "--data", "digits", "--provider", "nope"])
    assert "does not exist" in _run_error(["--float-onnx", f, "--quantized-onnx", q, "--data", "digits",
                                           "--sensitivity", str(tmp_path / "none.json")])

    # A symbolic input shape needs --input-shape.
    dyn = onnx.load(f)
    for d in dyn.graph.input[0].type.tensor_type.shape.dim[1:]:
        d.ClearField("dim_value")
        d.dim_param = "s"
    onnx.save(dyn, str(tmp_path / "dyn.onnx"))
    assert "--input-shape" in _run_error(["--float-onnx", str(tmp_path / "dyn.onnx"), "--quantized-onnx", q, "--data", "digits"])

    # Data that does not fit the model input.
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 1, 10, 10), np.float32), y=np.arange(20) % 10)
    assert "do not fit" in _run_error(["--float-onnx", f, "--quantized-onnx", q, "--data", f"npz:{tmp_path / 'd.npz'}"])

    # A quantized model with another number of classes.
    five = onnx.load(f)
    inits = {t.name: t for t in five.graph.initializer}
    for name in ("fc.weight", "fc.bias"):
        inits[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[name])[:5], name))
    five.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    onnx.save(five, str(tmp_path / "five.onnx"))
    assert "not the same model" in _run_error(["--float-onnx", f, "--quantized-onnx", str(tmp_path / "five.onnx"),
                                               "--data", "digits", "--model", "digits-cnn", "--runs", "0"])


def test_help_lists_the_options():
    res = CliRunner().invoke(cli, ["validate", "--help"])
    assert res.exit_code == 0
    for opt in ("--float-onnx", "--quantized-onnx", "--baseline", "--max-drop", "--sensitivity", "--report", "--json", "--provider"):
        assert opt in res.output


def test_cli_refuses_a_sensitivity_of_another_model(pair, tmp_path):
    sens = _sensitivity(tmp_path / "other.json", params={n: 7 for n in LAYERS})
    res = CliRunner().invoke(cli, ["validate", "--float-onnx", str(pair["float"]), "--quantized-onnx", str(pair["int4"]), "--data",
                                   "digits", "--model", "digits-cnn", "--runs", "0", "--sensitivity", str(sens)])
    assert res.exit_code == 2 and "--sensitivity was made for another model" in res.output


def test_old_flag_spellings_and_the_model_own_data_by_default(pair):
    res = CliRunner().invoke(cli, ["validate", "--float", str(pair["float"]), "--quant", str(pair["int8"]),
                                   "--runs", "0", "--limit", "40"])
    assert res.exit_code == 0, res.output
    assert "warning: --float is deprecated; use --float-onnx" in res.stderr
    assert "warning: --quant is deprecated; use --quantized-onnx" in res.stderr
    default = validate(pair["float"], pair["int8"], runs=0, limit=40)
    given = validate(pair["float"], pair["int8"], "digits", model_ref="digits-cnn", runs=0, limit=40)
    assert default.quantized.accuracy.correct_top1 == given.quantized.accuracy.correct_top1
    assert default.normalisation == given.normalisation


def test_openvino_runtime_measures_the_same_files(pair, digits, tmp_path):
    """--runtime openvino: accuracy, kernels and latency under OpenVINO's CPU plugin, read back whole."""
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install hawq-onnx[openvino])")
    out_json, report = tmp_path / "r.json", tmp_path / "report.md"
    res = CliRunner().invoke(cli, [
        "validate", "--float-onnx", str(pair["float"]), "--quantized-onnx", str(pair["int8"]), "--data", "digits",
        "--model", "digits-cnn", "--runtime", "openvino", "--runs", "2", "--warmup", "1", "--batch-sizes", "1,4",
        "--threads", "1", "--json", str(out_json), "--report", str(report)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out_json.read_text())
    assert doc["runtime"].startswith("OpenVINO") and doc["latency"]["provider"].startswith("OpenVINO")
    assert ValidationReport.load(out_json).to_json() == doc
    quant = doc["models"]["quantized"]["kernels"]
    assert quant["layers_by_mode"]["integer"] == 6 and quant["optimization_level"] == "openvino"
    assert doc["models"]["float"]["kernels"]["layers_by_mode"]["float"] == 6
    assert {row["kernel"] for row in doc["layers"]} == {"Convolution (u8)", "FullyConnected (u8)"}
    # The same file under ONNX Runtime: same samples, nearly the same answers (OpenVINO rounds elsewhere).
    ort_report = validate(pair["float"], pair["int8"], "digits", model_ref="digits-cnn", runs=0)
    assert abs(doc["models"]["quantized"]["accuracy"]["correct_top1"]
               - ort_report.quantized.accuracy.correct_top1) <= 0.02 * len(digits.test)
    assert doc["models"]["float"]["accuracy"]["correct_top1"] == ort_report.float.accuracy.correct_top1
    assert "under OpenVINO" in report.read_text()


def test_openvino_runtime_refuses_what_it_cannot_do(pair, tmp_path):
    bad = _run_error(["--float-onnx", str(pair["float"]), "--quantized-onnx", str(pair["int8"]),
                      "--data", "digits", "--runtime", "openvino", "--provider", "cuda"])
    assert "--provider" in bad and "openvino" in bad
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install hawq-onnx[openvino])")
    int2 = tmp_path / "int2.onnx"
    save_onnx(_int4_weights(onnx.load(str(pair["int8"])), INT4_LAYERS), int2)
    model = onnx.load(str(int2))
    for init in model.graph.initializer:  # the INT4 weights and their zero points become INT2
        if init.data_type == TensorProto.INT4:
            values = numpy_helper.to_array(init).astype(np.int8).clip(-2, 1)
            init.CopyFrom(helper.make_tensor(init.name, TensorProto.INT2, values.shape, values.flatten().tolist()))
    onnx.save(model, str(int2))
    with pytest.raises(HawqError, match="INT2.*target 'openvino'"):
        validate(pair["float"], int2, "digits", model_ref="digits-cnn", runs=0, runtime="openvino")


def test_census_finds_float_layers_at_level_all_by_their_bias(pair):
    """Level "all" re-lays float weights for NCHWc under new names: the bias still names the layer."""
    for path in (pair["float"], pair["int8"]):
        extended, every = kernel_census(path), kernel_census(path, level="all")
        assert [layer.layer for layer in every.layers] == [layer.layer for layer in extended.layers]
        assert every.count("missing") == 0
        assert [layer.mode for layer in every.layers] == [layer.mode for layer in extended.layers]
