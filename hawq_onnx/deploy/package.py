"""``hawq-onnx package``: a deployable bundle for ONNX Runtime and its minimal builds.

The bundle holds what a device needs: the model in ORT format (``.ort``, what a minimal ONNX
Runtime build loads), the required-operators configuration that build takes with
``--include_ops_by_config``, and ``manifest.json`` (I/O, preprocessing, per-layer precision,
conversion settings, check results, validation figures, versions, sha256 of every file). A full
bundle also holds the ``.onnx`` (a byte copy of the input), for a full ONNX Runtime or a later
conversion; the minimal one names it by sha256 only, since it is the input the user already has
and is often a quarter of the bundle. What each file costs: :mod:`hawq_onnx.deploy.bundle_costs`.

The conversion settings (and why), and the check that the ``.ort`` gives the ``.onnx`` model's
outputs: :mod:`hawq_onnx.deploy.ort_conversion`. The manifest's preprocessing, class names and
validation figures: :mod:`hawq_onnx.deploy.manifest`.

Everything is built in a hidden folder beside the destination and renamed (or zipped, then
renamed) into place at the end; a failure removes it and leaves no bundle behind.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from hawq_onnx.deploy.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    ROLE_ONNX,
    ROLE_OPERATORS_CONFIG,
    ROLE_ORT,
)
from hawq_onnx.deploy.bundle_costs import FileCost, file_costs, ort_size_note, stored_sizes
from hawq_onnx.deploy.manifest import preprocessing_and_classes, validation_figures
from hawq_onnx.deploy.ort_conversion import (
    CONVERTER,
    OPTIMIZATION_LEVEL,
    OPTIMIZATION_STYLE,
    check_ort_matches,
    convert_to_ort,
    ort_model_operators,
    read_operator_config,
)
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.atomic import (
    atomic_path,
    check_writable_folder,
    current_umask,
    sha256_file,
    write_json,
    write_text,
)
from hawq_onnx.sources.inputs import model_file

log = logging.getLogger(__name__)

MODEL_STEM = "model"
ONNX_NAME = f"{MODEL_STEM}.onnx"
ORT_NAME = f"{MODEL_STEM}.ort"
CONFIG_NAME = f"{MODEL_STEM}.required_operators.config"


CONTENTS_MINIMAL = "minimal"
CONTENTS_FULL = "full"


@dataclass
class PackageResult:
    path: Path
    files: dict[str, int]  # name -> bytes, manifest included
    manifest: dict[str, Any]
    costs: list[FileCost] = field(default_factory=list)  # largest first, as stored (compressed in a .zip)
    total_bytes: int = 0  # the bundle on disk: the folder's files, or the .zip archive
    left_out: dict[str, int] = field(default_factory=dict)  # what a full bundle adds: name -> bytes
    size_note: str | None = None  # why the .ort outweighs the .onnx, when it does


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
        if item.resolve() == dest.resolve() or (not as_zip and _is_within(item, dest)) or _is_within(dest, item):
            raise OptionError(f"output {dest} would overwrite the input {item}; choose another {{out}}", "out")
    if as_zip:
        if dest.is_dir():
            raise HawqError(f"output {dest} is a folder; give a .zip file path")
        if dest.exists() and not _is_bundle_zip(dest):
            raise OptionError(f"output {dest} exists and is not a hawq-onnx bundle archive; choose another {{out}}", "out")
    elif dest.exists():
        if not dest.is_dir():
            raise OptionError(f"output {dest} exists and is a file; give a folder path (or {{as_zip}})", "as_zip")
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


# --- the input model and its layers -----------------------------------------------------------

def _load_input(path: Path) -> onnx.ModelProto:
    from hawq_onnx.core.onnx_inspect import load_onnx

    model = load_onnx(path)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise HawqError(f"{path} keeps weights in external data files; save it as one self-contained "
                            "file before packaging")
    return model


def _layers(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from hawq_onnx.core.onnx_inspect import inspect_onnx

    ins = inspect_onnx(model)
    rows = [{"layer": r.layer, "node": r.node, "op_type": r.op_type, "weight": r.weight, "shape": list(r.shape),
             "params": r.params, "macs": r.macs, "storage": r.storage, "w_bits": r.bits, "a_bits": r.act_bits,
             "bytes": r.bytes, "integer_op": r.integer_op} for r in ins.layers]
    totals = {"layer_params": ins.layer_params, "layer_macs": ins.layer_macs, "total_params": ins.total_params,
              "initializer_bytes_by_type": ins.bytes_by_type}
    return rows, {"inputs": ins.inputs, "outputs": ins.outputs, "totals": totals}


# --- the operators config and versions --------------------------------------------------------

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
                 model_ref: str | None = None, as_zip: bool = False, full: bool = False) -> PackageResult:
    """Package ``onnx_path`` into a bundle folder (or .zip) at ``out``; ``full`` adds the .onnx.

    See the module docstring."""
    src = Path(onnx_path)
    dest, as_zip = bundle_destination(out, as_zip)
    inputs = [src] + ([Path(report)] if report is not None else []) + ([model_file(model_ref)]
                                                                       if model_file(model_ref) else [])
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
        raise OptionError(f"cannot write the bundle {dest}: {exc.strerror}; choose another {{out}}", "out") from None
    try:
        with tempfile.TemporaryDirectory(prefix=".convert.", dir=staging) as scratch:
            # A private copy of the input, which may change meanwhile, is the reference the .ort is
            # checked against; the converter gets a copy of its own, so that the check never reads
            # a file the conversion could have touched.
            source, work = Path(scratch) / "source.onnx", Path(scratch) / "convert"
            shutil.copyfile(src, source)
            work.mkdir()
            shutil.copyfile(source, work / ONNX_NAME)
            ort_path, config_path = convert_to_ort(work / ONNX_NAME, work)
            shutil.copyfile(ort_path, staging / ORT_NAME)
            _relabel_config(config_path, staging / CONFIG_NAME)
            check = check_ort_matches(source, staging / ORT_NAME)
            source_sha256, source_bytes = sha256_file(source), source.stat().st_size
            if full:
                shutil.copyfile(source, staging / ONNX_NAME)
        config_ops = read_operator_config(staging / CONFIG_NAME)
        model_ops = ort_model_operators(staging / ORT_NAME)
        if config_ops != model_ops:
            missing, unused = _operator_list(model_ops - config_ops), _operator_list(config_ops - model_ops)
            raise HawqError(f"the operators config does not match the .ort model (missing {missing}, "
                            f"unused {unused})")
        roles = {ORT_NAME: ROLE_ORT, CONFIG_NAME: ROLE_OPERATORS_CONFIG, **({ONNX_NAME: ROLE_ONNX} if full else {})}
        files = {name: {"role": role, "bytes": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
                 for name, role in roles.items()}
        import onnxruntime

        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "contents": CONTENTS_FULL if full else CONTENTS_MINIMAL,
            "source": {"name": src.name, "bytes": source_bytes, "sha256": source_sha256},
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
        size_note = ort_size_note(model, source_bytes, ORT_NAME, staging / ORT_NAME)
        if as_zip:
            _write_zip(staging, dest, names)
        else:
            _make_readable(staging)
            _replace_folder(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    stored, total = stored_sizes(dest, as_zip, sizes)
    return PackageResult(dest, sizes, manifest, file_costs(stored, roles, total), total,
                         {} if full else {ONNX_NAME: source_bytes}, size_note)
