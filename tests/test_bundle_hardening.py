"""Reading a bundle nobody should trust: names, membership, links, sizes and zip headers.

Most bundles here are made by hand (three small files and a manifest with their true sha256), so
each hostile variant differs from a bundle that verifies in one way only; one genuine bundle from
``build_bundle`` checks that the rules refuse nothing hawq-onnx writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest

from hawq_onnx.deploy.bundle import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, read_bundle
from hawq_onnx.errors import HawqError

FILES = {"model.onnx": b"onnx model bytes", "model.ort": b"ort model bytes",
         "model.required_operators.config": b"ai.onnx;21;Conv\n"}
ROLES = {"model.onnx": "onnx", "model.ort": "ort", "model.required_operators.config": "required_operators_config"}
MiB = 1 << 20
# Names that point outside the bundle, or at something else than a plain file, on some system.
PATH_NAMES = ["../x", "..\\x", "../../x", "/abs", "C:x", "C:\\x", "a/b", "a\\b", "\\\\server\\share"]
# Names that are no paths but no plain file names either: control characters, hidden, special, too long,
# and those Windows changes (a trailing dot dropped) or opens as a device.
ODD_NAMES = ["a\x00b", "a\nb", "a\x1b[2Jb", ".hidden", "", ".", "..", "x" * 300, "model.onnx.", "NUL.onnx", "con"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(files: dict[str, bytes]) -> bytes:
    entries = {n: {"role": ROLES.get(n, "extra"), "bytes": len(d), "sha256": _sha(d)} for n, d in files.items()}
    return json.dumps({"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "files": entries}).encode()


def _folder(root: Path, files: dict[str, bytes] = FILES, manifest: bytes | None = None) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "manifest.json").write_bytes(_manifest(files) if manifest is None else manifest)
    return root


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _zip_bundle(path: Path, files: dict[str, bytes] = FILES, extra=()) -> Path:
    return _zip(path, [*files.items(), ("manifest.json", _manifest(files)), *extra])


def _refused(path: Path, pattern: str) -> str:
    with pytest.raises(HawqError, match=pattern) as info:
        read_bundle(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _posix_creatable(name: str) -> bool:
    return "/" not in name and "\0" not in name and name not in ("", ".", "..") and len(name) < 256


# --- raw zip headers, for archives zipfile will not write -------------------------------------

_CENTRAL = {"flags": (8, "H"), "method": (10, "H"), "crc": (16, "L"), "usize": (24, "L")}
_LOCAL = {"flags": (6, "H"), "method": (8, "H"), "crc": (14, "L"), "usize": (22, "L")}


def _patch_entry(path: Path, name: str, central: dict[str, int], local: dict[str, int] | None = None) -> None:
    """Overwrite fields of ``name``'s central-directory record and of its local header."""
    data, raw = bytearray(path.read_bytes()), name.encode()
    at = data.find(b"PK\x01\x02")
    while data[at + 46:at + 46 + len(raw)] != raw or struct.unpack_from("<H", data, at + 28)[0] != len(raw):
        at = data.find(b"PK\x01\x02", at + 1)
        assert at >= 0, name
    local_at = struct.unpack_from("<L", data, at + 42)[0]
    for fields, base, values in ((_CENTRAL, at, central), (_LOCAL, local_at, local or {})):
        for key, value in values.items():
            offset, fmt = fields[key]
            struct.pack_into("<" + fmt, data, base + offset, value)
    path.write_bytes(bytes(data))


# --- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PATH_NAMES + ["a\nb", "a\x1b[2Jb"])
def test_zip_member_with_a_path_or_odd_name_is_refused(tmp_path, name):
    b = _zip_bundle(tmp_path / "b.zip", extra=[(name, b"payload")])
    _refused(b, rf"^bundle {re.escape(str(b))}: member {re.escape(repr(name))} is not a plain file name")


@pytest.mark.parametrize("name", ["..\\evil.bat", "C:x", "a\\b", "a\nb", "a\x1b[2Jb", "\\\\server\\share"])
def test_folder_member_with_a_path_or_odd_name_is_refused(tmp_path, name):
    b = _folder(tmp_path / "b")
    (b / name).write_bytes(b"payload")
    _refused(b, rf"^bundle {re.escape(str(b))}: member {re.escape(repr(name))} is not a plain file name")


@pytest.mark.parametrize("kind", ["folder", "zip", "manifest only"])
@pytest.mark.parametrize("name", PATH_NAMES + ODD_NAMES)
def test_manifest_naming_a_path_or_odd_name_is_refused(tmp_path, name, kind):
    """The manifest lists the name with its true checksum, and the bundle holds that file where the system
    allows (then the member or the manifest is refused, whichever is read first) or not at all."""
    files = {**FILES, name: b"outside"}
    if kind == "zip":
        entries = [(n, d) for n, d in files.items() if "\0" not in n and n not in ("", ".", "..")]
        b = _zip(tmp_path / "b.zip", entries + [("manifest.json", _manifest(files))])
    else:
        held = {n: d for n, d in files.items() if n in FILES or (kind == "folder" and _posix_creatable(n))}
        b = _folder(tmp_path / "b", held, _manifest(files))
    who = "the manifest's file" if kind == "manifest only" else "(member|the manifest's file)"
    _refused(b, rf"^bundle {re.escape(str(b))}: {who} {re.escape(repr(name))} is not a plain file name")


