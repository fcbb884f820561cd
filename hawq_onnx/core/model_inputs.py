"""A model's inputs, batch first: one tensor, several positional tensors, or named tensors.

A batch of inputs is one of three forms, and the model is called accordingly:

- a tensor ``x``: ``model(x)``, the image classifier's case;
- a tuple of tensors: ``model(*x)``;
- a dict of tensors (``input_ids``, ``attention_mask``): ``model(**x)``.

Every stage moves inputs through the functions here (count, take, concatenate, convert, call),
so none of them needs to know which form a model takes. A stored split holds the same forms
with numpy arrays in place of tensors.

What a model takes is an ``InputShape``: a plain tuple (one sample's shape) for a single
floating-point input, as every image model has, or a :class:`Signature` (name, shape, dtype per
input) for anything else; the ONNX export names its inputs after the signature.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np
import torch

from hawq_onnx.errors import HawqError

Batch = Union[torch.Tensor, tuple, dict]      # of torch tensors
Arrays = Union[np.ndarray, tuple, dict]       # of numpy arrays
SINGLE_NAME = "input"


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]   # one sample, without the batch dimension
    dtype: str               # numpy dtype name: float32, int64, bool


@dataclass(frozen=True)
class Signature:
    """What a model takes when it is not one floating-point tensor."""

    inputs: tuple[InputSpec, ...]
    form: str  # "single" | "positional" | "keyword"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def describe(self) -> str:
        return ", ".join(f"{i.name} {i.shape} {i.dtype}" for i in self.inputs)

    def to_json(self) -> dict:
        return {"form": self.form, "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype}
                                              for i in self.inputs]}

    @classmethod
    def from_json(cls, obj: dict) -> "Signature":
        try:
            form = str(obj["form"])
            inputs = tuple(InputSpec(str(i["name"]), tuple(int(d) for d in i["shape"]), str(np.dtype(i["dtype"])))
                           for i in obj["inputs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HawqError(f"an input signature is malformed ({exc.__class__.__name__}: {exc})") from None
        if form not in ("single", "positional", "keyword") or not inputs or (form == "single" and len(inputs) != 1):
            raise HawqError(f"an input signature is malformed (form {form!r}, {len(inputs)} inputs)")
        return cls(inputs, form)


InputShape = Union[tuple, Signature]


def shape_json(shape: InputShape) -> list | dict:
    """How records (plan, manifest, reports) store an input shape: a list, or a signature's dict."""
    return shape.to_json() if isinstance(shape, Signature) else [int(d) for d in shape]


def shape_from_json(obj: Any) -> InputShape:
    return Signature.from_json(obj) if isinstance(obj, dict) else tuple(int(d) for d in obj)


def describe(shape: InputShape) -> str:
    """``(1, 28, 28)`` for one float tensor; ``input_ids (16,) int64, attention_mask (16,) int64``."""
    return shape.describe() if isinstance(shape, Signature) else str(tuple(int(d) for d in shape))


def is_single(shape: InputShape) -> bool:
    """One floating-point tensor: the form every image model takes."""
    return not isinstance(shape, Signature)


# --- the three forms, leaf by leaf -------------------------------------------------------------

def _map(fn: Callable[[Any], Any], x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(fn(v) for v in x)
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    return fn(x)


def leaves(x: Any) -> list:
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, dict):
        return list(x.values())
    return [x]


def count(x: Any) -> int:
    """Samples in a batch (or in stored arrays)."""
    return len(leaves(x)[0])


def take(x: Any, index: Any) -> Any:
    """The samples at ``index`` (a slice, an index array or a boolean mask) of every input."""
    return _map(lambda v: v[index], x)


def concat(parts: list) -> Any:
    """Batches of one form joined along the batch dimension (torch or numpy, as given)."""
    first = parts[0]
    join = torch.cat if isinstance(leaves(first)[0], torch.Tensor) else np.concatenate
    if isinstance(first, tuple):
        return tuple(join([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: join([p[k] for p in parts]) for k in first}
    return join(parts)


def as_numpy(x: Any) -> Any:
    return _map(lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, x)


def as_torch(x: Any) -> Any:
    return _map(lambda v: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)), x)


def to_device(x: Any, device: torch.device | str) -> Any:
    return _map(lambda v: v.to(device), x)


def call(model: Callable, x: Any) -> Any:
    """The model on a batch, called in the batch's form."""
    if isinstance(x, tuple):
        return model(*x)
    if isinstance(x, dict):
        return model(**x)
    return model(x)


def scores(out: Any) -> Any:
    """The class scores in a model's output: the tensor itself, or the ``logits`` of a Hugging Face
    style output (or dict), or the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    return out if logits is None else logits


def digest(x: Any) -> str:
    """A hash of the first sample, to tell whether a source gives its samples in the same order."""
    h = hashlib.sha1()
    for v in leaves(as_numpy(take(x, slice(0, 1)))):
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


# --- shapes ------------------------------------------------------------------------------------

def shape_of(x: Any, names: tuple[str, ...] | None = None) -> InputShape:
    """The input shape a batch (or stored arrays) gives: a tuple for one floating-point tensor,
    else its signature."""
    values = leaves(x)
    if not isinstance(x, (tuple, dict)) and _dtype(values[0]).kind == "f":
        return tuple(int(d) for d in values[0].shape[1:])
    form = "keyword" if isinstance(x, dict) else "positional" if isinstance(x, tuple) else "single"
    keys = list(x) if isinstance(x, dict) else list(names or
                                                     ([SINGLE_NAME] if form == "single" else
                                                      [f"input_{i}" for i in range(len(values))]))
    return Signature(tuple(InputSpec(str(k), tuple(int(d) for d in v.shape[1:]), str(_dtype(v)))
                           for k, v in zip(keys, values)), form)


def _dtype(v: Any) -> np.dtype:
    if isinstance(v, torch.Tensor):
        return np.dtype(str(v.dtype).removeprefix("torch."))
    return np.dtype(v.dtype)


def onnx_names(shape: InputShape) -> list[str]:
    return list(shape.names) if isinstance(shape, Signature) else [SINGLE_NAME]


def example(shape: InputShape, n: int, *, seed: int | None = 0, dtype: torch.dtype = torch.float32,
            device: torch.device | str = "cpu") -> Batch:
    """``n`` made-up samples: normal noise for floating-point inputs (``seed``; zeros where None),
    ones for integer and boolean ones (a valid token id, an attention mask that attends)."""
    gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)

    def make(spec_shape: tuple[int, ...], np_dtype: str) -> torch.Tensor:
        size = (n,) + tuple(spec_shape)
        kind = np.dtype(np_dtype).kind
        if kind == "f":
            if gen is None:
                return torch.zeros(size, dtype=dtype, device=device)
            return torch.randn(size, dtype=dtype, device=device, generator=gen)
        return torch.ones(size, dtype=getattr(torch, np.dtype(np_dtype).name), device=device)

    if not isinstance(shape, Signature):
        return make(tuple(shape), "float32")
    values = [make(i.shape, i.dtype) for i in shape.inputs]
    if shape.form == "keyword":
        return dict(zip(shape.names, values))
    return tuple(values) if shape.form == "positional" else values[0]


def elements(shape: InputShape) -> int:
    """Values in one sample, over all inputs."""
    specs = shape.inputs if isinstance(shape, Signature) else (InputSpec(SINGLE_NAME, tuple(shape), "float32"),)
    total = 0
    for s in specs:
        count_ = 1
        for d in s.shape:
            count_ *= int(d)
        total += count_
    return total
