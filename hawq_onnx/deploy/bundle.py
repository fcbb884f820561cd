"""Reading a deployment bundle (a folder or a .zip) and checking it is the one that was built.

A bundle, written by :mod:`hawq_onnx.deploy.package`, holds the ``.onnx`` model, its ORT-format
twin (``.ort``), the required-operators configuration for a minimal ONNX Runtime build, and
``manifest.json``, which lists every other file with its size and sha256. Reading a bundle
verifies each listed file against the manifest, so a bundle that was edited, truncated or
half-copied is refused instead of deployed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import sha256_file

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "hawq-onnx-bundle"
BUNDLE_FORMAT_VERSION = 1
# Roles of the files a manifest lists (manifest["files"][name]["role"]).
ROLE_ONNX = "onnx"
ROLE_ORT = "ort"
ROLE_OPERATORS_CONFIG = "required_operators_config"


@dataclass
class Bundle:
    """A verified bundle: every file in ``files`` matched its manifest checksum when read."""

    path: Path
    kind: str  # "folder" or "zip"
    manifest: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)  # name -> size in bytes

    def file_for(self, role: str) -> str:
        """The name of the file with ``role`` (ROLE_ONNX, ROLE_ORT, ROLE_OPERATORS_CONFIG)."""
        for name, entry in self.manifest["files"].items():
            if entry.get("role") == role:
                return name
        raise HawqError(f"bundle {self.path} lists no {role} file in its manifest")

    def read_bytes(self, name: str) -> bytes:
        if name not in self.files:
            raise HawqError(f"bundle {self.path} holds no file {name!r}")
        if self.kind == "folder":
            return (self.path / name).read_bytes()
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(name)


def _check_name(name: str, where: Path) -> None:
    """Manifest names are plain file names: nothing that could point outside the bundle."""
    p = PurePosixPath(name)
    if not name or name != p.name or name in (".", "..") or "\\" in name:
        raise HawqError(f"the manifest of {where} lists {name!r}, which is not a plain file name; "
                        "the bundle is damaged or was not written by hawq-onnx")


def _parse_manifest(data: bytes, where: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HawqError(f"{MANIFEST_NAME} in {where} is not valid JSON ({exc.__class__.__name__}); "
                        "the bundle is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise HawqError(f"{MANIFEST_NAME} in {where} is not a hawq-onnx bundle manifest "
                        f"(no \"format\": \"{BUNDLE_FORMAT}\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION:
        raise HawqError(f"bundle {where} has manifest format version {version!r}; this hawq-onnx reads "
                        f"up to {BUNDLE_FORMAT_VERSION}: upgrade hawq-onnx")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise HawqError(f"{MANIFEST_NAME} in {where} lists no files; the bundle is damaged")
    for name, entry in files.items():
        _check_name(name, where)
        if name == MANIFEST_NAME or not isinstance(entry, dict) \
                or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
            raise HawqError(f"{MANIFEST_NAME} in {where} has a malformed entry for {name!r}; the bundle is damaged")
    return manifest


def _ignored(name: str) -> bool:
    """Files an archiver or file browser adds on its own; never part of a bundle."""
    return name.startswith(".") or name.startswith("__MACOSX/") or name.endswith("/")


def _mismatch(name: str, where: Path, what: str) -> HawqError:
    return HawqError(f"{name} in bundle {where} {what}: the file was changed or damaged after packaging; "
                     "rebuild the bundle with hawq-onnx package")


def _read_folder(path: Path) -> Bundle:
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise HawqError(f"{path} has no {MANIFEST_NAME}: not a hawq-onnx bundle folder")
    manifest = _parse_manifest(manifest_path.read_bytes(), path)
    listed = manifest["files"]
    present = {p.name for p in path.iterdir() if not _ignored(p.name)} - {MANIFEST_NAME}
    for name, entry in sorted(listed.items()):
        f = path / name
        if not f.is_file():
            raise HawqError(f"bundle {path} is missing {name}, listed in its manifest; rebuild the bundle")
        if f.stat().st_size != entry["bytes"]:
            raise _mismatch(name, path, f"is {f.stat().st_size} bytes, the manifest says {entry['bytes']}")
        if sha256_file(f) != entry["sha256"]:
            raise _mismatch(name, path, "does not match its sha256 in the manifest")
    extra = sorted(present - set(listed))
    if extra:
        raise HawqError(f"bundle {path} holds {', '.join(extra)}, not listed in its manifest; "
                        "remove it or rebuild the bundle")
    return Bundle(path, "folder", manifest, {n: e["bytes"] for n, e in listed.items()})


def _read_zip(path: Path) -> Bundle:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist() if not _ignored(i.filename)}
            if MANIFEST_NAME not in infos:
                raise HawqError(f"{path} has no {MANIFEST_NAME} at its top level: not a hawq-onnx bundle archive")
            manifest = _parse_manifest(zf.read(MANIFEST_NAME), path)
            listed = manifest["files"]
            for name, entry in sorted(listed.items()):
                if name not in infos:
                    raise HawqError(f"bundle {path} is missing {name}, listed in its manifest; rebuild the bundle")
                if infos[name].file_size != entry["bytes"]:
                    raise _mismatch(name, path, f"is {infos[name].file_size} bytes, the manifest says {entry['bytes']}")
                h = hashlib.sha256()
                with zf.open(name) as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                if h.hexdigest() != entry["sha256"]:
                    raise _mismatch(name, path, "does not match its sha256 in the manifest")
            extra = sorted(set(infos) - set(listed) - {MANIFEST_NAME})
            if extra:
                raise HawqError(f"bundle {path} holds {', '.join(extra)}, not listed in its manifest; "
                                "rebuild the bundle")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise HawqError(f"{path} is a damaged zip archive ({exc}); rebuild the bundle") from None
    return Bundle(path, "zip", manifest, {n: e["bytes"] for n, e in listed.items()})


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Open a bundle folder or .zip and verify every file against the manifest's sha256."""
    p = Path(path)
    if not p.exists():
        raise HawqError(f"bundle {p} does not exist")
    if p.is_dir():
        return _read_folder(p)
    if zipfile.is_zipfile(p):
        return _read_zip(p)
    raise HawqError(f"{p} is neither a bundle folder nor a .zip bundle archive")