# --- membership: exactly the manifest's files --------------------------------------------------

@pytest.mark.parametrize("name", [".x", ".DS_Store", "._model.onnx", ".manifest.json"])
def test_hidden_folder_member_is_refused_not_skipped(tmp_path, name):
    b = _folder(tmp_path / "b")
    (b / name).write_bytes(b"not in the manifest")
    _refused(b, re.escape(repr(name)) + " is not a plain file name")


@pytest.mark.parametrize("extra", [[(".x", b"x")], [("__MACOSX/._model.onnx", b"x")], [("docs/", b"")],
                                   [("sub/", b""), ("sub/model.onnx", FILES["model.onnx"])]])
def test_zip_entry_outside_the_manifest_is_refused_not_skipped(tmp_path, extra):
    b = _zip_bundle(tmp_path / "b.zip", extra=extra)
    _refused(b, re.escape(repr(extra[0][0])) + " is not a plain file name")


# --- links and special files --------------------------------------------------------------------

def test_symlinked_folder_member_is_refused(tmp_path):
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(FILES["model.onnx"])
    b = _folder(tmp_path / "b")
    (b / "model.onnx").unlink()
    (b / "model.onnx").symlink_to(outside)  # same bytes, so only the link itself is wrong
    _refused(b, "model.onnx is a symbolic link")


def test_symlinked_manifest_is_refused(tmp_path):
    b = _folder(tmp_path / "b")
    (tmp_path / "manifest.json").write_bytes((b / "manifest.json").read_bytes())
    (b / "manifest.json").unlink()
    (b / "manifest.json").symlink_to(tmp_path / "manifest.json")
    _refused(b, "manifest.json is a symbolic link")


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_symlinked_bundle_is_refused(tmp_path, kind):
    real = _folder(tmp_path / "real") if kind == "folder" else _zip_bundle(tmp_path / "real.zip")
    link = tmp_path / ("link" if kind == "folder" else "link.zip")
    link.symlink_to(real)
    _refused(link, "is a symbolic link")
    read_bundle(real)


@pytest.mark.parametrize("special", ["fifo", "folder"])
def test_folder_member_that_is_no_regular_file_is_refused(tmp_path, special):
    b = _folder(tmp_path / "b")
    (b / "model.onnx").unlink()
    if special == "fifo":
        os.mkfifo(b / "model.onnx")  # opening it would block forever
    else:
        (b / "model.onnx").mkdir()
    _refused(b, "model.onnx is not a regular file")


def test_member_swapped_for_a_link_after_reading_is_refused(tmp_path):
    b = _folder(tmp_path / "b")
    bundle = read_bundle(b)
    assert bundle.read_bytes("model.onnx") == FILES["model.onnx"]
    (tmp_path / "evil").write_bytes(b"evil model bytes")
    (b / "model.onnx").unlink()
    (b / "model.onnx").symlink_to(tmp_path / "evil")
    with pytest.raises(HawqError, match="model.onnx is a symbolic link"):
        bundle.read_bytes("model.onnx")


@pytest.mark.parametrize("mode, what", [(stat.S_IFLNK | 0o777, "a symbolic link"),
                                        (stat.S_IFDIR | 0o755, "not a regular file"),
                                        (stat.S_IFCHR | 0o644, "not a regular file")])
def test_zip_entry_that_is_no_regular_file_is_refused(tmp_path, mode, what):
    """`unzip` recreates such an entry as a link (to the path it holds) or a special file."""
    target = b"/etc/passwd"
    info = zipfile.ZipInfo("model.onnx")
    info.external_attr = mode << 16
    files = {**FILES, "model.onnx": target}
    b = _zip(tmp_path / "b.zip", [(info, target), ("model.ort", FILES["model.ort"]),
                                  ("model.required_operators.config", FILES["model.required_operators.config"]),
                                  ("manifest.json", _manifest(files))])
    _refused(b, f"model.onnx is {what}")


# --- duplicates ---------------------------------------------------------------------------------

@pytest.mark.parametrize("first, second", [("model.onnx", "model.onnx"), ("manifest.json", "manifest.json"),
                                           ("model.onnx", "MODEL.ONNX")])
def test_duplicate_zip_entries_are_refused(tmp_path, first, second):
    """zipfile reads the last of two equal names, other extractors the first: the bundle is refused."""
    evil = _manifest({"model.onnx": b"evil"}) if first == "manifest.json" else b"evil"
    good = _manifest(FILES) if second == "manifest.json" else FILES["model.onnx"]
    rest = [(n, d) for n, d in [*FILES.items(), ("manifest.json", _manifest(FILES))] if n != first]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning: the point of the test
        b = _zip(tmp_path / "b.zip", [(first, evil), *rest, (second, good)])
    _refused(b, f"holds {re.escape(second)} twice")


# --- the manifest's JSON ------------------------------------------------------------------------

