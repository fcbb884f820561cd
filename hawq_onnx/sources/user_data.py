"""Data as a Python user holds it: a DataLoader, a torch Dataset, any iterable of batches, arrays.

A batch is a tensor (inputs only), a tuple or list ``(inputs, labels, ...)``, or anything else
with ``input_fn(batch) -> inputs``. Inputs are one floating-point tensor in the model's layout,
already normalised as the model expects (a user's DataLoader applies its own transforms; nothing
is rescaled here). Labels are class indices. Where a source has no labels, the caller supplies
a ``labeler`` (the float model's own top-1, see ``hawq_onnx.api``), and the dataset's name says
so: everything measured against such labels is agreement with the float model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hawq_onnx.errors import HawqError
from hawq_onnx.sources.splits import CALIBRATION_SIZE, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, Dataset, Split
from hawq_onnx.sources.stream import StreamSplit, digest, indexable, iter_batches

InputFn = Callable[[Any], Any]
Labeler = Callable[[np.ndarray], np.ndarray]
FLOAT_MODEL_LABELS = "labels: the float model's top-1"
LOSS_WITHOUT_LABELS = "cross_entropy on the float model's top-1 (the data has no labels)"


def describe(data: Any) -> str:
    """A short name for ``data`` in reports: ``python:DataLoader``, ``python:ndarray``."""
    return f"python:{type(data).__name__}"


def _labels_of(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, dict):
        return batch.get("labels", batch.get("label"))
    return None


def split_batch(batch: Any, input_fn: InputFn | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels or None) of one batch, checked."""
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
        raise HawqError(f"a batch is a dict (keys {', '.join(map(str, batch))}): pass input_fn=lambda b: b[KEY] to "
                        "say which tensor the model takes (models with several named inputs are not supported yet)")
    else:
        raise HawqError(f"a batch must be a tensor, a tuple (inputs, labels) or a dict; got {type(batch).__name__} "
                        "(pass input_fn to pick the inputs)")
    y = _labels_of(batch)
    return _inputs(x), None if y is None else _class_indices(y, len(x))


def _native(a: np.ndarray) -> np.ndarray:
    """A contiguous, native-byte-order copy where torch.from_numpy would refuse the array."""
    return np.ascontiguousarray(a, a.dtype.newbyteorder("=")) if a.dtype.kind in "biuf" else a


def _inputs(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(_native(x))
    if not isinstance(x, torch.Tensor):
        raise HawqError(f"the model's input must be one tensor, got {type(x).__name__} (models with several inputs "
                        "are not supported yet; pass input_fn to pick the tensor)")
    if not x.is_floating_point():
        raise HawqError(f"inputs must be floating point, got {x.dtype} (integer inputs such as token ids are not "
                        "supported yet; convert images with input_fn, e.g. lambda b: b[0].float() / 255)")
    if x.ndim < 2 or len(x) == 0:
        raise HawqError(f"a batch of inputs must have a batch dimension and at least one sample, got shape "
                        f"{tuple(x.shape)}")
    return x.detach().cpu().float()


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
            labeler: Labeler | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Every sample of ``data`` as arrays (x float32, y int64) and whether the labels were given."""
    batches = list(iter_batches(data))
    parts = [split_batch(b, input_fn) for b in batches]
    if not parts:
        raise HawqError("the data gave no batch")
    labelled = [y is not None for _, y in parts]
    if any(labelled) and not all(labelled):
        raise HawqError("some batches have labels and some do not; give labels for all or none")
    x = np.concatenate([p[0].numpy() for p in parts])
    if all(labelled):
        return x, np.concatenate([p[1].numpy() for p in parts]).astype(np.int64), True
    if labeler is None:
        raise HawqError("the data has no labels and no float model to label it")
    return x, labeler(x).astype(np.int64), False


def _in_memory(data: Any) -> bool:
    return isinstance(data, (np.ndarray, torch.Tensor)) or (
        isinstance(data, tuple) and 1 <= len(data) <= 2 and all(isinstance(a, (np.ndarray, torch.Tensor)) for a in data))


@dataclass
class _Scan:
    samples: int
    labelled: bool
    sample_shape: tuple[int, ...]
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
        return _Scan(len(how["indices"]), y is not None, tuple(x.shape[1:]), -1, None)
    samples, flags, shapes, top, first = 0, set(), set(), -1, None
    for batch in iter_batches(data):
        x, y = split_batch(batch, input_fn)
        first = first or digest(x)
        samples += len(x)
        flags.add(y is not None)
        shapes.add(tuple(x.shape[1:]))
        if y is not None and len(y):
            top = max(top, int(y.max()))
    if not samples:
        raise HawqError(f"{what} gave no batch")
    if len(flags) > 1:
        raise HawqError(f"{what}: some batches have labels and some do not; give labels for all or none")
    if len(shapes) > 1:
        raise HawqError(f"{what}: batches hold samples of different shapes ({', '.join(map(str, sorted(shapes)))})")
    return _Scan(samples, flags == {True}, shapes.pop(), top, first)


def _reader(input_fn: InputFn | None, labeler: Labeler | None, labelled: bool, num_classes: int | None,
            sample_shape: tuple[int, ...]) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor]]:
    def read(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = split_batch(batch, input_fn)
        if tuple(x.shape[1:]) != sample_shape:
            raise HawqError(f"a batch holds samples of shape {tuple(x.shape[1:])}, the first ones {sample_shape}")
        if (y is not None) != labelled:
            raise HawqError("some batches have labels and some do not; give labels for all or none")
        if y is None:
            if labeler is None:
                raise HawqError("the data has no labels and no float model to label it")
            y = torch.from_numpy(labeler(x.numpy()))
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
            train_mask, test_mask = _holdout(len(x), DIGITS_SPLIT_SEED)
            train, test = Split(x[train_mask], y[train_mask]), Split(x[test_mask], y[test_mask])
        else:
            xt, yt, eval_given = collect(eval_data, input_fn=input_fn, labeler=labeler)
            train, test, given = Split(x, y), Split(xt, yt), given and eval_given
        total, top = len(x), int(max(train.y.max(), test.y.max()))
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
        raise HawqError(f"eval_data samples have shape {test.sample_shape}, data samples {train.sample_shape}")
    if top >= num_classes:
        raise HawqError(f"labels go up to {top}, but the model has {num_classes} outputs")
    name += holdout + ("" if given else f"; {FLOAT_MODEL_LABELS}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:calibration_size])
    calib = Split(train.x[idx], train.y[idx]) if isinstance(train, Split) else Split(*train.gather(idx))
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


def first_inputs(data: Any, n: int, input_fn: InputFn | None = None) -> np.ndarray:
    """The first ``n`` inputs of ``data`` (fewer where it has fewer), reading no further."""
    parts, have = [], 0
    for batch in iter_batches(data):
        x, _ = split_batch(batch, input_fn)
        parts.append(x[:n - have].numpy())
        have += len(parts[-1])
        if have >= n:
            break
    if not parts:
        raise HawqError("the data gave no batch")
    return np.concatenate(parts)
