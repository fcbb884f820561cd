"""`hawq-onnx package` and bundle reading, on the digits CNN (float and ORT-quantized QDQ)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import hawq_onnx.deploy.package as package
from hawq_onnx.cli import cli
from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.deploy.bundle import format_manifest, read_bundle
from hawq_onnx.deploy.manifest import validation_figures
from hawq_onnx.deploy.ort_conversion import convert_to_ort, ort_model_operators, read_operator_config
from hawq_onnx.errors import HawqError
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model

BUNDLE_FILES = {"model.ort", "model.required_operators.config", "manifest.json"}  # what a minimal build needs


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """digits-cnn, BN folded: the float export and ORT's QDQ (U8 activations, S8 per-channel weights)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    root = tmp_path_factory.mktemp("models")
    loaded = load_model("digits-cnn")
    fold_batchnorm(loaded.module, loaded.spec.input_shape)
    save_onnx(float_onnx(loaded.module, loaded.spec.input_shape), root / "float.onnx")
    calib = load_data("digits", loaded.spec).calib.x[:32]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i:i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(root / "float.onnx"), str(root / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return {"float": root / "float.onnx", "qdq": root / "qdq.onnx"}


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    before = hashlib.sha256(models["qdq"].read_bytes()).hexdigest()
    out = {name: package.build_bundle(path, root / name, model_ref="digits-cnn").path for name, path in models.items()}
    out["qdq-full"] = package.build_bundle(models["qdq"], root / "qdq-full", model_ref="digits-cnn", full=True).path
    assert hashlib.sha256(models["qdq"].read_bytes()).hexdigest() == before  # input untouched
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _conversion_session(model: Path, optimized_out: Path | None = None):
    """The .onnx with the graph optimizations the converter applies (generic target)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.qdqisint8allowed", "0")
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["NchwcTransformer"])


# --- contents -----------------------------------------------------------------------------------

def test_bundle_files_manifest_and_checksums(bundles, models):
    path = bundles["qdq"]
    assert {p.name for p in path.iterdir()} == BUNDLE_FILES
    full = bundles["qdq-full"]
    assert {p.name for p in full.iterdir()} == BUNDLE_FILES | {"model.onnx"}
    assert (full / "model.onnx").read_bytes() == models["qdq"].read_bytes()
    assert read_bundle(full).manifest["contents"] == "full"
    bundle = read_bundle(path)
    m = bundle.manifest
    assert set(m["files"]) == BUNDLE_FILES - {"manifest.json"} and m["contents"] == "minimal"
    assert m["source"] == {"name": "qdq.onnx", "bytes": models["qdq"].stat().st_size,
                           "sha256": hashlib.sha256(models["qdq"].read_bytes()).hexdigest()}
    for name, entry in m["files"].items():
        assert entry["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
        assert entry["bytes"] == (path / name).stat().st_size
    float_type = m["model"]["inputs"][0]["type"]
    assert float_type in ("float", "float32")  # onnx_inspect's name for TensorProto.FLOAT
    assert m["model"]["inputs"] == [{"name": "input", "type": float_type, "shape": ["batch", 1, 8, 8]}]
    assert m["model"]["outputs"] == [{"name": "logits", "type": float_type, "shape": ["batch", 10]}]
    assert m["model"]["opset"] == {"ai.onnx": 21} and m["model"]["ir_version"] == 10
    assert m["preprocessing"]["mean"] == [0.5] and m["preprocessing"]["std"] == [0.5]
    assert m["class_names"] == [str(i) for i in range(10)]
    assert [(r["op_type"], r["storage"], r["w_bits"], r["a_bits"]) for r in m["layers"]] == \
        [("Conv", "int8", 8, 8)] * 5 + [("Gemm", "int8", 8, 8)]
    assert set(m["versions"]) == {"hawq-onnx", "onnx", "onnxruntime"}
    assert m["versions"]["onnxruntime"] == ort.__version__
    assert m["conversion"]["optimization_style"] == "Fixed" and m["conversion"]["type_reduction"] is False
    assert m["check"]["bitwise_equal"] is True and m["validation"] is None
    float_layers = read_bundle(bundles["float"]).manifest["layers"]
    assert {(r["storage"], r["w_bits"], r["a_bits"]) for r in float_layers} == {(float_type, 32, None)}
    text = format_manifest(m)
    assert "QLinearConv" in text and "fc" in text and "16x16x3x3" in text


@pytest.mark.parametrize("kind", ["float", "qdq"])
def test_ort_loads_and_matches_onnx_bitwise(bundles, models, kind):
    path = bundles[kind]
    ort_session = ort.InferenceSession(str(path / "model.ort"), providers=["CPUExecutionProvider"])
    reference = _conversion_session(models[kind])
    x = np.random.default_rng(7).standard_normal((5, 1, 8, 8)).astype(np.float32)  # not the built-in check's input
    got = ort_session.run(None, {"input": x})[0]
    assert got.tobytes() == reference.run(None, {"input": x})[0].tobytes()
    # and it is still the model: the default full-build session agrees to float rounding
    default = ort.InferenceSession(str(models[kind]), providers=["CPUExecutionProvider"])
    assert np.abs(got - default.run(None, {"input": x})[0]).max() < 1e-4


def _optimized_graph_operators(onnx_path: Path, tmp_path: Path) -> set[tuple[str, int, str]]:
    """The operators of the graph the converter serialised, read from ORT's optimized ONNX."""
    optimized = tmp_path / "optimized.onnx"
    _conversion_session(onnx_path, optimized)
    model = onnx.load(str(optimized))
    imports = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    ops = set()
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        if domain == "ai.onnx":
            version = onnx.defs.get_schema(node.op_type, imports[domain], "").since_version
        else:  # ORT's contrib ops: not in onnx.defs, all at version 1 of their domain
            version = imports[domain]
        ops.add((domain, version, node.op_type))
    return ops


@pytest.mark.parametrize("kind", ["float", "qdq"])
def test_operator_config_is_exactly_the_ort_operators(bundles, models, kind, tmp_path):
    path = bundles[kind]
    config = read_operator_config(path / "model.required_operators.config")
    assert config == _optimized_graph_operators(models[kind], tmp_path)
    assert config == ort_model_operators(path / "model.ort")
    if kind == "qdq":  # the integer kernels a minimal build needs, and no float Conv
        assert {("com.microsoft", 1, "QLinearConv"), ("com.microsoft", 1, "QGemm")} <= config
        assert not any(op in ("Conv", "Gemm") for _, _, op in config)


def test_zip_bundle_reads_and_matches_folder(bundles, models, tmp_path):
    result = package.build_bundle(models["qdq"], tmp_path / "dist", as_zip=True, model_ref="digits-cnn")
    assert result.path == tmp_path / "dist.zip" and not (tmp_path / "dist").exists()
    with zipfile.ZipFile(result.path) as zf:
        assert set(zf.namelist()) == BUNDLE_FILES
    bundle = read_bundle(result.path)
    folder = read_bundle(bundles["qdq"]).manifest
    ort_bytes = bundle.read_bytes("model.ort")
    # two conversions give equivalent .ort files whose bytes may differ (ORT writes hash-map order)
    assert {k: v for k, v in bundle.manifest.items() if k != "files"} == \
        {k: v for k, v in folder.items() if k != "files"}
    config = "model.required_operators.config"
    assert bundle.manifest["files"][config] == folder["files"][config]
    session = ort.InferenceSession(ort_bytes, providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "logits"
    assert package.build_bundle(models["float"], tmp_path / "f.zip").path == tmp_path / "f.zip"
    assert _leftovers(tmp_path) == []


def test_costs_say_what_each_file_takes(models, tmp_path):
    """Folder: the files' sizes add up to the bundle; zip: compressed sizes plus headers are the archive."""
    folder = package.build_bundle(models["qdq"], tmp_path / "b")
    assert {c.name for c in folder.costs} == BUNDLE_FILES and folder.costs[0].name == "model.ort"
    assert folder.total_bytes == sum(folder.files.values()) == sum(c.bytes for c in folder.costs)
    assert {c.name: c.bytes for c in folder.costs} == folder.files
    assert abs(sum(c.share for c in folder.costs) - 1) < 1e-9 and all(c.purpose for c in folder.costs)
    assert folder.left_out == {"model.onnx": models["qdq"].stat().st_size}
    zipped = package.build_bundle(models["qdq"], tmp_path / "b.zip")
    assert zipped.total_bytes == zipped.path.stat().st_size > sum(c.bytes for c in zipped.costs)
    with zipfile.ZipFile(zipped.path) as zf:
        assert {c.name: c.bytes for c in zipped.costs} == {i.filename: i.compress_size for i in zf.infolist()}
    full = package.build_bundle(models["qdq"], tmp_path / "full", full=True)
    assert full.left_out == {} and full.files["model.onnx"] == models["qdq"].stat().st_size


# --- verification of a bundle -------------------------------------------------------------------

def test_read_bundle_refuses_tampered_missing_and_extra_files(bundles, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundles["qdq"], copy)
    data = bytearray((copy / "model.ort").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.ort").write_bytes(bytes(data))
    with pytest.raises(HawqError, match="model.ort .*sha256"):
        read_bundle(copy)
    shutil.copy(bundles["qdq"] / "model.ort", copy / "model.ort")
    read_bundle(copy)
    (copy / "notes.txt").write_text("x")
    with pytest.raises(HawqError, match="notes.txt, not listed"):
        read_bundle(copy)
    (copy / "notes.txt").unlink()
    (copy / "model.required_operators.config").unlink()
    with pytest.raises(HawqError, match="missing model.required_operators.config"):
        read_bundle(copy)
    zipped = tmp_path / "b.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in bundles["qdq"].iterdir():
            zf.writestr(p.name, p.read_bytes() if p.name != "model.required_operators.config" else b"broken")
    with pytest.raises(HawqError, match="model.required_operators.config .*bytes"):
        read_bundle(zipped)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(HawqError, match="neither a bundle folder nor a .zip"):
        read_bundle(tmp_path / "junk.zip")


# --- failures leave nothing behind --------------------------------------------------------------

def test_corrupt_input_leaves_no_bundle(models, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(models["qdq"].read_bytes()[:5000])
    with pytest.raises(HawqError, match="broken.onnx"):
        package.build_bundle(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_broken_ort_leaves_no_bundle_and_keeps_the_old_one(models, bundles, tmp_path, monkeypatch):
    old = tmp_path / "out"
    shutil.copytree(bundles["qdq"], old)
    real = convert_to_ort

    def truncated(onnx_path, work_dir):
        ort_path, config = real(onnx_path, work_dir)
        ort_path.write_bytes(ort_path.read_bytes()[:2000])
        return ort_path, config

    monkeypatch.setattr(package, "convert_to_ort", truncated)
    with pytest.raises(HawqError, match="cannot load the converted .ort"):
        package.build_bundle(models["qdq"], old)
    with pytest.raises(HawqError, match="cannot load the converted .ort"):
        package.build_bundle(models["qdq"], tmp_path / "new", as_zip=True)
    assert read_bundle(old).manifest == read_bundle(bundles["qdq"]).manifest  # untouched
    assert not (tmp_path / "new.zip").exists() and _leftovers(tmp_path) == []


def test_ort_of_another_model_is_caught(models, tmp_path, monkeypatch):
    """The output comparison can fail: a conversion that changed one weight is refused."""
    real = convert_to_ort

    def altered(onnx_path, work_dir):
        model = onnx.load(str(onnx_path))
        bias = next(t for t in model.graph.initializer if t.name.endswith("bias"))
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
        onnx.save(model, str(onnx_path))
        return real(onnx_path, work_dir)

    monkeypatch.setattr(package, "convert_to_ort", altered)
    with pytest.raises(HawqError, match="output logits differs"):
        package.build_bundle(models["float"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_rebuilding_replaces_an_old_bundle_but_not_other_folders(models, tmp_path):
    out = tmp_path / "out"
    package.build_bundle(models["float"], out)
    package.build_bundle(models["qdq"], out)
    assert read_bundle(out).manifest["source"]["name"] == "qdq.onnx"
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(HawqError, match="not a hawq-onnx bundle"):
        package.build_bundle(models["qdq"], other)
    assert [p.name for p in other.iterdir()] == ["cat.jpg"]
    package.build_bundle(models["float"], tmp_path / "b.zip")
    package.build_bundle(models["qdq"], tmp_path / "b.zip")  # an older bundle archive is replaced
    assert read_bundle(tmp_path / "b.zip").manifest["source"]["name"] == "qdq.onnx"
    (tmp_path / "notes.zip").write_bytes(b"PK not ours")
    with pytest.raises(HawqError, match="not a hawq-onnx bundle archive"):
        package.build_bundle(models["qdq"], tmp_path / "notes.zip")
    assert (tmp_path / "notes.zip").read_bytes() == b"PK not ours"


def test_output_equal_to_input_is_refused(models, tmp_path):
    src = tmp_path / "q.onnx"
    shutil.copy(models["qdq"], src)
    with pytest.raises(HawqError, match="would overwrite the input"):
        package.build_bundle(src, src)
    with pytest.raises(HawqError, match="would overwrite the input"):
        package.build_bundle(src, tmp_path)  # the input lives in the output folder
    report = tmp_path / "report.json"
    report.write_text("{}")
    with pytest.raises(HawqError, match="would overwrite the input"):
        package.build_bundle(src, report, report=report)
    zip_named = tmp_path / "q.zip"
    shutil.copy(src, zip_named)
    with pytest.raises(HawqError, match="would overwrite the input"):
        package.build_bundle(zip_named, zip_named, as_zip=True)
    assert src.read_bytes() == models["qdq"].read_bytes() == zip_named.read_bytes()


# --- manifest sources ---------------------------------------------------------------------------

def test_report_figures_metadata_and_wrong_model(models, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"models": {"float": {"top1": 0.989, "bytes": 80000},
                                             "qdq": {"top1": 0.986, "bytes": 30563,
                                                     "latency_ms": {"batch1": 0.05}}},
                                  "accuracy_drop": 0.003, "data": "digits", "seed": 0}))
    tagged = onnx.load(str(models["qdq"]))
    for key, value in (("hawq_onnx.mean", "[0.25]"), ("hawq_onnx.std", "[2]"),
                       ("hawq_onnx.class_names", json.dumps(list("abcdefghij")))):
        tagged.metadata_props.add(key=key, value=value)
    onnx.save(tagged, str(tmp_path / "tagged.onnx"))
    m = package.build_bundle(tmp_path / "tagged.onnx", tmp_path / "b", report=report).manifest
    assert m["preprocessing"]["mean"] == [0.25] and m["preprocessing"]["std"] == [2.0]
    assert m["preprocessing"]["source"] == "onnx metadata" and m["class_names"] == list("abcdefghij")
    v = m["validation"]
    assert v["accuracy"] == {"models.float.top1": 0.989, "models.qdq.top1": 0.986, "accuracy_drop": 0.003}
    assert v["size"] == {"models.float.bytes": 80000, "models.qdq.bytes": 30563}
    assert v["latency"] == {"models.qdq.latency_ms.batch1": 0.05}
    assert "validation figures" in format_manifest(m)
    (tmp_path / "bad.json").write_text("accuracy: 0.9")
    with pytest.raises(HawqError, match="not valid JSON"):
        package.build_bundle(models["qdq"], tmp_path / "c", report=tmp_path / "bad.json")
    with pytest.raises(HawqError, match="wrong model_ref"):
        package.build_bundle(models["qdq"], tmp_path / "c", model_ref="resnet20-cifar10")
    next(p for p in tagged.metadata_props if p.key == "hawq_onnx.mean").value = "[0.5, oops]"
    onnx.save(tagged, str(tmp_path / "badmeta.onnx"))
    with pytest.raises(HawqError, match="hawq_onnx.mean"):
        package.build_bundle(tmp_path / "badmeta.onnx", tmp_path / "c")
    assert not (tmp_path / "c").exists() and _leftovers(tmp_path) == []


def test_validator_report_figures(tmp_path):
    report = tmp_path / "validation.json"
    report.write_text(json.dumps({
        "format": "hawq-onnx-validation", "version": 1, "data": {"source": "digits", "samples": 359},
        "models": {"float": {"accuracy": {"top1": 0.989, "top5": None, "samples": 359}, "file_bytes": 79746,
                             "size_ratio": 1.0, "latency": {"1": {"median_ms": 0.022, "p90_ms": 0.03, "runs": 50}}},
                   "quantized": {"accuracy": {"top1": 0.986, "samples": 359}, "drop_points": 0.3, "agreement": 0.99,
                                 "file_bytes": 30563, "size_ratio": 0.383, "speedup": {"1": 1.4},
                                 "latency": {"1": {"median_ms": 0.016, "p90_ms": 0.02}}}},
        "layers": [{"layer": "fc", "bytes": 370, "bits": 8}], "gate": {"max_drop": 1.0, "passed": True}}))
    v = validation_figures(report)
    assert v["accuracy"] == {"float.top1": 0.989, "float.samples": 359, "quantized.top1": 0.986,
                             "quantized.samples": 359, "quantized.drop_points": 0.3, "quantized.agreement": 0.99}
    assert v["size"] == {"float.file_bytes": 79746, "float.size_ratio": 1.0, "quantized.file_bytes": 30563,
                         "quantized.size_ratio": 0.383}
    assert v["latency"] == {"float.batch1.median_ms": 0.022, "float.batch1.p90_ms": 0.03,
                            "quantized.batch1.median_ms": 0.016, "quantized.batch1.p90_ms": 0.02,
                            "quantized.batch1.speedup": 1.4}
    assert v["gate_passed"] is True and v["data"] == "digits" and v["source"] == "validation.json"
    (tmp_path / "report.md").write_text("# hawq-onnx validation report\n")
    with pytest.raises(HawqError, match="validate --json"):
        validation_figures(tmp_path / "report.md")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(HawqError, match="not an object"):
        validation_figures(tmp_path / "list.json")


def _with_int4_weight(qdq: Path, out: Path, through_cast: bool) -> Path:
    """The QDQ model with one conv weight stored as INT4: read by DequantizeLinear, or Cast to INT8 first."""
    model = onnx.load(str(qdq))
    inits = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                and len(inits[n.input[0]].dims) == 4 and inits[n.input[0]].data_type == onnx.TensorProto.INT8
                and n.input[0].startswith("block_conv1"))
    w = numpy_helper.to_array(inits[node.input[0]])
    w4 = np.clip(np.round(w / 16), -7, 7).astype(np.int8)
    inits[node.input[0]].CopyFrom(onnx.helper.make_tensor(node.input[0], onnx.TensorProto.INT4, w4.shape,
                                                          w4.flatten().tolist()))
    if through_cast:
        model.graph.node.insert(0, onnx.helper.make_node("Cast", [node.input[0]], [node.input[0] + "_int8"],
                                                         to=onnx.TensorProto.INT8))
        node.input[0] += "_int8"
    else:
        zp = inits[node.input[2]]
        zp.CopyFrom(onnx.helper.make_tensor(zp.name, onnx.TensorProto.INT4, zp.dims,
                                            numpy_helper.to_array(zp).flatten().tolist()))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def test_int4_weights_package_through_cast_and_are_refused_direct(models, tmp_path):
    """The ORT format has no 4-bit type: INT4 read by DequantizeLinear cannot be packaged; INT4 -> Cast
    -> DequantizeLinear can (the conversion folds the Cast, so the .ort holds the weight as int8)."""
    cast = _with_int4_weight(models["qdq"], tmp_path / "cast.onnx", through_cast=True)
    result = package.build_bundle(cast, tmp_path / "cast_bundle", model_ref="digits-cnn")
    m = result.manifest
    if result.size_note is not None:  # the .ort outweighs the .onnx: the int8 widening is named
        assert "no 4- or 2-bit type" in result.size_note
    int4 = [(r["layer"], r["w_bits"]) for r in m["layers"] if r["storage"] == "int4"]
    assert len(int4) == 1 and int4[0][0].startswith("block_conv1") and int4[0][1] == 4
    assert m["check"]["bitwise_equal"] and "ai.onnx;21;Cast" not in m["conversion"]["operators"]
    direct = _with_int4_weight(models["qdq"], tmp_path / "direct.onnx", through_cast=False)
    with pytest.raises(HawqError, match="cannot hold INT4/INT2"):
        package.build_bundle(direct, tmp_path / "direct_bundle")
    assert not (tmp_path / "direct_bundle").exists() and _leftovers(tmp_path) == []


# --- command line -------------------------------------------------------------------------------

def test_cli_package_and_errors(models, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["package", str(models["qdq"]), "--out", str(tmp_path / "b"), "--zip",
                                 "--model", "digits-cnn"])
    assert result.exit_code == 0, result.output
    assert "model.ort" in result.stdout and (tmp_path / "b.zip").is_file()
    assert "(zip headers)" in result.stdout and "left out: model.onnx" in result.stdout
    result = runner.invoke(cli, ["package", str(models["qdq"]), "--out", str(tmp_path / "full"), "--full"])
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.stdout and "left out" not in result.stdout
    assert {p.name for p in (tmp_path / "full").iterdir()} == BUNDLE_FILES | {"model.onnx"}
    result = runner.invoke(cli, ["package", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "nope.onnx does not exist" in result.stderr
    assert not (tmp_path / "x").exists()
