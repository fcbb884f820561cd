"""``hawq-onnx package``: a deployable bundle for ONNX Runtime and its minimal builds.

The bundle holds the ``.onnx`` model (a byte copy of the input), the same model in ORT format
(``.ort``), the required-operators configuration a minimal ONNX Runtime build takes with
``--include_ops_by_config``, and ``manifest.json`` (I/O, preprocessing, per-layer precision,
conversion settings, check results, validation figures, versions, sha256 of every file).

Conversion settings, and why:

* ONNX Runtime's own ``onnxruntime.tools.convert_onnx_models_to_ort``, called through its Python
  API (in-process: a subprocess would re-import torch, which ``onnxruntime.tools`` imports, for
  2 s of CPU per bundle) on a copy of the model in a scratch folder; its prints are captured.
* Optimization style **Fixed**, level **all**, no target platform. A minimal build has no graph
  optimizers, so the optimizations that make a QDQ model fast (QDQ -> QLinearConv / QGemm /
  QLinearAdd, NHWC integer convolutions) must be baked into the ``.ort``; Fixed does that, and
  the ``.ort`` then runs as-is. Runtime style keeps the unfused QDQ graph and replays saved
  optimizations only in an *extended* minimal build with
  ``session.enable_saved_runtime_optimizations=1`` (the route for NNAPI / CoreML); in a plain
  minimal build its QDQ nodes run as float DequantizeLinear -> Conv -> QuantizeLinear, and its
  operator config must hold both graphs' operators. No target platform means the tool leaves
  out the x86-only NCHWc layout and sets ``session.qdqisint8allowed=0``: the ``.ort`` runs on
  x86 and ARM CPUs alike (uint8 activations, which hawq-onnx uses, fuse on both).
* No type reduction: the operators config is ``model.required_operators.config``. For 8-bit QDQ
  models the tool does write a type-reduced config, but nothing here can prove that a
  type-reduced build runs the model (it needs an ONNX Runtime source build), a type the tool's
  partial tracking misses (it tracks no types for QGemm or Reshape, and forces DequantizeLinear's
  in a TODO) fails only on the device, and its type pass raises KeyError on INT4/INT2 tensors.
  Operator reduction alone is the safe default; type reduction would be a further opt-in.
* The ORT format (v5, ONNX Runtime 1.32) has no 4-bit or 2-bit tensor type: a weight stored as
  INT4/INT2 and read directly by DequantizeLinear gives an ``.ort`` that ONNX Runtime refuses to
  load (the check below catches it and says so). The ``INT4 -> Cast(INT8) -> DequantizeLinear``
  form converts: the Cast is constant-folded, so the ``.ort`` holds that weight as int8 (bigger
  than the ``.onnx``, same kernels and speed).

The check before anything is kept: the ``.ort`` is loaded by ONNX Runtime with no further graph
optimization (as a minimal build runs it) and must give outputs byte-for-byte equal to the
``.onnx`` run with the conversion's own optimization settings, on a seeded standard-normal
input of batch 1 (every symbolic dimension set to 1). Against the ``.onnx`` with no
optimizations (a float reference) the difference is measured and recorded, not required to be
zero: fused integer kernels and float emulation of QDQ may round differently.

ONNX Runtime writes the ``.ort`` flatbuffer in hash-map order: converting the same model twice
gives equivalent files with different bytes, so the manifest's sha256 identifies one build.

Everything is built in a hidden folder beside the destination and renamed (or zipped, then
renamed) into place at the end; a failure removes it and leaves no bundle behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hawq_onnx.deploy.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    ROLE_ONNX,
    ROLE_OPERATORS_CONFIG,
    ROLE_ORT,
)
from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import (
    atomic_path,
    check_writable_folder,
    current_umask,
    read_json,
    sha256_file,
    write_json,
    write_text,
)

log = logging.getLogger(__name__)

MODEL_STEM = "model"
ONNX_NAME = f"{MODEL_STEM}.onnx"
ORT_NAME = f"{MODEL_STEM}.ort"
CONFIG_NAME = f"{MODEL_STEM}.required_operators.config"

CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
OPTIMIZATION_STYLE = "Fixed"
OPTIMIZATION_LEVEL = "all"
LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
# What the converter does when no --target_platform is given (see its source): generic CPU.
DISABLED_OPTIMIZERS = ["NchwcTransformer"]
SESSION_CONFIG = {"session.qdqisint8allowed": "0"}

CHECK_SEED = 0
# ONNX metadata_props keys read for preprocessing and labels (the keys validate reads too);
# values are JSON lists or comma-separated.
META_MEAN = "hawq_onnx.mean"
META_STD = "hawq_onnx.std"
META_CLASS_NAMES = "hawq_onnx.class_names"

@dataclass
class PackageResult:
    path: Path
    files: dict[str, int]  # name -> bytes, manifest included
    manifest: dict[str, Any]


# --- destination ------------------------------------------------------------------------------

def bundle_destination(out: str | os.PathLike, as_zip: bool) -> tuple[Path, bool]:
    """``--out DIR`` -> DIR; with ``--zip`` (or an --out ending in .zip) -> the archive path."""
    out_path = Path(out)
    if as_zip or out_path.suffix.lower() == ".zip":
        if out_path.suffix.lower() != ".zip":
            out_path = out_path.with_name(out_path.name + ".zip")
        return out_path, True
    return out_path, False


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _is_bundle_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST_NAME in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _check_destination(dest: Path, as_zip: bool, inputs: list[Path]) -> None:
    for item in inputs:
        if item.resolve() == dest.resolve() or (not as_zip and _is_within(item, dest)):
            raise HawqError(f"output {dest} would overwrite the input {item}; choose another --out")
    if as_zip:
        if dest.is_dir():
            raise HawqError(f"output {dest} is a folder; give a .zip file path")
        if dest.exists() and not _is_bundle_zip(dest):
            raise HawqError(f"output {dest} exists and is not a hawq-onnx bundle archive; choose another --out")
    elif dest.exists():
        if not dest.is_dir():
            raise HawqError(f"output {dest} exists and is a file; give a folder path (or use --zip)")
        entries = [p.name for p in dest.iterdir()]
        if entries and MANIFEST_NAME not in entries:
            raise HawqError(f"output folder {dest} is not empty and is not a hawq-onnx bundle; "
                            "choose a new or empty folder")
    check_writable_folder(dest.absolute().parent)  # created only once the inputs have passed


def _replace_folder(staging: Path, dest: Path) -> None:
    """Move the finished staging folder onto ``dest`` (absent, empty, or an older bundle)."""
    if dest.exists() and any(dest.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.resolve().parent))
        os.rmdir(old)
        os.replace(dest, old)
        try:
            os.replace(staging, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)


def _make_readable(staging: Path) -> None:
    """Temporary files are created private (0600); a bundle is published with the usual modes."""
    mask = current_umask()
    for p in staging.iterdir():
        os.chmod(p, 0o666 & ~mask)
    os.chmod(staging, 0o777 & ~mask)


def _write_zip(staging: Path, dest: Path, names: list[str]) -> None:
    """Deterministic archive: fixed order and timestamps, files at the top level."""
    def writer(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in names:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, (staging / name).read_bytes())

    with atomic_path(dest) as tmp:
        writer(tmp)


# --- what the manifest says about the model ---------------------------------------------------

def _load_input(path: Path) -> onnx.ModelProto:
    from hawq_onnx.core.onnx_inspect import load_onnx

    model = load_onnx(path)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise HawqError(f"{path} keeps weights in external data files; save it as one self-contained "
                            "file before packaging")
    return model


def _metadata_list(model: onnx.ModelProto, key: str, numbers: bool) -> list | None:
    """A metadata list: JSON (``[0.5]``, ``["cat", "dog"]``) or comma-separated, as validate reads it."""
    props = {p.key: p.value for p in model.metadata_props}
    if key not in props:
        return None
    text = props[key].strip()
    try:
        value = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",")]
        if numbers:
            if not isinstance(value, list) or any(isinstance(v, bool) for v in value):
                raise TypeError(key)
            value = [float(v) for v in value]
            ok = bool(value) and all(math.isfinite(v) for v in value)
        else:
            ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    except (ValueError, TypeError, RecursionError):
        ok = False
    if not ok:
        what = "finite numbers" if numbers else "strings"
        raise HawqError(f"the model's metadata {key!r} is not a list of {what} (JSON or comma-separated): "
                        f"{text[:80]!r}")
    return list(value)


def _spec_for(model_ref: str, onnx_shape: tuple[int, ...] | None):
    """The model's spec (shape, normalisation, classes): the zoo entry, or the factory's model.

    A factory's model that declares no input shape takes the ONNX model's (without batch).
    """
    from hawq_onnx.models.registry import ZOO

    if model_ref in ZOO:
        return ZOO[model_ref]
    from hawq_onnx.sources.model import load_model

    quiet = logging.getLogger("hawq_onnx.sources.model")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "no weights" is expected: packaging needs only the spec
    try:
        return load_model(model_ref, None, onnx_shape).spec
    finally:
        quiet.setLevel(level)


def _static_dims(shape: list[Any]) -> list[Any]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def preprocessing_and_classes(model: onnx.ModelProto, inputs: list[dict[str, Any]],
                              outputs: list[dict[str, Any]], model_ref: str | None
                              ) -> tuple[dict[str, Any] | None, list[str] | None]:
    """Normalisation and class names: from ``--model``'s spec, else from the ONNX metadata."""
    meta_mean, meta_std = _metadata_list(model, META_MEAN, True), _metadata_list(model, META_STD, True)
    meta_classes = _metadata_list(model, META_CLASS_NAMES, False)
    mean = std = classes = None
    source = None
    if model_ref is not None:
        dims = _static_dims(inputs[0]["shape"])[1:] if len(inputs) == 1 else []
        spec = _spec_for(model_ref, tuple(dims) if dims and None not in dims else None)
        if len(inputs) == 1:
            fits = len(dims) == len(spec.input_shape) and all(
                d is None or d == s for d, s in zip(dims, spec.input_shape))
            if not fits:
                raise HawqError(f"--model {model_ref} takes input {'x'.join(map(str, spec.input_shape))} but the ONNX "
                                f"model's input is {inputs[0]['shape']}: wrong --model?")
        mean, std = (list(spec.mean), list(spec.std)) if spec.mean and spec.std else (None, None)
        classes = list(spec.class_names) if spec.class_names else None
        source = f"--model {model_ref}"
        if (meta_mean and mean and meta_mean != mean) or (meta_classes and classes and meta_classes != classes):
            log.warning("the model's metadata disagrees with --model %s on normalisation or classes; using --model",
                        model_ref)
    if mean is None and meta_mean is not None and meta_std is not None:
        mean, std, source = meta_mean, meta_std, "onnx metadata"
    if classes is None and meta_classes is not None:
        classes = meta_classes
    if mean is not None and len(mean) != len(std):
        raise HawqError(f"normalisation mean has {len(mean)} values but std has {len(std)}")
    if mean is not None and any(s == 0 for s in std):
        raise HawqError("normalisation std holds a zero")
    channels = _static_dims(inputs[0]["shape"])[1:2] if len(inputs) == 1 else []
    if mean is not None and channels and channels[0] is not None and len(mean) not in (1, channels[0]):
        raise HawqError(f"normalisation has {len(mean)} values but the input has {channels[0]} channels "
                        f"(from {source})")
    if classes is not None and len(outputs) == 1:
        last = _static_dims(outputs[0]["shape"])[-1:]
        if last and last[0] is not None and last[0] != len(classes):
            raise HawqError(f"{len(classes)} class names but the output {outputs[0]['name']} has {last[0]} "
                            "values per sample: wrong --model?")
    pre = {"mean": mean, "std": std, "source": source,
           "note": "x_normalised = (x - mean) / std per channel, x scaled to [0, 1]"} if mean is not None else None
    return pre, classes


