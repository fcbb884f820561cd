"""Atomic writes and input protection for every file hawq-onnx produces.

An output is written to a temporary file in the destination folder and renamed over the target,
so an interrupted run leaves the old file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from hawq_onnx.errors import HawqError


def check_output_path(out: str | os.PathLike, inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Refuse an output that would overwrite an input or cannot be written, before any work.

    Nothing is created here (a run that fails later leaves no empty folder behind): the nearest
    existing folder on the way to ``out`` must take a new file, which is tried for real, since
    permission bits say nothing for root or on read-only and virtual file systems.
    """
    out_path = Path(out)
    for item in inputs:
        if item is None:
            continue
        p = Path(item)
        if p.exists() and out_path.exists() and os.path.samefile(p, out_path):
            raise HawqError(f"output {out_path} is also an input; choose another output path")
        if p.resolve() == out_path.resolve():
            raise HawqError(f"output {out_path} is also an input; choose another output path")
        if p.is_dir() and out_path.resolve().is_relative_to(p.resolve()):
            raise HawqError(f"output {out_path} is inside the input folder {p}; choose another output path")
    if out_path.is_dir():
        raise HawqError(f"output {out_path} is a folder; give a file path")
    if out_path.exists() and not out_path.is_file():
        raise HawqError(f"output {out_path} exists and is not a regular file (a device, pipe or socket); "
                        "give a file path")
    check_writable_folder(out_path.absolute().parent)
    return out_path


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Check that files can be created in ``folder`` or, where it does not exist yet, in its
    nearest existing ancestor (where the missing folders will be made)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise HawqError(f"cannot create output folder {folder}: {existing} is a file; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hawq-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HawqError(f"output folder {existing} is not writable ({exc.strerror or exc.__class__.__name__}); "
                        "choose another path") from None
    return folder


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Failures of the file system, not of hawq-onnx: reported as bad output paths (exit 2).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EXDEV}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    if target.is_dir():
        raise HawqError(f"output {target} is a folder; give a file path")
    if target.exists() and not target.is_file():
        raise HawqError(f"output {target} exists and is not a regular file (a device, pipe or socket); "
                        "give a file path")
    # Beside the path as given: a symlinked output is replaced, its target left alone, and the
    # rename never crosses file systems. The name carries our pid, so that a later run can tell
    # the leftovers of a killed run (SIGKILL skips every cleanup) from a live run's files.
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}-{os.getpid()}{TEMP_MARK}", suffix=".tmp",
                                   dir=parent)
    except OSError as exc:
        raise HawqError(f"cannot write {target}: {exc.strerror or exc.__class__.__name__} "
                        f"({parent}); choose another output path") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; an output should get the usual permissions (0666 less the umask).
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise HawqError(f"cannot write {target}: {exc.strerror}; nothing was written there") from None
        raise


TEMP_MARK = ".hawq-"
# A pid means something only on the host that made it (a folder may be shared over the network).
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0])[:32] or "host"
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)" + re.escape(TEMP_MARK) + r"[^/]*\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process, or a pid we cannot judge: leave its files alone
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files ``atomic_path`` left in ``folder`` when its process was killed
    (made on this host by a pid that no longer runs); return what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if (m and m["host"] == _HOST and entry.is_file(follow_symlinks=False)
                and not _alive(int(m["pid"]))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Deterministic JSON (sorted keys, fixed indent) so equal inputs give equal bytes."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_with(target: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Atomically produce ``target`` with a writer that takes a path (torch.save, savefig...)."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file hawq-onnx could have written: NaN, Infinity and out-of-range numbers are refused
    here, as ``write_json`` never writes them (a value copied on would fail there, far later)."""
    p = Path(path)
    if not p.is_file():
        raise HawqError(f"{what} file {p} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"), parse_float=_finite_float, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise HawqError(f"{what} file {p} is not valid JSON ({exc.__class__.__name__}: {detail})") from None
