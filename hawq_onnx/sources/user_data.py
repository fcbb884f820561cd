"""Data as a Python user holds it: a DataLoader, a torch Dataset, any iterable of batches, arrays.

A batch is a tensor (inputs only), a tuple or list ``(inputs, labels, ...)``, a dict of tensors
(keyword inputs such as ``input_ids`` and ``attention_mask``, with the labels under ``labels``),
or anything else with ``input_fn(batch) -> inputs``. Inputs are what the model takes: one tensor,
a tuple of tensors (``model(*inputs)``) or a dict (``model(**inputs)``), already normalised as
the model expects (a user's DataLoader applies its own transforms; nothing is rescaled here);
floating-point inputs become float32, integer ones (token ids, masks) keep their type. Arrays
held in memory are ``x``, ``(x, y)`` or a dict of arrays (``labels`` among them or not). Labels
are class indices. Where a source has no labels, the caller supplies
a ``labeler`` (the float model's own top-1, see ``hawq_onnx.api``), and the dataset's name says
so: everything measured against such labels is agreement with the float model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hawq_onnx.core import model_inputs
from hawq_onnx.core.model_inputs import InputShape
from hawq_onnx.errors import HawqError
from hawq_onnx.sources.splits import CALIBRATION_SIZE, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, Dataset, Split
from hawq_onnx.sources.stream import StreamSplit, indexable, iter_batches

InputFn = Callable[[Any], Any]
Labeler = Callable[[np.ndarray], np.ndarray]
FLOAT_MODEL_LABELS = "labels: the float model's top-1"
LOSS_WITHOUT_LABELS = "cross_entropy on the float model's top-1 (the data has no labels)"


def loss_name(loss_fn: Callable | None, labels_given: bool = True) -> str:
    """How records name the loss: a caller's ``loss_fn``, else cross-entropy on the given labels
    or on the float model's top-1."""
    if loss_fn is not None:
        return f"custom ({getattr(loss_fn, '__qualname__', 'loss_fn')})"
    return "cross_entropy" if labels_given else LOSS_WITHOUT_LABELS


def describe(data: Any) -> str:
    """A short name for ``data`` in reports: ``python:DataLoader``, ``python:ndarray``."""
    return f"python:{type(data).__name__}"


LABEL_KEYS = ("labels", "label")


def _labels_of(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, dict):
        return next((batch[k] for k in LABEL_KEYS if k in batch), None)
    return None


def split_batch(batch: Any, input_fn: InputFn | None = None) -> tuple[model_inputs.Batch, torch.Tensor | None]:
    """(inputs, labels or None) of one batch, checked. The inputs are one tensor, a tuple of
    tensors (positional inputs) or a dict of tensors (keyword inputs: a dict batch's entries
    other than ``labels``)."""
    if input_fn is not None:
        try:
            x = input_fn(batch)
        except Exception as exc:  # user code
            raise HawqError(f"input_fn raised {exc.__class__.__name__}: {exc}") from None
    elif isinstance(batch, (torch.Tensor, np.ndarray)):
        x = batch
    elif isinstance(batch, (tuple, list)) and batch:
        x = batch[0]
    elif isinstance(batch, dict):
        x = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    else:
        raise HawqError(f"a batch must be a tensor, a tuple (inputs, labels) or a dict; got {type(batch).__name__} "
                        "(pass input_fn to pick the inputs)")
    x = _inputs(x)
    y = _labels_of(batch)
    return x, None if y is None else _class_indices(y, model_inputs.count(x))


def _native(a: np.ndarray) -> np.ndarray:
    """A contiguous, native-byte-order copy where torch.from_numpy would refuse the array."""
    return np.ascontiguousarray(a, a.dtype.newbyteorder("=")) if a.dtype.kind in "biuf" else a


