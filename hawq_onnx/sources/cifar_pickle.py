"""Read a CIFAR-10 python batch (``cifar-10-batches-py/data_batch_N``, ``test_batch``) as data.

The batches are pickles, and ``pickle.load`` calls whatever a file names: a crafted batch would
run code the moment ``--data cifar10:DIR`` is read. :class:`CifarUnpickler` admits only the three
globals numpy's array pickle names (``_reconstruct``, under either spelling of numpy's core module,
``ndarray`` and ``dtype``), and binds none of them to numpy: each stands for a small stand-in that
accepts only what a plain numeric array's pickle holds and builds the array itself from the raw
bytes, so numpy never sees a state the file made up. Every other global, and any persistent id,
is refused. The dict, bytes, lists and ints of the real files need no global at all.
:func:`read_cifar_batch` then checks the structure: a dict with ``b"data"`` (uint8, N x 3072) and
``b"labels"`` (N ints in 0..9), and where present ``b"filenames"`` (N bytes) and
``b"batch_label"`` (bytes).
"""

from __future__ import annotations

import io
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from hawq_onnx.errors import HawqError

CIFAR_CLASSES = 10
CIFAR_SAMPLE = 3 * 32 * 32
# Plain numeric dtypes only (no object, void, structured or string types): 'u1', '<i8', b'f4', ...
_PLAIN_DTYPE = re.compile(r"[<>|=]?[biuf][1248]")
_BYTE_ORDERS = ("|", "=", "<", ">")


def _text(value: Any) -> str | None:
    """A str, or ASCII bytes (how a Python 2 pickle's str loads with encoding="bytes"), as str."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if type(value) is str else None


class _Sealed:
    """Nothing a pickle may edit: BUILD on an instance (``__setstate__``) is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"cannot set the state of {type(self).__name__}")


class _Global(_Sealed):
    """An admitted global: a callable that is not a type (so NEWOBJ cannot use it) and not editable."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Any) -> None:
        self.name, self.fn = name, fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class DtypeStub(_Sealed):
    """``numpy.dtype(code, align, copy)`` and its one BUILD, for plain numeric codes only."""

    __slots__ = ("dtype", "built")

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype, self.built = dtype, False

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, byteorder, None, None, None, -1, -1, 0) for a plain numeric dtype.
        if self.built or type(state) is not tuple or len(state) != 8 or state[0] != 3 or \
                state[2:] != (None, None, None, -1, -1, 0) or _text(state[1]) not in _BYTE_ORDERS:
            raise pickle.UnpicklingError("a numpy dtype state numpy does not write for a plain type")
        order = _text(state[1])
        if order in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)
        self.built = True


class ArrayStub(_Sealed):
    """``_reconstruct(ndarray, (0,), b"b")`` and its one BUILD: the array, made from the raw bytes."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, raw bytes); numpy before 1.0 wrote it without the version.
        if type(state) is tuple and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if self.array is not None or type(state) is not tuple or len(state) != 4:
            raise pickle.UnpicklingError("a numpy array state numpy does not write")
        shape, dtype, fortran, raw = state
        if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape) or \
                type(dtype) is not DtypeStub or type(fortran) not in (bool, int) or type(raw) is not bytes:
            raise pickle.UnpicklingError("a numpy array state with fields of the wrong types")
        need = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != need:
            raise pickle.UnpicklingError(f"a numpy array of shape {shape} holds {len(raw)} bytes, not {need}")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = np.array(flat.reshape(shape, order="F" if fortran else "C"), dtype=dtype.dtype.newbyteorder("="))


def _no_ndarray(*args: Any) -> None:
    raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt through _reconstruct")


_NDARRAY = _Global("numpy.ndarray", _no_ndarray)  # only ever an argument of _reconstruct


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> ArrayStub:
    if subtype is not _NDARRAY or type(shape) is not tuple or len(shape) != 1 or type(shape[0]) is not int \
            or _text(typecode) != "b":
        raise pickle.UnpicklingError("_reconstruct with arguments numpy does not write")
    return ArrayStub()


def _dtype(code: Any, align: Any = False, copy: Any = True) -> DtypeStub:
    text = _text(code)
    if text is None or not _PLAIN_DTYPE.fullmatch(text) or type(align) not in (bool, int) or \
            type(copy) not in (bool, int):
        raise pickle.UnpicklingError(f"numpy.dtype({code!r}) is not a plain numeric type")
    return DtypeStub(np.dtype(text))


# The exact (module, name) pairs a numpy array's pickle names; numpy 2 renamed numpy.core to numpy._core.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _Global("_reconstruct", _reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Global("_reconstruct", _reconstruct),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", _dtype),
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, tuples, bytes, numbers and plain numpy arrays only."""

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="bytes")  # a Python 2 str (the real files' keys) loads as bytes
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            shown = f"{module}.{name}"
            shown = shown if len(shown) <= 80 and shown.isprintable() else repr(shown[:80]) + "..."
            raise HawqError(f"{self.where} is not a CIFAR-10 python batch: it names the global {shown}, which "
                            "a batch never holds; refused to load it (unpickling it could run code)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise HawqError(f"{self.where} is not a CIFAR-10 python batch: it holds a persistent id; refused to load it")


def _fail(where: str, what: str) -> HawqError:
    return HawqError(f"{where} is not a CIFAR-10 python batch: {what}")


def _array(value: Any) -> Any:
    return value.array if type(value) is ArrayStub else value


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file, read without running code."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, where).load()
    except HawqError:
        raise
    except RecursionError:
        raise _fail(where, "nested too deeply") from None
    except OSError as exc:
        raise HawqError(f"cannot read CIFAR-10 batch {path}: {exc.strerror or exc.__class__.__name__}") from None
    except Exception as exc:  # truncated, not a pickle, or a refused reconstruction (UnpicklingError)
        detail = " ".join(str(exc).split())[:120]
        raise _fail(where, f"{exc.__class__.__name__}{': ' + detail if detail else ''}") from None
    if type(d) is not dict:
        raise _fail(where, f"it holds a {type(d).__name__}, not a dict")
    for key in (b"data", b"labels"):
        if key not in d:
            raise _fail(where, f"no {key!r} entry")
    data, labels = _array(d[b"data"]), d[b"labels"]
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_SAMPLE:
        shown = f"{data.dtype} array of shape {data.shape}" if type(data) is np.ndarray else type(data).__name__
        raise _fail(where, f"b'data' must be a uint8 array of shape (N, {CIFAR_SAMPLE}), not a {shown}")
    if type(labels) is not list or not all(type(v) is int and 0 <= v < CIFAR_CLASSES for v in labels):
        raise _fail(where, f"b'labels' must be a list of ints in 0..{CIFAR_CLASSES - 1}")
    if len(labels) != data.shape[0]:
        raise _fail(where, f"{data.shape[0]} images but {len(labels)} labels")
    names = d.get(b"filenames")
    if names is not None and (type(names) is not list or len(names) != len(labels)
                              or not all(type(v) is bytes for v in names)):
        raise _fail(where, "b'filenames' must be a list of bytes, one per image")
    if b"batch_label" in d and type(d[b"batch_label"]) is not bytes:
        raise _fail(where, "b'batch_label' must be bytes")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), np.asarray(labels, dtype=np.int64)
