"""The files of a bundle (a folder or a .zip), listed and read without trusting the bundle.

A bundle arrives from elsewhere (a download, a colleague, a CI artefact), so nothing it says is
believed before it is checked: every member must be a plain file with a plain name, nothing is
followed out of the bundle (no symbolic links, no paths), and no read ever returns more than a
cap fixed before reading, since a zip's sizes are only what its headers claim.

The caps: ``manifest.json`` is metadata (a few hundred bytes a layer), so 16 MiB leaves room for
tens of thousands of layers; a member is at most 2 GiB, the most a self-contained ``.onnx``
(protobuf) or ``.ort`` (flatbuffers) file can hold, and ``package`` refuses external data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hawq_onnx.errors import HawqError

MANIFEST_NAME = "manifest.json"
MANIFEST_MAX_BYTES = 16 << 20
MEMBER_MAX_BYTES = 2 << 30
_CHUNK = 1 << 20
# A plain, portable file name: no separator, drive, root, "..", control character or hidden file,
# and no trailing "." (Windows drops it, so "model.onnx." would land on "model.onnx").
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._+-]{0,253}[A-Za-z0-9_+-])?")
# Windows opens these as devices whatever the extension ("NUL.onnx" is the null device).
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
# Never block on a FIFO swapped in after the listing, never follow a link swapped in either.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
# What a zip tool writes for plain files; other methods reach far higher ratios (bzip2: millions to one).
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHLLLHH")
_ZIP_DATA_DESCRIPTOR = 0x08
_ZIP_ENCRYPTED = 0x01


def check_name(name: object, where: Path, what: str = "member") -> str:
    """Refuse any name that is not a plain file name of the bundle's own folder."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) \
            or name.split(".")[0].upper() in _WINDOWS_DEVICES:
        raise HawqError(f"bundle {where}: {what} {name!r} is not a plain file name (letters, digits and . _ + -, "
                        "not starting or ending with '.', no device name such as CON); refused as damaged or hostile")
    return name


def size_cap(name: str) -> int:
    """The most bytes ``name`` may hold in any bundle (read at call time, so tests can lower it)."""
    return MANIFEST_MAX_BYTES if name == MANIFEST_NAME else MEMBER_MAX_BYTES


def check_size(name: str, size: int, where: Path) -> None:
    """Before any read: a member larger than its cap is refused on what it declares."""
    if size > size_cap(name):
        raise HawqError(f"bundle {where}: {name} is {size:,} bytes, over the {size_cap(name):,}-byte limit for it; "
                        "refused as damaged or hostile (a zip bomb?)")


def read_capped(f: BinaryIO, cap: int, where: Path, name: str) -> Iterator[bytes]:
    """The chunks of ``f``, refused once more than ``cap`` bytes have come: declared sizes can lie."""
    total = 0
    while chunk := f.read(_CHUNK):
        total += len(chunk)
        if total > cap:
            raise HawqError(f"bundle {where}: {name} holds more than the {cap:,} bytes expected of it; "
                            "refused as changed, damaged or hostile (a zip bomb?)")
        yield chunk


class FolderMembers:
    """A bundle folder: regular files at its top level, nothing else."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def sizes(self) -> dict[str, int]:
        """Every entry's name and size; links are never followed, and anything but a regular file is refused."""
        sizes = {}
        with os.scandir(self.path) as entries:
            for entry in entries:
                name = check_name(entry.name, self.path)
                if not entry.is_file(follow_symlinks=False):
                    what = "a symbolic link" if entry.is_symlink() else "not a regular file"
                    raise HawqError(f"bundle {self.path}: {name} is {what}; a bundle holds plain files only")
                sizes[name] = entry.stat(follow_symlinks=False).st_size
        return sizes

    def chunks(self, name: str, cap: int) -> Iterator[bytes]:
        try:
            fd = os.open(self.path / name, _OPEN_FLAGS)
        except OSError as exc:  # ELOOP: a link put there since the listing, caught by O_NOFOLLOW
            what = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
            raise HawqError(f"bundle {self.path}: {name} {what}") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise HawqError(f"bundle {self.path}: {name} is not a regular file; a bundle holds plain files only")
            yield from read_capped(f, cap, self.path, name)


