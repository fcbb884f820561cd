"""Accuracy and agreement of ONNX models under ONNX Runtime, evaluated in batches.

The session is the one a user deploys: default graph optimizations (``ORT_ENABLE_ALL``), the
requested execution provider and thread count. Input and output names are read from the
session; nothing assumes the exporter's ``input`` / ``logits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from hawq_onnx.core.progress import progress_bar

from hawq_onnx.core import model_inputs
from hawq_onnx.core.grid import activation_qparams
from hawq_onnx.errors import HawqError
from hawq_onnx.io.json_fields import get

CPU = "CPUExecutionProvider"
EVAL_BATCH_SIZE = 256
_SHORT_PROVIDERS = {"cpu": CPU, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
                    "openvino": "OpenVINOExecutionProvider", "dnnl": "DnnlExecutionProvider",
                    "coreml": "CoreMLExecutionProvider", "xnnpack": "XnnpackExecutionProvider",
                    "qnn": "QNNExecutionProvider", "dml": "DmlExecutionProvider"}
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def resolve_providers(provider: str | None) -> list[str]:
    """``cpu``, ``cuda``, ... or a full ONNX Runtime provider name; CPU is kept as the fallback."""
    import onnxruntime as ort

    name = _SHORT_PROVIDERS.get((provider or "cpu").lower(), provider or CPU)
    available = ort.get_available_providers()
    if name not in available:
        raise HawqError(f"execution provider {provider!r} is not available in this onnxruntime "
                        f"(available: {', '.join(available)})")
    return [name] if name == CPU else [name, CPU]


def open_session(path: str | Path, threads: int, providers: Sequence[str] = (CPU,), optimized: bool = True):
    """The session a user deploys (default optimizations), ``threads`` intra-op threads of its own.

    ``optimized=False``: no graph optimizations, every Q/DQ run as written (the file's own arithmetic).
    """
    import onnxruntime as ort

    from hawq_onnx.core.ort_session import open_session as _open
    from hawq_onnx.core.ort_session import session_options

    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return _open(path, session_options(threads, level=level), list(providers))


@dataclass(frozen=True)
class InputIO:
    name: str
    shape: tuple[int | None, ...]   # without the batch dimension; None where symbolic
    dtype: type


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[InputIO, ...]
    output_name: str
    output_shape: tuple[int | None, ...]  # without the batch dimension

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.inputs[0].shape

    @property
    def input_dtype(self) -> type:
        return self.inputs[0].dtype

    def feed(self, x: model_inputs.Arrays) -> dict[str, np.ndarray]:
        """ONNX Runtime's feed for a batch of inputs in any of the three forms (by position, or
        by name for a dict)."""
        values = x if isinstance(x, dict) else dict(zip([i.name for i in self.inputs], model_inputs.leaves(x)))
        missing = [i.name for i in self.inputs if i.name not in values]
        if missing or len(values) != len(self.inputs):
            raise HawqError(f"the model takes inputs {', '.join(i.name for i in self.inputs)}; the data gives "
                            f"{', '.join(map(str, values)) if isinstance(x, dict) else f'{len(values)} input(s)'}")
        return {i.name: np.ascontiguousarray(model_inputs.as_numpy(values[i.name]), dtype=i.dtype)
                for i in self.inputs}


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def model_io(session, path: str | Path) -> ModelIO:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not inputs:
        raise HawqError(f"{path} has no inputs")
    if not outputs:
        raise HawqError(f"{path} has no outputs")
    specs = []
    for i in inputs:
        dtype = NUMPY_TYPES.get(i.type)
        if dtype is None:
            raise HawqError(f"{path}: input {i.name!r} is {i.type}; validate feeds float, integer and boolean tensors")
        if not list(i.shape):
            raise HawqError(f"{path}: input {i.name!r} has no rank; give the model a batched input")
        specs.append(InputIO(i.name, _dims(list(i.shape)[1:]), dtype))
    return ModelIO(tuple(specs), outputs[0].name, _dims(list(outputs[0].shape)[1:]))


def file_io(path: str | Path) -> ModelIO:
    """The inputs and output of the ONNX file at ``path``, read through an ONNX Runtime session."""
    return model_io(open_session(path, threads=1), path)


def check_input_fits(io: ModelIO, sample_shape: model_inputs.InputShape, path: str | Path) -> None:
    """The data's sample shape must fit every static dimension of the model's inputs."""
    if model_inputs.is_single(sample_shape):
        given = [(io.inputs[0].name, tuple(sample_shape))]
    else:
        given = [(s.name, s.shape) for s in sample_shape.inputs]
    if len(given) != len(io.inputs):
        raise HawqError(f"{path} takes {len(io.inputs)} input(s) ({', '.join(i.name for i in io.inputs)}) but the "
                        f"data gives {len(given)} ({model_inputs.describe(sample_shape)})")
    by_name = dict(given) if not model_inputs.is_single(sample_shape) and sample_shape.form == "keyword" else None
    for k, spec in enumerate(io.inputs):
        shape = by_name.get(spec.name) if by_name is not None else given[k][1]
        if shape is None:
            raise HawqError(f"{path} takes input {spec.name!r}, which the data does not give "
                            f"({model_inputs.describe(sample_shape)})")
        fits = len(spec.shape) == len(shape) and all(d is None or d == s for d, s in zip(spec.shape, shape))
        if not fits:
            want = ", ".join("?" if d is None else str(d) for d in spec.shape)
            raise HawqError(f"{path} takes input {spec.name!r} of shape (N, {want}) but the data gives "
                            f"(N, {', '.join(map(str, shape))}); pass the matching data, model or input shape")


def predict(session, io: ModelIO, x: model_inputs.Arrays, batch_size: int = EVAL_BATCH_SIZE,
            progress: bool = False, desc: str = "evaluate") -> np.ndarray:
    """Logits for all of ``x``, ``batch_size`` samples per run, as (N, classes) float32."""
    if batch_size <= 0:
        raise HawqError(f"evaluation batch size must be positive, got {batch_size}")
    n = model_inputs.count(x)
    return predict_batches(session, io, (model_inputs.take(x, slice(i, i + batch_size)) for i in range(0, n, batch_size)),
                           n, progress, desc)


def predict_batches(session, io: ModelIO, batches: Iterable[model_inputs.Arrays], total: int,
                    progress: bool = False, desc: str = "evaluate") -> np.ndarray:
    """Logits for every batch of inputs, concatenated as (N, classes) float32."""
    parts = []
    with progress_bar(total=total, desc=desc, unit="sample", enabled=progress, leave=False) as bar:
        for x in batches:
            feed = io.feed(x)
            n = model_inputs.count(x)
            try:
                out = session.run([io.output_name], feed)[0]
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                shapes = ", ".join(str(v.shape) for v in feed.values())
                raise HawqError(f"ONNX Runtime failed on a batch of shape {shapes}: {first}") from None
            out = np.asarray(out)
            if out.ndim > 2 and all(d == 1 for d in out.shape[2:]):
                out = out.reshape(out.shape[0], -1)  # (N, C, 1, 1) heads
            if out.ndim != 2 or out.shape[0] != n:
                raise HawqError(f"output {io.output_name!r} has shape {out.shape} for a batch of {n}; "
                                "validate needs (N, classes) scores")
            parts.append(out.astype(np.float32, copy=False))
            bar.update(n)
    return np.concatenate(parts)


@dataclass
class Accuracy:
    samples: int
    correct_top1: int
    correct_top5: int | None   # None for 10 classes or fewer, where top-5 says little

    @property
    def top1(self) -> float:
        return self.correct_top1 / self.samples

    @property
    def top5(self) -> float | None:
        return None if self.correct_top5 is None else self.correct_top5 / self.samples

    def to_json(self) -> dict:
        return {"samples": self.samples, "correct_top1": self.correct_top1, "top1": self.top1,
                "correct_top5": self.correct_top5, "top5": self.top5}

    @classmethod
    def from_json(cls, obj: Any) -> "Accuracy":
        """What ``to_json`` wrote (top-1 and top-5 are recomputed from the counts); ValueError if malformed."""
        samples = get(obj, "samples", "int")
        if samples < 1:
            raise ValueError(f"'samples' must be at least 1, got {samples}")  # top1 divides by it
        return cls(samples, get(obj, "correct_top1", "int"), get(obj, "correct_top5", "int", optional=True))


def accuracy(logits: np.ndarray, y: np.ndarray, num_classes: int) -> Accuracy:
    """Top-1 is ``argmax == label``; top-5 counts a label with fewer than 5 strictly higher scores."""
    if logits.shape[1] < num_classes:
        raise HawqError(f"the model scores {logits.shape[1]} classes but the data has {num_classes}")
    top1 = int((logits.argmax(axis=1) == y).sum())
    top5 = None
    if num_classes > 10:
        true_score = logits[np.arange(len(y)), y][:, None]
        top5 = int(((logits > true_score).sum(axis=1) < 5).sum())
    return Accuracy(len(y), top1, top5)


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of samples where both models pick the same class."""
    return float((logits_a.argmax(axis=1) == logits_b.argmax(axis=1)).mean())


def logit_error_steps(logits: np.ndarray, reference: np.ndarray, percentile: float = 99.0) -> float:
    """The ``percentile`` of |logits - reference|, in steps of the 8-bit activation grid over the reference's range."""
    step, _ = activation_qparams(float(reference.min()), float(reference.max()), 8)
    return float(np.percentile(np.abs(logits - reference), percentile) / step)
