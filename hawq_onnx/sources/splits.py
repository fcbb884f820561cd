"""The split and data set types every data source returns, and the constants they share.

They live apart from the loaders so that each loader (``sources.data`` for spec strings,
``sources.user_data`` for data held in Python, ``sources.imagefolder`` for image folders) can
import them without importing another loader: the loaders call each other one way only.
``sources.data`` re-exports ``Split`` and ``Dataset``, where existing code imports them from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError

# The share of a source without a test split that is held out for evaluation (digits, one npz
# file, an image folder without train/test, user data without eval_data).
DIGITS_TEST_FRACTION = 0.2
# Fixed, not --seed: every stage (analyze, finetune, export, validate) must hold out the same
# samples, or a stage run with another seed would evaluate on samples another one trained on.
DIGITS_SPLIT_SEED = 0
CALIBRATION_SIZE = 512


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the held-out samples: ``fraction`` of each class (rounded), seeded.

    Only the labels are needed, so a source can decide its split before decoding anything."""
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(len(idx) * fraction))])
    mask = np.zeros(len(y), bool)
    mask[np.array(test_idx, dtype=np.int64)] = True
    return mask


@dataclass
class Split:
    x: model_inputs.Arrays  # the model's inputs (float32 normalised, model layout; or several, see model_inputs)
    y: np.ndarray           # int64 class indices

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> model_inputs.InputShape:
        return model_inputs.shape_of(self.x)

    def take(self, n: int | None) -> "Split":
        return self if n is None or n >= len(self) else Split(model_inputs.take(self.x, slice(0, n)), self.y[:n])

    def subset(self, fraction: float, seed: int, total: int | None = None) -> "Split":
        """A seeded ``fraction`` of the samples, in their order (``total`` is for streamed splits)."""
        if fraction >= 1.0:
            return self
        n = max(1, int(round(len(self) * fraction)))
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return Split(model_inputs.take(self.x, idx), self.y[idx])

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                limit: int | None = None, drop_last: bool = False) -> Iterator[tuple[model_inputs.Batch, torch.Tensor]]:
        """Yield (x, y) torch tensors; ``limit`` caps the number of batches."""
        if batch_size <= 0:
            raise HawqError(f"batch size must be positive, got {batch_size}")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        count = 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            if limit is not None and count >= limit:
                break
            yield model_inputs.as_torch(model_inputs.take(self.x, idx)), torch.from_numpy(self.y[idx])
            count += 1


@dataclass
class Dataset:
    name: str
    train: Split
    calib: Split
    test: Split
    num_classes: int
    labels_given: bool = True  # False: the labels are the float model's top-1 (the data had none)
    samples: int | None = None  # samples in the source a streamed train/test split selects from
