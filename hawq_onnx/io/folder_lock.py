"""One run at a time per output folder: ``quantize`` re-reads its own files between stages, so two
runs writing one folder would mix their results (one asked for 5x could report the other's 8x)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from hawq_onnx.errors import HawqError

LOCK_NAME = ".hawq-lock"


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` for the block; a second holder fails at once.

    The lock is the kernel's (flock), so it is released whatever way the holder ends, SIGKILL
    included: a killed run never leaves the folder locked. Where flock does not exist (Windows)
    runs are not serialised.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms CI runs
        yield
        return
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HawqError(f"cannot lock the output folder {folder}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise HawqError(f"another hawq-onnx run (pid {holder}) is writing to {folder}; wait for it to end or "
                            "choose another output folder") from None
        except OSError as exc:  # a file system without locks (some network mounts): say so, do not guess
            raise HawqError(f"cannot lock the output folder {folder} ({exc.strerror}); choose a folder on a local "
                            "file system") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