def _layers(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from hawq_onnx.core.onnx_inspect import inspect_onnx

    ins = inspect_onnx(model)
    rows = [{"layer": r.layer, "node": r.node, "op_type": r.op_type, "weight": r.weight, "shape": list(r.shape),
             "params": r.params, "macs": r.macs, "storage": r.storage, "w_bits": r.bits, "a_bits": r.act_bits,
             "bytes": r.bytes, "integer_op": r.integer_op} for r in ins.layers]
    totals = {"layer_params": ins.layer_params, "layer_macs": ins.layer_macs, "total_params": ins.total_params,
              "initializer_bytes_by_type": ins.bytes_by_type}
    return rows, {"inputs": ins.inputs, "outputs": ins.outputs, "totals": totals}


# --- validation figures -----------------------------------------------------------------------

VALIDATION_FORMAT = "hawq-onnx-validation"  # what hawq_onnx.validation.validate writes
_CATEGORIES = (
    ("accuracy", ("accuracy", "acc", "top1", "top5", "drop", "agreement")),
    ("latency", ("latency", "ms", "throughput", "fps", "speedup")),
    ("size", ("size", "bytes", "compression")),
)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validator_figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures of a ``hawq-onnx validate`` report, per model label (float, quantized, ...)."""
    figures: dict[str, dict[str, Any]] = {"accuracy": {}, "latency": {}, "size": {}}
    models = report.get("models")
    for label, m in (models.items() if isinstance(models, dict) else ()):
        if not isinstance(m, dict):
            continue
        acc = m.get("accuracy") if isinstance(m.get("accuracy"), dict) else {}
        for key, value in (("top1", acc.get("top1")), ("top5", acc.get("top5")), ("samples", acc.get("samples")),
                           ("drop_points", m.get("drop_points")), ("agreement", m.get("agreement"))):
            if _number(value):
                figures["accuracy"][f"{label}.{key}"] = value
        for key in ("file_bytes", "size_ratio"):
            if _number(m.get(key)):
                figures["size"][f"{label}.{key}"] = m[key]
        latency = m.get("latency") if isinstance(m.get("latency"), dict) else {}
        for batch, stats in latency.items():
            for key in ("median_ms", "p90_ms"):
                if isinstance(stats, dict) and _number(stats.get(key)):
                    figures["latency"][f"{label}.batch{batch}.{key}"] = stats[key]
        speedup = m.get("speedup") if isinstance(m.get("speedup"), dict) else {}
        for batch, value in speedup.items():
            if _number(value):
                figures["latency"][f"{label}.batch{batch}.speedup"] = value
    return figures


def _category(path: list[str]) -> str | None:
    for part in reversed(path):
        low = part.lower().replace("-", "_")
        words = low.split("_")
        for category, keys in _CATEGORIES:
            if low in keys or any(w in keys for w in words):
                return category
    return None


def _generic_figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Any other JSON: every number whose key (or an enclosing key) names accuracy, latency or size."""
    figures: dict[str, dict[str, Any]] = {c: {} for c, _ in _CATEGORIES}

    def walk(value: Any, path: list[str], depth: int) -> None:
        if depth > 6:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + [str(k)], depth + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value[:64]):
                label = v.get("name") if isinstance(v, dict) and isinstance(v.get("name"), str) else str(i)
                walk(v, path + [label], depth + 1)
        elif _number(value):
            category = _category(path)
            if category is not None:
                figures[category][".".join(path)] = value

    walk(report, [], 0)
    return figures


