"""``hawq-onnx package``: a deployable bundle for ONNX Runtime and its minimal builds.

The bundle holds the ``.onnx`` model (a byte copy of the input), the same model in ORT format
(``.ort``), the required-operators configuration a minimal ONNX Runtime build takes with
``--include_ops_by_config``, and ``manifest.json`` (I/O, preprocessing, per-layer precision,
conversion settings, check results, validation figures, versions, sha256 of every file).

Conversion settings, and why:

* ONNX Runtime's own ``onnxruntime.tools.convert_onnx_models_to_ort``, run as a subprocess of
  this Python, in a scratch folder: its prints and any crash stay out of our process.
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
* No type reduction: the operators config is ``model.required_operators.config``. The tool's
  type-reduction pass knows no 4-bit or 2-bit tensor types and fails (KeyError) on a model whose
  ``.ort`` keeps an INT4 DequantizeLinear, which hawq-onnx's packed-weight exports can have; and a
  type-reduced build that misses a type fails only on the device. Per-operator kernels are
  already where most of a minimal build's size goes.

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

import importlib.metadata
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hawq_onnx.artifacts import atomic_path, read_json, sha256_file, write_json, write_text
from hawq_onnx.bundle import (BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, MANIFEST_NAME, ROLE_ONNX,
                              ROLE_OPERATORS_CONFIG, ROLE_ORT)
from hawq_onnx.errors import HawqError

log = logging.getLogger(__name__)

MODEL_STEM = "model"
ONNX_NAME = f"{MODEL_STEM}.onnx"
ORT_NAME = f"{MODEL_STEM}.ort"
CONFIG_NAME = f"{MODEL_STEM}.required_operators.config"

CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
OPTIMIZATION_STYLE = "Fixed"
OPTIMIZATION_LEVEL = "all"
# What the converter does when no --target_platform is given (see its source): generic CPU.
DISABLED_OPTIMIZERS = ["NchwcTransformer"]
SESSION_CONFIG = {"session.qdqisint8allowed": "0"}

CHECK_SEED = 0
# ONNX metadata_props keys read for preprocessing and labels; values are JSON lists.
META_MEAN = "hawq_onnx.mean"
META_STD = "hawq_onnx.std"
META_CLASS_NAMES = "hawq_onnx.class_names"

_NUMPY_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.BOOL: np.bool_,
}


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


def _check_destination(dest: Path, as_zip: bool, inputs: list[Path]) -> None:
    for item in inputs:
        if item.resolve() == dest.resolve() or (not as_zip and _is_within(item, dest)):
            raise HawqError(f"output {dest} would overwrite the input {item}; choose another --out")
    if as_zip:
        if dest.is_dir():
            raise HawqError(f"output {dest} is a folder; give a .zip file path")
    elif dest.exists():
        if not dest.is_dir():
            raise HawqError(f"output {dest} exists and is a file; give a folder path (or use --zip)")
        entries = [p.name for p in dest.iterdir()]
        if entries and MANIFEST_NAME not in entries:
            raise HawqError(f"output folder {dest} is not empty and is not a hawq-onnx bundle; "
                            "choose a new or empty folder")
    parent = dest.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HawqError(f"cannot create output folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise HawqError(f"output folder {parent} is not writable")


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(staging: Path) -> None:
    """Temporary files are created private (0600); a bundle is published with the usual modes."""
    mask = _umask()
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
        os.chmod(tmp, 0o666 & ~_umask())


# --- what the manifest says about the model ---------------------------------------------------

def _load_input(path: Path) -> onnx.ModelProto:
    from hawq_onnx.onnx_inspect import load_onnx

    model = load_onnx(path)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise HawqError(f"{path} keeps weights in external data files; save it as one self-contained "
                            "file before packaging")
    return model


def _json_list(model: onnx.ModelProto, key: str, kind: type) -> list | None:
    props = {p.key: p.value for p in model.metadata_props}
    if key not in props:
        return None
    try:
        value = json.loads(props[key])
    except json.JSONDecodeError:
        value = None
    allowed = (int, float) if kind is float else (str,)
    ok = isinstance(value, list) and value and all(
        isinstance(v, allowed) and not isinstance(v, bool) for v in value)
    if not ok:
        what = "numbers" if kind is float else "strings"
        raise HawqError(f"the model's metadata {key!r} is not a JSON list of {what}: {props[key][:80]!r}")
    return [float(v) for v in value] if kind is float else list(value)


def _spec_for(model_ref: str):
    """The model's spec (shape, normalisation, classes): the zoo entry, or the factory's model."""
    from hawq_onnx.models.registry import ZOO

    if model_ref in ZOO:
        return ZOO[model_ref]
    from hawq_onnx.model_source import load_model

    quiet = logging.getLogger("hawq_onnx.model_source")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "no weights" is expected: packaging needs only the spec
    try:
        return load_model(model_ref).spec
    finally:
        quiet.setLevel(level)


def _static_dims(shape: list[Any]) -> list[Any]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def preprocessing_and_classes(model: onnx.ModelProto, inputs: list[dict[str, Any]],
                              outputs: list[dict[str, Any]], model_ref: str | None
                              ) -> tuple[dict[str, Any] | None, list[str] | None]:
    """Normalisation and class names: from ``--model``'s spec, else from the ONNX metadata."""
    meta_mean, meta_std = _json_list(model, META_MEAN, float), _json_list(model, META_STD, float)
    meta_classes = _json_list(model, META_CLASS_NAMES, str)
    mean = std = classes = None
    source = None
    if model_ref is not None:
        spec = _spec_for(model_ref)
        if len(inputs) == 1:
            dims = _static_dims(inputs[0]["shape"])[1:]
            if len(dims) != len(spec.input_shape) or any(d is not None and d != s for d, s in zip(dims, spec.input_shape)):
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
    if classes is not None and len(outputs) == 1:
        last = _static_dims(outputs[0]["shape"])[-1:]
        if last and last[0] is not None and last[0] != len(classes):
            raise HawqError(f"{len(classes)} class names but the output {outputs[0]['name']} has {last[0]} "
                            "values per sample: wrong --model?")
    pre = {"mean": mean, "std": std, "source": source,
           "note": "x_normalised = (x - mean) / std per channel, x scaled to [0, 1]"} if mean is not None else None
    return pre, classes


