"""Reading a deployment bundle (a folder or a .zip) and checking it is the one that was built.

A bundle, written by :mod:`hawq_onnx.deploy.package`, holds the model in ORT format (``.ort``),
the required-operators configuration for a minimal ONNX Runtime build, ``manifest.json``, which
lists every other file with its size and sha256, and in a full bundle the ``.onnx`` model too. Reading a bundle
verifies each listed file against the manifest, so a bundle that was edited, truncated or
half-copied is refused instead of deployed. A bundle holds exactly those files: how its members
are listed and read without trusting it (names, links, sizes, zip headers) is in
:mod:`hawq_onnx.deploy.bundle_members`.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hawq_onnx.deploy.bundle_members import (
    MANIFEST_NAME,
    FolderMembers,
    ZipMembers,
    check_name,
    check_size,
    open_members,
    size_cap,
)
from hawq_onnx.errors import HawqError

BUNDLE_FORMAT = "hawq-onnx-bundle"
BUNDLE_FORMAT_VERSION = 1
# Roles of the files a manifest lists (manifest["files"][name]["role"]).
ROLE_ONNX = "onnx"
ROLE_ORT = "ort"
ROLE_OPERATORS_CONFIG = "required_operators_config"
# No allow-list of extra members: ``package`` writes exactly the manifest's files and manifest.json,
# so anything else in a bundle (a hidden file, __MACOSX/) is refused rather than skipped.


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
        """The file's bytes, checked again: the bundle may have changed since it was read."""
        if name not in self.files:
            raise HawqError(f"bundle {self.path} holds no file {name!r}")
        entry = self.manifest["files"][name]
        with open_members(self.path, _kind(self.path)) as members:
            if name not in members.sizes():
                raise HawqError(f"bundle {self.path} is missing {name}, listed in its manifest; rebuild the bundle")
            data = b"".join(members.chunks(name, entry["bytes"]))
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise _mismatch(name, self.path, "does not match its sha256 in the manifest")
        return data


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON readers disagree on which of two equal keys wins; a manifest with one is not trusted."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(f"duplicate key {key[:60]!r}")
        seen.add(key)
    return dict(pairs)


def _load_json(data: bytes, where: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        reason = str(exc)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        reason = exc.__class__.__name__
    raise HawqError(f"{MANIFEST_NAME} in {where} is not valid JSON ({reason}); the bundle is damaged")


def _check_entry(name: str, entry: Any, where: Path) -> None:
    check_name(name, where, "the manifest's file")
    size = entry.get("bytes") if isinstance(entry, dict) else None
    if name == MANIFEST_NAME or not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
            or not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= size_cap(name):
        raise HawqError(f"{MANIFEST_NAME} in {where} has a malformed entry for {name!r}; the bundle is damaged")


def _parse_manifest(data: bytes, where: Path) -> dict[str, Any]:
    manifest = _load_json(data, where)
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
        _check_entry(name, entry, where)
    return manifest


def _mismatch(name: str, where: Path, what: str) -> HawqError:
    return HawqError(f"{name} in bundle {where} {what}: the file was changed or damaged after packaging; "
                     "rebuild the bundle with hawq-onnx package")


def _check_membership(sizes: dict[str, int], listed: dict[str, Any], where: Path) -> None:
    """A bundle holds exactly its manifest's files and the manifest: nothing skipped, nothing extra."""
    missing = sorted(set(listed) - set(sizes))
    if missing:
        raise HawqError(f"bundle {where} is missing {missing[0]}, listed in its manifest; rebuild the bundle")
    extra = sorted(set(sizes) - set(listed) - {MANIFEST_NAME})
    if extra:
        raise HawqError(f"bundle {where} holds {', '.join(extra)}, not listed in its manifest; "
                        "remove it or rebuild the bundle")


def _verify(members: FolderMembers | ZipMembers, where: Path, kind: str) -> Bundle:
    sizes = members.sizes()
    if MANIFEST_NAME not in sizes:
        raise HawqError(f"{where} has no {MANIFEST_NAME} at its top level: not a hawq-onnx bundle")
    for name, size in sizes.items():
        check_size(name, size, where)
    manifest = _parse_manifest(b"".join(members.chunks(MANIFEST_NAME, size_cap(MANIFEST_NAME))), where)
    listed = manifest["files"]
    _check_membership(sizes, listed, where)
    for name, entry in sorted(listed.items()):
        if sizes[name] != entry["bytes"]:
            raise _mismatch(name, where, f"is {sizes[name]} bytes, the manifest says {entry['bytes']}")
        h = hashlib.sha256()
        for chunk in members.chunks(name, entry["bytes"]):
            h.update(chunk)
        if h.hexdigest() != entry["sha256"]:
            raise _mismatch(name, where, "does not match its sha256 in the manifest")
    return Bundle(where, kind, manifest, {n: e["bytes"] for n, e in listed.items()})


def _kind(p: Path) -> str:
    # A link could be pointed elsewhere between verifying the bundle and using it: refuse it outright.
    if p.is_symlink():
        raise HawqError(f"bundle {p} is a symbolic link; give the path of the bundle itself")
    if not p.exists():
        raise HawqError(f"bundle {p} does not exist")
    if p.is_dir():
        return "folder"
    if p.is_file() and zipfile.is_zipfile(p):
        return "zip"
    raise HawqError(f"{p} is neither a bundle folder nor a .zip bundle archive")


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Open a bundle folder or .zip and verify every file against the manifest's sha256."""
    p = Path(path)
    kind = _kind(p)
    with open_members(p, kind) as members:
        return _verify(members, p, kind)


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
    contents = f", {manifest['contents']}" if isinstance(manifest.get("contents"), str) else ""
    lines = [f"hawq-onnx bundle (format {manifest.get('format_version')}{contents}), "
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
