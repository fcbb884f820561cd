"""Data as a Python user holds it: a DataLoader, a torch Dataset, any iterable of batches, arrays.

A batch is a tensor (inputs only), a tuple or list ``(inputs, labels, ...)``, or anything else
with ``input_fn(batch) -> inputs``. Inputs are one floating-point tensor in the model's layout,
already normalised as the model expects (a user's DataLoader applies its own transforms; nothing
is rescaled here). Labels are class indices. Where a source has no labels, the caller supplies
a ``labeler`` (the float model's own top-1, see ``hawq_onnx.api``), and the dataset's name says
so: everything measured against such labels is agreement with the float model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from hawq_onnx.errors import HawqError
from hawq_onnx.sources.data import CALIBRATION_SIZE, DIGITS_TEST_FRACTION, Dataset, Split

InputFn = Callable[[Any], Any]
Labeler = Callable[[np.ndarray], np.ndarray]
FLOAT_MODEL_LABELS = "labels: the float model's top-1"
LOSS_WITHOUT_LABELS = "cross_entropy on the float model's top-1 (the data has no labels)"
ARRAY_BATCH = 256  # arrays are cut into batches of this size where no batch size is given


def describe(data: Any) -> str:
    """A short name for ``data`` in reports: ``python:DataLoader``, ``python:ndarray``."""
    return f"python:{type(data).__name__}"


def _is_torch_dataset(data: Any) -> bool:
    return isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset)


def iter_batches(data: Any, batch_size: int = ARRAY_BATCH) -> Iterator[Any]:
    """The batches of ``data``, as they come (DataLoader, iterable) or cut (arrays, map-style Dataset)."""
    if isinstance(data, str):
        raise HawqError("a data spec string (digits, cifar10:DIR, npz:FILE) is loaded by sources.data, not here")
    if isinstance(data, (np.ndarray, torch.Tensor)):
        data = (data,)
    if isinstance(data, tuple) and 1 <= len(data) <= 2 and all(isinstance(a, (np.ndarray, torch.Tensor)) for a in data):
        if len(data) == 2 and len(data[0]) != len(data[1]):
            raise HawqError(f"data: {len(data[0])} inputs but {len(data[1])} labels")
        for i in range(0, len(data[0]), batch_size):
            yield tuple(a[i:i + batch_size] for a in data)
        return
    if _is_torch_dataset(data):
        yield from torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
        return
    if not isinstance(data, Iterable):
        raise HawqError(f"data must be a DataLoader, a torch Dataset, an iterable of batches, arrays (x or (x, y)) "
                        f"or a spec string (digits, cifar10:DIR, npz:FILE); got {type(data).__name__}")
    yield from data


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


def _inputs(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
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
        y = torch.from_numpy(y)
    if isinstance(y, (list, tuple)):
        y = torch.as_tensor(y)
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.is_complex() or len(y) != n:
        shown = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise HawqError(f"labels must be a 1-D integer tensor of class indices, one per input ({n}); got {shown}"
                        + (f" {y.dtype}" if isinstance(y, torch.Tensor) else ""))
    if len(y) and int(y.min()) < 0:
        raise HawqError(f"labels must be class indices (>= 0); got {int(y.min())}")
    return y.detach().cpu().long()


def take_batches(data: Any, count: int | None, *, batch_size: int = ARRAY_BATCH, input_fn: InputFn | None = None,
                 labeler: Labeler | None = None) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], bool]:
    """The first ``count`` batches (all with ``None``) as (inputs, labels), and whether the data
    gave the labels; unlabelled batches are labelled by ``labeler``. Only what is taken is read."""
    out = []
    given = []
    for batch in iter_batches(data, batch_size):
        if count is not None and len(out) >= count:
            break
        x, y = split_batch(batch, input_fn)
        given.append(y is not None)
        if y is None:
            if labeler is None:
                raise HawqError("the data has no labels and no float model to label it")
            y = torch.from_numpy(labeler(x.numpy()))
        out.append((x, y))
    if not out:
        raise HawqError("the data gave no batch")
    if any(given) and not all(given):
        raise HawqError("some batches have labels and some do not; give labels for all or none")
    shapes = {tuple(x.shape[1:]) for x, _ in out}
    if len(shapes) > 1:
        raise HawqError(f"batches hold samples of different shapes ({', '.join(map(str, sorted(shapes)))})")
    return out, all(given)


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


def as_dataset(data: Any, eval_data: Any = None, *, num_classes: int, input_fn: InputFn | None = None,
               labeler: Labeler | None = None, seed: int = 0, calibration_size: int = CALIBRATION_SIZE) -> Dataset:
    """Training, calibration and evaluation splits of user data.

    Without ``eval_data`` a seeded fifth of ``data`` is held out for evaluation (as for one npz
    file); the calibration subset is drawn from the training split only."""
    x, y, given = collect(data, input_fn=input_fn, labeler=labeler)
    name = describe(data)
    if eval_data is None:
        if len(x) < 2:
            raise HawqError(f"data holds {len(x)} sample(s): hold-out evaluation needs at least 2 (or pass eval_data)")
        order = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, int(round(len(x) * DIGITS_TEST_FRACTION)))
        test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
        train, test = Split(x[train_idx], y[train_idx]), Split(x[test_idx], y[test_idx])
        name += f" (a seeded {int(100 * DIGITS_TEST_FRACTION)} % held out for evaluation)"
    else:
        xt, yt, eval_given = collect(eval_data, input_fn=input_fn, labeler=labeler)
        if xt.shape[1:] != x.shape[1:]:
            raise HawqError(f"eval_data samples have shape {xt.shape[1:]}, data samples {x.shape[1:]}")
        train, test = Split(x, y), Split(xt, yt)
        given = given and eval_given
        name += f", eval {describe(eval_data)}"
    if not given:
        name += f"; {FLOAT_MODEL_LABELS}"
    top = int(max(train.y.max(), test.y.max()))
    if top >= num_classes:
        raise HawqError(f"labels go up to {top}, but the model has {num_classes} outputs")
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:calibration_size])
    return Dataset(name, train, Split(train.x[idx], train.y[idx]), test, num_classes, labels_given=given)