def validation_figures(report_path: Path) -> dict[str, Any]:
    """The accuracy / latency / size figures of a validation report, copied with their keys.

    A ``hawq-onnx validate`` report gives ``<model label>.<figure>`` keys (``quantized.top1``,
    ``quantized.batch1.median_ms``, ``quantized.size_ratio``); any other JSON object gives every
    number under a key naming accuracy, latency or size, keyed by its dotted JSON path.
    """
    try:
        report = read_json(report_path, "validation report")
    except HawqError as exc:
        raise HawqError(f"{exc}; pass the file that hawq-onnx validate --json writes, not the Markdown "
                        "--report") from None
    if not isinstance(report, dict):
        raise HawqError(f"validation report {report_path} is JSON but not an object; pass the report.json "
                        "that hawq-onnx validate writes")
    if report.get("format") == VALIDATION_FORMAT:
        figures = _validator_figures(report)
        data = report.get("data") if isinstance(report.get("data"), dict) else {}
        gate = report.get("gate") if isinstance(report.get("gate"), dict) else {}
        extra = {"data": data.get("source"), "gate_passed": gate.get("passed"), "max_drop": gate.get("max_drop")}
    else:
        figures = _generic_figures(report)
        extra = {}
    if not any(figures.values()):
        log.warning("validation report %s holds no accuracy, latency or size figures", report_path)
    return {"source": report_path.name, "sha256": sha256_file(report_path), **figures,
            **{k: v for k, v in extra.items() if v is not None}}