def _layers(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from hawq_onnx.onnx_inspect import inspect_onnx

    ins = inspect_onnx(model)
    rows = [{"layer": r.layer, "node": r.node, "op_type": r.op_type, "weight": r.weight, "shape": list(r.shape),
             "params": r.params, "macs": r.macs, "storage": r.storage, "w_bits": r.bits, "a_bits": r.act_bits,
             "bytes": r.bytes, "integer_op": r.integer_op} for r in ins.layers]
    totals = {"layer_params": ins.layer_params, "layer_macs": ins.layer_macs, "total_params": ins.total_params,
              "initializer_bytes_by_type": ins.bytes_by_type}
    return rows, {"inputs": ins.inputs, "outputs": ins.outputs, "totals": totals}


# --- validation figures -----------------------------------------------------------------------

_CATEGORIES = (
    ("accuracy", ("accuracy", "acc", "top1", "top-1", "top_1", "top5", "top_5", "drop", "agreement")),
    ("latency", ("latency", "ms", "time", "throughput", "fps")),
    ("size", ("size", "bytes", "compression")),
)


def _category(path: list[str]) -> str | None:
    for part in reversed(path):
        words = part.lower().replace("-", "_").split("_")
        low = part.lower()
        for category, keys in _CATEGORIES:
            if low in keys or any(w in keys for w in words) or any(low.startswith(k) for k in keys if len(k) > 3):
                return category
    return None


def validation_figures(report_path: Path) -> dict[str, Any]:
    """The accuracy / latency / size numbers of a validation report, keyed by their JSON path.

    The report is copied, not interpreted: every number whose key (or an enclosing key) names
    accuracy, latency or size is kept with its dotted path (``models.qdq.top1``).
    """
    report = read_json(report_path, "validation report")
    if not isinstance(report, dict):
        raise HawqError(f"validation report {report_path} is JSON but not an object; pass the report.json "
                        "that hawq-onnx validate writes")
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
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            category = _category(path)
            if category is not None:
                figures[category][".".join(path)] = value

    walk(report, [], 0)
    if not any(figures.values()):
        log.warning("validation report %s holds no accuracy, latency or size figures", report_path)
    return {"source": report_path.name, "sha256": sha256_file(report_path), **figures}


# --- conversion and checks --------------------------------------------------------------------

def convert_to_ort(onnx_path: Path, work_dir: Path) -> tuple[Path, Path]:
    """Run ONNX Runtime's converter on ``onnx_path``; returns (the .ort, the operators config)."""
    out_dir = work_dir / "converted"
    # The model first: --optimization_style takes several values and would swallow it.
    cmd = [sys.executable, "-m", CONVERTER, str(onnx_path), "--optimization_style", OPTIMIZATION_STYLE,
           "--output_dir", str(out_dir)]
    env = dict(os.environ, ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL=OPTIMIZATION_LEVEL)
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=work_dir, env=env, capture_output=True, text=True)
    log.debug("converter output:\n%s%s", proc.stdout, proc.stderr)
    ort_path = out_dir / f"{onnx_path.stem}.ort"
    config_path = out_dir / f"{onnx_path.stem}.required_operators.config"
    if proc.returncode != 0 or not ort_path.is_file() or not config_path.is_file():
        text = (proc.stdout + "\n" + proc.stderr).strip().splitlines()
        errors = [line for line in text if line.startswith("Error converting")] or text[-1:] or ["no output"]
        raise HawqError(f"ONNX Runtime could not convert the model to ORT format: {errors[-1][:400]}")
    return ort_path, config_path