def is_bundle(path: str | os.PathLike) -> bool:
    """Cheap test for ``inspect``: a folder with a manifest.json, or a .zip file (verified on read)."""
    p = Path(path)
    return (p.is_dir() and (p / MANIFEST_NAME).is_file()) or (p.is_file() and zipfile.is_zipfile(p))


# --- text rendering -------------------------------------------------------------------------

def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _layer_table(layers: list[dict[str, Any]]) -> list[str]:
    head = ("layer", "op", "weight shape", "params", "storage", "w bits", "a bits", "bytes")
    rows = []
    for r in layers:
        rows.append((str(r.get("layer", "?")), str(r.get("op_type", "?")),
                     "x".join(str(d) for d in r.get("shape") or []),
                     f"{r['params']:,}" if isinstance(r.get("params"), int) else "?",
                     str(r.get("storage", "?")), str(r.get("w_bits", "?")),
                     str(r["a_bits"]) if r.get("a_bits") else "float",
                     f"{r['bytes']:,}" if isinstance(r.get("bytes"), int) else "?"))
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 2, 4) else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*head), "  ".join("-" * w for w in widths)] + [fmt.format(*row) for row in rows]


def format_manifest(manifest: dict[str, Any]) -> str:
    """A bundle's manifest for the terminal: files, I/O, preprocessing, checks, figures, layers."""
    lines = [f"hawq-onnx bundle (format {manifest.get('format_version')}), "
             f"from {manifest.get('source', {}).get('name', '?')}"]
    model = manifest.get("model", {})
    lines.append(f"  opset {model.get('opset')}, IR {model.get('ir_version')}")
    for kind in ("inputs", "outputs"):
        for item in model.get(kind, []):
            lines.append(f"  {kind[:-1]} {item.get('name')}: {item.get('type')} {_shape(item.get('shape', []))}")
    pre = manifest.get("preprocessing")
    if pre:
        lines.append(f"  normalise: (x - mean) / std, mean {pre.get('mean')}, std {pre.get('std')} "
                     f"(from {pre.get('source')})")
    classes = manifest.get("class_names")
    if classes:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        lines.append(f"  classes ({len(classes)}): {shown}")
    lines.append("")
    lines.append("files:")
    files = manifest.get("files", {})
    width = max((len(n) for n in files), default=4)
    for name, entry in sorted(files.items()):
        lines.append(f"  {name:<{width}}  {entry.get('bytes', 0):>12,} bytes  sha256 {entry.get('sha256', '')[:16]}...")
    conv = manifest.get("conversion", {})
    if conv:
        lines.append("")
        lines.append(f"ORT conversion: {conv.get('tool')} style {conv.get('optimization_style')}, "
                     f"level {conv.get('optimization_level')}, target {conv.get('target_platform')}, "
                     f"type reduction {'on' if conv.get('type_reduction') else 'off'}")
        ops = conv.get("operators", [])
        lines.append(f"  operators ({len(ops)}): " + ", ".join(ops))
    check = manifest.get("check", {})
    if check:
        verdict = "bitwise identical" if check.get("bitwise_equal") else "DIFFERENT"
        lines.append(f"check: .ort vs .onnx on a seeded random input: {verdict}; "
                     f"max |diff| vs the unoptimized .onnx {check.get('max_abs_diff_vs_unoptimized_onnx')}")
    validation = manifest.get("validation")
    if validation:
        lines.append("")
        context = ", ".join(f"{k} {validation[k]}" for k in ("data", "max_drop", "gate_passed") if k in validation)
        lines.append(f"validation figures (from {validation.get('source')}{'; ' + context if context else ''}):")
        for category in ("accuracy", "latency", "size"):
            for key, value in sorted(validation.get(category, {}).items()):
                lines.append(f"  {category:<8}  {key} = {value}")
    versions = manifest.get("versions", {})
    if versions:
        lines.append("")
        lines.append("built with " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    layers = manifest.get("layers", [])
    lines.append("")
    lines.append(f"layers ({len(layers)}):")
    lines.extend("  " + line for line in _layer_table(layers))
    return "\n".join(lines)