def _tensor(v: Any, what: str, single: bool) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise HawqError(f"{what} is a numpy array of {v.dtype}; inputs must be numbers")
        v = torch.from_numpy(_native(v))
    if not isinstance(v, torch.Tensor):
        raise HawqError(f"{what} is a {type(v).__name__}, not a tensor (pass input_fn to say what the model takes)")
    if v.is_complex():
        raise HawqError(f"{what} is complex ({v.dtype}); inputs must be real")
    if single and v.dtype == torch.uint8:
        raise HawqError(f"{what} is uint8, as images are stored: give the model's float input (convert with "
                        "input_fn, e.g. lambda b: b[0].float() / 255)")
    if v.ndim < (2 if single and v.is_floating_point() else 1) or len(v) == 0:
        raise HawqError(f"a batch of inputs must have a batch dimension and at least one sample, got {what} of "
                        f"shape {tuple(v.shape)}")
    v = v.detach().cpu()
    return v.float() if v.is_floating_point() else v


def _inputs(x: Any) -> model_inputs.Batch:
    if isinstance(x, dict):
        if not x:
            raise HawqError("a batch holds no inputs (a dict with only labels)")
        out: model_inputs.Batch = {str(k): _tensor(v, f"input {k!r}", False) for k, v in x.items()}
    elif isinstance(x, (tuple, list)):
        if not x:
            raise HawqError("a batch holds no inputs (an empty tuple)")
        out = tuple(_tensor(v, f"input {i}", False) for i, v in enumerate(x))
    else:
        return _tensor(x, "the input", True)
    sizes = {len(v) for v in model_inputs.leaves(out)}
    if len(sizes) > 1:
        raise HawqError(f"the inputs of one batch hold different numbers of samples ({sorted(sizes)})")
    return out


def _class_indices(y: Any, n: int) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y, np.int64) if np.issubdtype(y.dtype, np.integer) else _native(y))
    if isinstance(y, (list, tuple)):
        y = torch.as_tensor(y)
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.is_complex() or len(y) != n:
        shown = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise HawqError(f"labels must be a 1-D integer tensor of class indices, one per input ({n}); got {shown}"
                        + (f" {y.dtype}" if isinstance(y, torch.Tensor) else ""))
    if len(y) and int(y.min()) < 0:
        raise HawqError(f"labels must be class indices (>= 0); got {int(y.min())}")
    return y.detach().cpu().long()


def collect(data: Any, *, input_fn: InputFn | None = None,
            labeler: Labeler | None = None) -> tuple[model_inputs.Arrays, np.ndarray, bool]:
    """Every sample of ``data`` as arrays (inputs, y int64) and whether the labels were given."""
    batches = list(iter_batches(data))
    parts = [split_batch(b, input_fn) for b in batches]
    if not parts:
        raise HawqError("the data gave no batch")
    labelled = [y is not None for _, y in parts]
    if any(labelled) and not all(labelled):
        raise HawqError("some batches have labels and some do not; give labels for all or none")
    shapes = {model_inputs.shape_of(p[0]) for p in parts}
    if len(shapes) > 1:
        raise HawqError(f"batches hold samples of different shapes ({', '.join(map(model_inputs.describe, shapes))})")
    x = model_inputs.concat([model_inputs.as_numpy(p[0]) for p in parts])
    if all(labelled):
        return x, np.concatenate([p[1].numpy() for p in parts]).astype(np.int64), True
    if labeler is None:
        raise HawqError("the data has no labels and no float model to label it")
    return x, labeler(x).astype(np.int64), False


def _in_memory(data: Any) -> bool:
    arrays = (np.ndarray, torch.Tensor)
    return isinstance(data, arrays) or (
        isinstance(data, tuple) and 1 <= len(data) <= 2 and all(isinstance(a, arrays) for a in data)) or (
        isinstance(data, dict) and bool(data) and all(isinstance(a, arrays) for a in data.values()))


@dataclass
class _Scan:
    samples: int
    labelled: bool
    sample_shape: InputShape
    max_label: int        # -1 where not read (a map-style dataset: labels are checked batch by batch)
    first: str | None     # digest of the first sample, for sources read in iteration order