def _session(model: Path, level, ort_format: bool, use_conversion_settings: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
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
        elif kind in ("tensor(int64)", "tensor(int32)", "tensor(int8)", "tensor(uint8)", "tensor(int16)", "tensor(uint16)"):
            dtype = np.dtype(kind[len("tensor("):-1])
            feeds[arg.name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            raise HawqError(f"cannot make a sample input for {arg.name} of type {kind}")
    return feeds


def check_ort_matches(onnx_path: Path, ort_path: Path) -> dict[str, Any]:
    """Load the .ort as a minimal build would and compare it with the .onnx on a sample input."""
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    try:
        ort_session = _session(ort_path, level.ORT_DISABLE_ALL, ort_format=True, use_conversion_settings=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"ONNX Runtime cannot load the converted .ort model: {first[:300]}") from None
    reference = _session(onnx_path, level.ORT_ENABLE_ALL, ort_format=False, use_conversion_settings=True)
    unoptimized = _session(onnx_path, level.ORT_DISABLE_ALL, ort_format=False, use_conversion_settings=False)
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
    want = reference.run(None, feeds)
    plain = unoptimized.run(None, feeds)
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
        "input_distribution": "standard normal" if all(a.dtype.kind == "f" for a in feeds.values()) else "seeded random",
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
    from onnxruntime.tools.ort_format_model import OrtFormatModelProcessor

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
    layers, io = _layers(model)
    preprocessing, classes = preprocessing_and_classes(model, io["inputs"], io["outputs"], model_ref)

    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".building", dir=dest.resolve().parent))
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
            raise HawqError(f"the operators config does not match the .ort model (missing "
                            f"{_operator_list(model_ops - config_ops)}, unused {_operator_list(config_ops - model_ops)})")
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