# --- conversion and checks --------------------------------------------------------------------

def _ort_tools():
    """onnxruntime.tools' converter and ORT-format reader, imported without their side effects.

    Importing them calls ``logging.basicConfig`` (a handler on the root logger that would print
    every library's log records in its format); the root logger's handlers are put back.
    """
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        from onnxruntime.tools import convert_onnx_models_to_ort as converter
        from onnxruntime.tools.ort_format_model import OrtFormatModelProcessor
    finally:
        root.handlers[:] = saved
    return converter, OrtFormatModelProcessor


@contextlib.contextmanager
def _environment(name: str, value: str):
    """The converter reads its optimization level from the environment; pin it for one call."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def convert_to_ort(onnx_path: Path, work_dir: Path) -> tuple[Path, Path]:
    """Run ONNX Runtime's converter on ``onnx_path``; returns (the .ort, the operators config)."""
    import onnxruntime as ort

    converter, _ = _ort_tools()
    out_dir = work_dir / "converted"
    printed = io.StringIO()  # the converter prints its progress
    # Its sessions log through ONNX Runtime's default logger, straight to the terminal: a failure
    # becomes our one-line error below, and its warnings are not the user's business.
    ort.set_default_logger_severity(4)
    try:
        with _environment(LEVEL_VARIABLE, OPTIMIZATION_LEVEL), contextlib.redirect_stdout(printed):
            converter.convert_onnx_models_to_ort(
                onnx_path, output_dir=out_dir, optimization_styles=[converter.OptimizationStyle[OPTIMIZATION_STYLE]],
                target_platform=None, enable_type_reduction=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"ONNX Runtime could not convert the model to ORT format: {first[:400]}") from None
    finally:
        ort.set_default_logger_severity(3)
        log.debug("converter output:\n%s", printed.getvalue())
    ort_path = out_dir / f"{onnx_path.stem}.ort"
    config_path = out_dir / f"{onnx_path.stem}.required_operators.config"
    if not ort_path.is_file() or not config_path.is_file():
        raise HawqError(f"ONNX Runtime's converter wrote no {ort_path.name} or {config_path.name}: "
                        f"{printed.getvalue().strip()[-300:]}")
    return ort_path, config_path


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__