def _scan(data: Any, input_fn: InputFn | None, what: str) -> _Scan:
    """What the stages need to know before reading ``data``: its sample count, whether it has
    labels and its sample shape. A map-style dataset tells its length, so only its first batch is
    read; any other source is read once through (nothing kept)."""
    mapped = indexable(data)
    if mapped is not None:
        dataset, how = mapped
        if len(how["indices"]) == 0:
            raise HawqError(f"{what} gave no batch")
        x, y = split_batch(next(iter_batches(data)), input_fn)  # the loader's own collate_fn
        return _Scan(len(how["indices"]), y is not None, model_inputs.shape_of(x), -1, None)
    samples, flags, shapes, top, first = 0, set(), set(), -1, None
    for batch in iter_batches(data):
        x, y = split_batch(batch, input_fn)
        first = first or model_inputs.digest(x)
        samples += model_inputs.count(x)
        flags.add(y is not None)
        shapes.add(model_inputs.shape_of(x))
        if y is not None and len(y):
            top = max(top, int(y.max()))
    if not samples:
        raise HawqError(f"{what} gave no batch")
    if len(flags) > 1:
        raise HawqError(f"{what}: some batches have labels and some do not; give labels for all or none")
    if len(shapes) > 1:
        shown = ", ".join(sorted(map(model_inputs.describe, shapes)))
        raise HawqError(f"{what}: batches hold samples of different shapes ({shown})")
    return _Scan(samples, flags == {True}, shapes.pop(), top, first)


def _reader(input_fn: InputFn | None, labeler: Labeler | None, labelled: bool, num_classes: int | None,
            sample_shape: InputShape) -> Callable[[Any], tuple[model_inputs.Batch, torch.Tensor]]:
    def read(batch: Any) -> tuple[model_inputs.Batch, torch.Tensor]:
        x, y = split_batch(batch, input_fn)
        shape = model_inputs.shape_of(x)
        if shape != sample_shape:
            raise HawqError(f"a batch holds samples of shape {model_inputs.describe(shape)}, the first ones "
                            f"{model_inputs.describe(sample_shape)}")
        if (y is not None) != labelled:
            raise HawqError("some batches have labels and some do not; give labels for all or none")
        if y is None:
            if labeler is None:
                raise HawqError("the data has no labels and no float model to label it")
            y = torch.from_numpy(labeler(model_inputs.as_numpy(x)))
        elif num_classes is not None and len(y) and int(y.max()) >= num_classes:
            raise HawqError(f"a label is {int(y.max())}, but the model has {num_classes} outputs")
        return x, y
    return read


