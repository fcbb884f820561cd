"""Atomic writes and input protection for every file hawq-onnx produces.

An output is written to a temporary file in the destination folder and renamed over the target,
so an interrupted run leaves the old file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from hawq_onnx.errors import HawqError


def check_output_path(out: str | os.PathLike, inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Refuse an output that would overwrite an input or cannot be written."""
    out_path = Path(out)
    for item in inputs:
        if item is None:
            continue
        p = Path(item)
        if p.exists() and out_path.exists() and os.path.samefile(p, out_path):
            raise HawqError(f"output {out_path} is also an input; choose another output path")
        if p.resolve() == out_path.resolve():
            raise HawqError(f"output {out_path} is also an input; choose another output path")
    if out_path.exists() and out_path.is_dir():
        raise HawqError(f"output {out_path} is a folder; give a file path")
    parent = out_path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HawqError(f"cannot create output folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise HawqError(f"output folder {parent} is not writable")
    return out_path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HawqError(f"cannot create output folder {parent}: {exc.strerror}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; an output should get the usual permissions (0666 less the umask).
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


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


def read_json(path: str | os.PathLike, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise HawqError(f"{what} file {p} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HawqError(f"{what} file {p} is not valid JSON ({exc.__class__.__name__}: {exc})") from None