def _session(model: Path, level, ort_format: bool, use_conversion_settings: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # fatal only: a failure becomes our one-line error, not a log line too
    so.graph_optimization_level = level
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    disabled = None
    if use_conversion_settings:
        for key, value in SESSION_CONFIG.items():
            so.add_session_config_entry(key, value)
        disabled = DISABLED_OPTIMIZERS
    return ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def sample_inputs(session, seed: int = CHECK_SEED) -> dict[str, np.ndarray]:
    """A seeded random input per model input: batch 1, every symbolic dimension 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        kind = arg.type  # 'tensor(float)'
        if kind in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}[kind]
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "tensor(bool)":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif kind in ("tensor(int64)", "tensor(int32)", "tensor(int16)", "tensor(uint16)", "tensor(int8)",
                      "tensor(uint8)"):
            dtype = np.dtype(kind[len("tensor("):-1])
            feeds[arg.name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            raise HawqError(f"cannot make a sample input for {arg.name} of type {kind}")
    return feeds


SUB_BYTE_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "INT2", "UINT2")
                  if hasattr(onnx.TensorProto, name)}


def _sub_byte_hint(onnx_path: Path) -> str:
    """ORT format (v5) has no 4-bit or 2-bit tensor type: say so when that is the likely cause."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(t.data_type in SUB_BYTE_TYPES for t in model.graph.initializer):
        return ("; the ORT format cannot hold INT4/INT2 tensors that stay in the optimized graph (a 4-bit "
                "weight read directly by DequantizeLinear): export with Cast to INT8 before DequantizeLinear, "
                "which the conversion folds")
    return ""


def check_ort_matches(onnx_path: Path, ort_path: Path) -> dict[str, Any]:
    """Load the .ort as a minimal build would and compare it with the .onnx on a sample input."""
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    try:
        ort_session = _session(ort_path, level.ORT_DISABLE_ALL, ort_format=True, use_conversion_settings=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"ONNX Runtime cannot load the converted .ort model: {first[:300].rstrip('.')}"
                        f"{_sub_byte_hint(onnx_path)}") from None
    try:  # the .onnx passed the checker, and can still fail in ONNX Runtime (a bad attribute value)
        reference = _session(onnx_path, level.ORT_ENABLE_ALL, ort_format=False, use_conversion_settings=True)
        unoptimized = _session(onnx_path, level.ORT_DISABLE_ALL, ort_format=False, use_conversion_settings=False)
    except Exception as exc:
        raise HawqError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None
    feeds = sample_inputs(reference)
    ort_io = ([(i.name, i.type) for i in ort_session.get_inputs()], [o.name for o in ort_session.get_outputs()])
    ref_io = ([(i.name, i.type) for i in reference.get_inputs()], [o.name for o in reference.get_outputs()])
    if ort_io != ref_io:
        raise HawqError(f"the .ort model's inputs/outputs {ort_io} differ from the .onnx model's {ref_io}")
    try:
        got = ort_session.run(None, feeds)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"the converted .ort model fails to run on a sample input: {first[:300]}") from None
    try:
        want = reference.run(None, feeds)
        plain = unoptimized.run(None, feeds)
    except Exception as exc:
        raise HawqError(f"the model fails to run in ONNX Runtime on a sample input: {_first_line(exc)}") from None
    names = ref_io[1]
    max_diff = 0.0
    for name, g, w, p in zip(names, got, want, plain):
        if g.dtype != w.dtype or g.shape != w.shape or g.tobytes() != w.tobytes():
            detail = (f"max |diff| {float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))):.3g}"
                      if g.shape == w.shape else f"shape {g.shape} vs {w.shape}")
            raise HawqError(f"the .ort model's output {name} differs from the .onnx model's ({detail}); "
                            "the conversion changed the model")
        if p.shape == g.shape and np.issubdtype(g.dtype, np.number):
            max_diff = max(max_diff, float(np.max(np.abs(g.astype(np.float64) - p.astype(np.float64)), initial=0.0)))
    return {
        "input": {name: list(a.shape) for name, a in feeds.items()},
        "input_distribution": ("standard normal" if all(a.dtype.kind == "f" for a in feeds.values())
                               else "seeded random"),
        "seed": CHECK_SEED,
        "reference": "the .onnx in ONNX Runtime with the conversion's graph optimizations",
        "ort_session": "the .ort with graph optimizations disabled (as a minimal build runs it)",
        "bitwise_equal": True,
        "max_abs_diff_vs_unoptimized_onnx": max_diff,
    }