def _holdout(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over sample positions: a seeded fifth held out."""
    if samples < 2:
        raise HawqError(f"data holds {samples} sample(s): hold-out evaluation needs at least 2 (or pass eval_data)")
    order = np.random.default_rng(seed).permutation(samples)
    test = np.zeros(samples, bool)
    test[order[:max(1, int(round(samples * DIGITS_TEST_FRACTION)))]] = True
    return ~test, test


def as_dataset(data: Any, eval_data: Any = None, *, num_classes: int, input_fn: InputFn | None = None,
               labeler: Labeler | None = None, seed: int = 0, calibration_size: int = CALIBRATION_SIZE) -> Dataset:
    """Training, calibration and evaluation splits of user data.

    Arrays are held as they are; a DataLoader or any other iterable is streamed (``StreamSplit``):
    one pass counts and checks it, each stage then reads it batch by batch. Without
    ``eval_data`` a fixed fifth of ``data`` is held out for evaluation (the same whatever
    ``seed``, so stages run with other seeds never train on it); the calibration subset
    (``calibration_size`` samples, drawn with ``seed``) comes from the training split only."""
    name = describe(data) + ("" if eval_data is None else f", eval {describe(eval_data)}")
    holdout = f" (a fixed {int(100 * DIGITS_TEST_FRACTION)} % held out for evaluation)" if eval_data is None else ""
    if _in_memory(data) and (eval_data is None or _in_memory(eval_data)):
        x, y, given = collect(data, input_fn=input_fn, labeler=labeler)
        if eval_data is None:
            train_mask, test_mask = _holdout(len(y), DIGITS_SPLIT_SEED)
            train = Split(model_inputs.take(x, train_mask), y[train_mask])
            test = Split(model_inputs.take(x, test_mask), y[test_mask])
        else:
            xt, yt, eval_given = collect(eval_data, input_fn=input_fn, labeler=labeler)
            train, test, given = Split(x, y), Split(xt, yt), given and eval_given
        total, top = len(y), int(max(train.y.max(), test.y.max()))
    else:
        scan = _scan(data, input_fn, "data")
        read = _reader(input_fn, labeler, scan.labelled, num_classes, scan.sample_shape)
        total, given, top = scan.samples, scan.labelled, scan.max_label
        if eval_data is None:
            train_mask, test_mask = _holdout(scan.samples, DIGITS_SPLIT_SEED)
            train = StreamSplit(data, length=int(train_mask.sum()), sample_shape=scan.sample_shape, read=read,
                                keep=train_mask, first=scan.first)
            test = StreamSplit(data, length=int(test_mask.sum()), sample_shape=scan.sample_shape, read=read,
                               keep=test_mask, first=scan.first)
        else:
            escan = _scan(eval_data, input_fn, "eval_data")
            train = StreamSplit(data, length=scan.samples, sample_shape=scan.sample_shape, read=read,
                                first=scan.first)
            test = StreamSplit(eval_data, length=escan.samples, sample_shape=escan.sample_shape, first=escan.first,
                               read=_reader(input_fn, labeler, escan.labelled, num_classes, escan.sample_shape))
            given, top = given and escan.labelled, max(top, escan.max_label)
    if test.sample_shape != train.sample_shape:
        raise HawqError(f"eval_data samples have shape {model_inputs.describe(test.sample_shape)}, data samples "
                        f"{model_inputs.describe(train.sample_shape)}")
    if top >= num_classes:
        raise HawqError(f"labels go up to {top}, but the model has {num_classes} outputs")
    name += holdout + ("" if given else f"; {FLOAT_MODEL_LABELS}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:calibration_size])
    calib = Split(model_inputs.take(train.x, idx), train.y[idx]) if isinstance(train, Split) \
        else Split(*train.gather(idx))
    return Dataset(name, train, calib, test, num_classes, labels_given=given, samples=total)


def evaluation_split(data: Any, *, input_fn: InputFn | None = None, labeler: Labeler | None = None,
                     num_classes: int | None = None) -> tuple[Split | StreamSplit, bool, int]:
    """All of ``data`` as one evaluation split (arrays held, iterables streamed), whether its
    labels were given, and its largest label."""
    if _in_memory(data):
        x, y, given = collect(data, input_fn=input_fn, labeler=labeler)
        if num_classes is not None and int(y.max()) >= num_classes:
            raise HawqError(f"labels go up to {int(y.max())}, but the model has {num_classes} outputs")
        return Split(x, y), given, int(y.max())
    scan = _scan(data, input_fn, "data")
    if num_classes is not None and scan.max_label >= num_classes:
        raise HawqError(f"labels go up to {scan.max_label}, but the model has {num_classes} outputs")
    split = StreamSplit(data, length=scan.samples, sample_shape=scan.sample_shape, first=scan.first,
                        read=_reader(input_fn, labeler, scan.labelled, num_classes, scan.sample_shape))
    return split, scan.labelled, scan.max_label


def first_inputs(data: Any, n: int, input_fn: InputFn | None = None) -> model_inputs.Arrays:
    """The first ``n`` inputs of ``data`` (fewer where it has fewer), reading no further."""
    parts, have = [], 0
    for batch in iter_batches(data):
        x, _ = split_batch(batch, input_fn)
        parts.append(model_inputs.as_numpy(model_inputs.take(x, slice(0, n - have))))
        have += model_inputs.count(parts[-1])
        if have >= n:
            break
    if not parts:
        raise HawqError("the data gave no batch")
    return model_inputs.concat(parts)
