"""The files and folders a command reads, named by its model, weights and data arguments, so that
no output can be written over (or into) any of them."""

from __future__ import annotations

import os
from pathlib import Path


def model_file(ref: str | None) -> Path | None:
    """The Python file of ``FILE.py:factory`` (None for a zoo name or package.module:factory)."""
    if not ref or ":" not in ref:
        return None
    target = ref.rpartition(":")[0]
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Path(target)
    return None


def data_paths(spec: str | None) -> list[Path]:
    """The files (npz) or folders (cifar10, imagefolder) a data spec reads."""
    if not spec or ":" not in spec:
        return []
    kind, _, arg = spec.partition(":")
    if kind == "npz":
        return [Path(p) for p in arg.split(",") if p]
    if kind in ("cifar10", "imagefolder"):
        return [Path(arg.split(",")[0])]
    return []


def input_paths(model: str | None = None, weights: str | os.PathLike | None = None, data: str | None = None,
                *others: str | os.PathLike | None) -> tuple[Path, ...]:
    """Every path read through these arguments (missing ones included: they are checked later)."""
    found = [model_file(model) if isinstance(model, str) else None, weights,
             *(data_paths(data) if isinstance(data, str) else []), *others]
    return tuple(Path(p) for p in found if p is not None)