def test_manifest_with_a_duplicate_key_is_refused(tmp_path):
    """Python's json keeps the last of two equal keys, other readers the first."""
    entry = {"role": "onnx", "bytes": len(FILES["model.onnx"]), "sha256": _sha(FILES["model.onnx"])}
    evil = {"role": "onnx", "bytes": 4, "sha256": _sha(b"evil")}
    text = _manifest(FILES).decode().replace('"files": {', '"files": {"model.onnx": ' + json.dumps(evil) + ", ", 1)
    assert json.loads(text)["files"]["model.onnx"] == entry
    b = _folder(tmp_path / "b", manifest=text.encode())
    _refused(b, r"not valid JSON \(duplicate key 'model.onnx'\)")


def test_deeply_nested_manifest_is_refused(tmp_path):
    b = _folder(tmp_path / "b", manifest=b"[" * 200_000)
    _refused(b, r"manifest.json in .* is not valid JSON")


# --- sizes: caps before reading, and headers that lie -------------------------------------------

def _spaces_manifest_zip(path: Path, padding: int) -> bytes:
    """A bundle whose manifest.json is valid JSON followed by ``padding`` spaces (deflate: ~1000:1)."""
    manifest = _manifest(FILES)
    info = zipfile.ZipInfo("manifest.json")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
        with zf.open(info, "w") as f:  # streamed: the test never holds the inflated manifest
            f.write(manifest)
            for _ in range(padding // MiB):
                f.write(b" " * MiB)
    return manifest


def test_manifest_bomb_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr("hawq_onnx.deploy.bundle_members.MANIFEST_MAX_BYTES", MiB)
    b = tmp_path / "bomb.zip"
    _spaces_manifest_zip(b, 50 * MiB)
    assert b.stat().st_size < 200_000
    tracemalloc.start()
    try:
        _refused(b, r"manifest.json is 52,\d{3},\d{3} bytes, over the 1,048,576-byte limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


def test_member_bomb_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr("hawq_onnx.deploy.bundle_members.MEMBER_MAX_BYTES", MiB)
    b = _zip_bundle(tmp_path / "bomb.zip", {**FILES, "model.onnx": bytes(5 * MiB)})
    _refused(b, "model.onnx is 5,242,880 bytes, over the 1,048,576-byte limit")


def test_zip_whose_central_header_understates_a_size_is_refused(tmp_path):
    """The central directory says manifest.json is the JSON alone (with its CRC); the entry's own header
    and data hold 50 MB more. zipfile would read the short version, a streaming extractor the long one."""
    b = tmp_path / "liar.zip"
    manifest = _spaces_manifest_zip(b, 50 * MiB)
    _patch_entry(b, "manifest.json", central={"usize": len(manifest), "crc": zlib.crc32(manifest)})
    with zipfile.ZipFile(b) as zf:
        assert zf.read("manifest.json") == manifest  # what trusting the central directory gives
    _refused(b, r"the two zip headers of manifest.json disagree on its size or checksum \(52,\d{3},\d{3} or")


def test_encrypted_or_exotic_zip_entry_is_refused(tmp_path):
    b = _zip_bundle(tmp_path / "enc.zip")
    _patch_entry(b, "model.onnx", central={"flags": 1}, local={"flags": 1})
    _refused(b, "model.onnx is encrypted")
    b = tmp_path / "bz2.zip"
    with zipfile.ZipFile(b, "w", compression=zipfile.ZIP_BZIP2) as zf:  # ratios far beyond deflate's
        for name, data in [*FILES.items(), ("manifest.json", _manifest(FILES))]:
            zf.writestr(name, data)
    _refused(b, "uses zip compression method 12")


# --- what hawq-onnx writes still reads ----------------------------------------------------------

@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict[str, Path]:
    from hawq_onnx.deploy.package import build_bundle
    from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
    from hawq_onnx.sources.model import load_model

    root = tmp_path_factory.mktemp("genuine")
    loaded = load_model("digits-cnn")
    save_onnx(float_onnx(loaded.module, loaded.spec.input_shape), root / "float.onnx")
    return {"folder": build_bundle(root / "float.onnx", root / "b").path,
            "zip": build_bundle(root / "float.onnx", root / "b.zip").path}


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_genuine_and_hand_made_bundles_read_and_verify(genuine, tmp_path, kind):
    bundle = read_bundle(genuine[kind])
    assert set(bundle.files) == {"model.ort", "model.required_operators.config"}  # a minimal bundle
    for name, size in bundle.files.items():
        data = bundle.read_bytes(name)
        assert len(data) == size and _sha(data) == bundle.manifest["files"][name]["sha256"]
    hand_made = _folder(tmp_path / "h") if kind == "folder" else _zip_bundle(tmp_path / "h.zip")
    assert read_bundle(hand_made).read_bytes("model.ort") == FILES["model.ort"]


# --- the command line ---------------------------------------------------------------------------

def test_cli_inspect_of_a_hostile_bundle_exits_2_with_one_line(tmp_path):
    b = _zip_bundle(tmp_path / "b.zip", extra=[("../../x", b"payload")])
    run = subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "inspect", str(b)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'../../x'" in lines[0], run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