class ZipMembers:
    """A bundle archive: one entry per file, at its top level, stored or deflated, headers that agree."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, raw: BinaryIO) -> None:
        self.path, self.zf, self.raw = path, zf, raw
        self.infos: dict[str, zipfile.ZipInfo] = {}

    def sizes(self) -> dict[str, int]:
        """Every entry's name and declared size; duplicates (case-blind, as extractors on Windows and
        macOS see them) and anything but a plain file are refused."""
        seen: set[str] = set()
        for info in self.zf.infolist():
            name = check_name(info.orig_filename, self.path)  # before zipfile cut it at a NUL or turned "\" into "/"
            if name.casefold() in seen:
                raise HawqError(f"bundle {self.path} holds {name} twice (names that differ only in case "
                                "count as one); refused as damaged or hostile")
            seen.add(name.casefold())
            self._check_entry(info)
            self.infos[name] = info
        return {name: info.file_size for name, info in self.infos.items()}

    def _check_entry(self, info: zipfile.ZipInfo) -> None:
        name, mode = info.orig_filename, info.external_attr >> 16
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG) or info.external_attr & 0x10:  # 0x10: MS-DOS directory
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise HawqError(f"bundle {self.path}: {name} is {what}; a bundle holds plain files only")
        if info.flag_bits & _ZIP_ENCRYPTED:
            raise HawqError(f"bundle {self.path}: {name} is encrypted; hawq-onnx bundles are not")
        if info.compress_type not in _ZIP_METHODS:
            raise HawqError(f"bundle {self.path}: {name} uses zip compression method {info.compress_type}; "
                            "a bundle's entries are stored or deflated")
        self._check_local_header(info)

    def _check_local_header(self, info: zipfile.ZipInfo) -> None:
        """The sizes zipfile believes come from the central directory; a streaming extractor believes
        each entry's own header. An archive whose two headers disagree is read differently by each."""
        self.raw.seek(info.header_offset)
        sig, _, flags, method, _, _, crc, csize, usize, _, _ = \
            _ZIP_LOCAL_HEADER.unpack(self.raw.read(_ZIP_LOCAL_HEADER.size).ljust(_ZIP_LOCAL_HEADER.size, b"\0"))
        if sig != b"PK\x03\x04" or method != info.compress_type:
            raise HawqError(f"bundle {self.path}: the entry header of {info.orig_filename} is damaged")
        if flags & _ZIP_DATA_DESCRIPTOR or 0xFFFFFFFF in (csize, usize):
            return  # sizes kept after the data or in a zip64 field: the central directory's are the only ones
        if (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
            raise HawqError(f"bundle {self.path}: the two zip headers of {info.orig_filename} disagree on its size or "
                            f"checksum ({usize:,} or {info.file_size:,} bytes); refused as damaged or hostile")

    def chunks(self, name: str, cap: int) -> Iterator[bytes]:
        with self.zf.open(self.infos[name]) as f:
            yield from read_capped(f, cap, self.path, name)


@contextlib.contextmanager
def open_members(path: Path, kind: str) -> Iterator[FolderMembers | ZipMembers]:
    """The members of the bundle at ``path``; any read failure inside becomes a one-line HawqError."""
    try:
        if kind == "folder":
            yield FolderMembers(path)
            return
        with open(path, "rb") as raw, zipfile.ZipFile(path) as zf:
            yield ZipMembers(path, zf, raw)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise HawqError(f"{path} is a damaged zip archive ({exc}); rebuild the bundle") from None
    except OSError as exc:
        raise HawqError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