def read_operator_config(path: Path) -> set[tuple[str, int, str]]:
    """(domain, since_version, op_type) for every operator line of a required-operators config."""
    ops = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, names = line.split(";", 2)
        ops.update((domain, int(opset), name) for name in names.split(",") if name)
    return ops


def ort_model_operators(ort_path: Path) -> set[tuple[str, int, str]]:
    """(domain, since_version, op_type) of every node in an ORT-format model, subgraphs included."""
    _, OrtFormatModelProcessor = _ort_tools()
    required: dict[str, dict[int, set[str]]] = {}
    try:
        OrtFormatModelProcessor(str(ort_path), required, None).process()
    except Exception as exc:
        raise HawqError(f"cannot read the operators of the .ort model: {exc.__class__.__name__}: {exc}") from None
    return {(domain, opset, op) for domain, by_opset in required.items() for opset, names in by_opset.items()
            for op in names}


def _relabel_config(config: Path, dest: Path) -> None:
    """The tool's comment names the scratch path it read; name the bundle's .ort instead."""
    lines = config.read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        if line.startswith("# - "):
            line = f"# - {ORT_NAME}"
        out.append(line)
    write_text(dest, "\n".join(out) + "\n")


def _versions() -> dict[str, str]:
    import onnxruntime

    try:
        own = importlib.metadata.version("hawq-onnx")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
    return {"hawq-onnx": own, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _operator_list(ops: set[tuple[str, int, str]]) -> list[str]:
    return [f"{d};{v};{op}" for d, v, op in sorted(ops)]


# --- the command ------------------------------------------------------------------------------

def build_bundle(onnx_path: str | os.PathLike, out: str | os.PathLike, *, report: str | os.PathLike | None = None,
                 model_ref: str | None = None, as_zip: bool = False) -> PackageResult:
    """Package ``onnx_path`` into a bundle folder (or .zip) at ``out``; see the module docstring."""
    src = Path(onnx_path)
    dest, as_zip = bundle_destination(out, as_zip)
    inputs = [src] + ([Path(report)] if report is not None else [])
    _check_destination(dest, as_zip, inputs)
    model = _load_input(src)
    validation = validation_figures(Path(report)) if report is not None else None
    reported_bytes = (validation or {}).get("size", {}).get("quantized.file_bytes")
    if reported_bytes is not None and reported_bytes != src.stat().st_size:
        log.warning("the report's quantized model is %s bytes but %s is %s: its figures may describe another model",
                    reported_bytes, src.name, src.stat().st_size)
    layers, io = _layers(model)
    preprocessing, classes = preprocessing_and_classes(model, io["inputs"], io["outputs"], model_ref)

    try:
        dest.absolute().parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".building", dir=dest.resolve().parent))
    except OSError as exc:
        raise HawqError(f"cannot write the bundle {dest}: {exc.strerror}; choose another --out") from None
    try:
        shutil.copyfile(src, staging / ONNX_NAME)
        with tempfile.TemporaryDirectory(prefix=".convert.", dir=staging) as scratch:
            work = Path(scratch)
            shutil.copyfile(src, work / ONNX_NAME)
            ort_path, config_path = convert_to_ort(work / ONNX_NAME, work)
            shutil.copyfile(ort_path, staging / ORT_NAME)
            _relabel_config(config_path, staging / CONFIG_NAME)
        check = check_ort_matches(staging / ONNX_NAME, staging / ORT_NAME)
        config_ops = read_operator_config(staging / CONFIG_NAME)
        model_ops = ort_model_operators(staging / ORT_NAME)
        if config_ops != model_ops:
            missing, unused = _operator_list(model_ops - config_ops), _operator_list(config_ops - model_ops)
            raise HawqError(f"the operators config does not match the .ort model (missing {missing}, "
                            f"unused {unused})")
        roles = {ONNX_NAME: ROLE_ONNX, ORT_NAME: ROLE_ORT, CONFIG_NAME: ROLE_OPERATORS_CONFIG}
        files = {name: {"role": role, "bytes": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
                 for name, role in roles.items()}
        import onnxruntime

        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "source": {"name": src.name, "sha256": files[ONNX_NAME]["sha256"]},
            "model": {"inputs": io["inputs"], "outputs": io["outputs"], "ir_version": model.ir_version,
                      "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
                      "producer": model.producer_name or None},
            "preprocessing": preprocessing,
            "class_names": classes,
            "layers": layers,
            "totals": io["totals"],
            "conversion": {"tool": CONVERTER, "onnxruntime": onnxruntime.__version__,
                           "optimization_style": OPTIMIZATION_STYLE, "optimization_level": OPTIMIZATION_LEVEL,
                           "target_platform": "generic (NCHWc layout off, session.qdqisint8allowed=0)",
                           "type_reduction": False, "operators": _operator_list(model_ops),
                           "minimal_build": f"build.sh --minimal_build --include_ops_by_config {CONFIG_NAME}"},
            "check": check,
            "validation": validation,
            "files": files,
            "versions": _versions(),
        }
        write_json(staging / MANIFEST_NAME, manifest)
        names = sorted(files) + [MANIFEST_NAME]
        sizes = {name: (staging / name).stat().st_size for name in names}
        if as_zip:
            _write_zip(staging, dest, names)
        else:
            _make_readable(staging)
            _replace_folder(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return PackageResult(dest, sizes, manifest)
