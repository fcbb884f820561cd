"""A split read batch by batch from the user's data (a DataLoader, a torch Dataset, an iterable).

It holds no samples: every pass reads the source again, so memory stays that of a batch however
large the data set. Which samples belong to the split is a boolean mask over their positions
(a hold-out, a training fraction), decided once.

- A map-style torch Dataset (or a DataLoader over one with a sequential, random or subset
  sampler) is read by index, in the order the split asks for, with the loader's own collate_fn
  and workers: evaluation reads its samples in order, training in a seeded random order of
  exactly its samples, so a loader's own ``shuffle=True`` changes nothing (positions are the
  loader's indices, sorted).
- Any other iterable (an IterableDataset, a list of batches) is read in the order it gives, which
  must be the same on every pass (checked on the first sample); training shuffles within a
  seeded buffer of ``SHUFFLE_BUFFER`` samples.
Batches are re-cut to the size a stage asks for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, SubsetRandomSampler

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError

SHUFFLE_BUFFER = 4096
ARRAY_BATCH = 256  # arrays and map-style datasets are cut into batches of this size where none is given
Read = Callable[[Any], tuple[model_inputs.Batch, torch.Tensor]]


def _is_torch_dataset(data: Any) -> bool:
    return isinstance(data, torch.utils.data.Dataset) and not isinstance(data, IterableDataset)


def indexable(data: Any) -> tuple[torch.utils.data.Dataset, dict[str, Any]] | None:
    """The map-style dataset behind ``data``, how its loader batches it, and which of its indices
    the loader reads (``indices``: all for a sequential or random sampler, a subset sampler's
    own), or None where only iteration can tell (another sampler, a batch sampler)."""
    if isinstance(data, DataLoader) and _is_torch_dataset(data.dataset):
        sampler = data.sampler
        if data.batch_size is None:
            return None
        if isinstance(sampler, (SequentialSampler, RandomSampler)) and not getattr(sampler, "replacement", False) \
                and getattr(sampler, "_num_samples", None) is None:
            indices = np.arange(len(data.dataset))
        elif isinstance(sampler, SubsetRandomSampler):
            indices = np.sort(np.asarray(list(sampler.indices), np.int64))
        else:
            return None
        return data.dataset, {"collate_fn": data.collate_fn, "num_workers": data.num_workers,
                              "batch_size": data.batch_size, "indices": indices}
    if _is_torch_dataset(data):
        return data, {"collate_fn": None, "num_workers": 0, "batch_size": ARRAY_BATCH,
                      "indices": np.arange(len(data))}
    return None


def iter_batches(data: Any, batch_size: int = ARRAY_BATCH) -> Iterator[Any]:
    """The batches of ``data`` in a fixed order: arrays cut, a map-style dataset (or a DataLoader
    over one) read in index order, any other iterable as it comes."""
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
    if isinstance(data, dict) and data and all(isinstance(a, (np.ndarray, torch.Tensor)) for a in data.values()):
        sizes = {len(a) for a in data.values()}
        if len(sizes) > 1:
            raise HawqError(f"data: the arrays of the dict hold different numbers of samples ({sorted(sizes)})")
        for i in range(0, sizes.pop(), batch_size):
            yield {k: a[i:i + batch_size] for k, a in data.items()}
        return
    mapped = indexable(data)
    if mapped is not None:
        dataset, how = mapped
        yield from _indexed(dataset, how, how["indices"].tolist(), how["batch_size"])
        return
    if isinstance(data, IterableDataset):  # yields samples: batch them as a DataLoader would
        yield from DataLoader(data, batch_size=batch_size)
        return
    if not isinstance(data, Iterable):
        raise HawqError(f"data must be a DataLoader, a torch Dataset, an iterable of batches, arrays (x or (x, y)) "
                        f"or a spec string (digits, cifar10:DIR, npz:FILE); got {type(data).__name__}")
    yield from data


def _indexed(dataset, how: dict[str, Any], indices, batch_size: int) -> Iterator[Any]:
    kwargs = {"collate_fn": how["collate_fn"]} if how["collate_fn"] is not None else {}
    yield from DataLoader(dataset, batch_size=batch_size, sampler=list(indices), num_workers=how["num_workers"],
                          **kwargs)


class StreamSplit:
    """Samples of ``source`` whose position is set in ``keep`` (all when None), read per pass."""

    def __init__(self, source: Any, *, length: int, sample_shape: model_inputs.InputShape, read: Read,
                 keep: np.ndarray | None = None, limit: int | None = None, first: str | None = None) -> None:
        self.source = source
        self.read = read                  # one source batch -> (inputs, labels), checked and labelled
        self.keep = keep
        self.limit = limit
        self.first = first                # digest of the source's first sample: its order must not change
        self._length = length if limit is None else min(length, limit)
        self.sample_shape = sample_shape
        self._mapped = indexable(source)

    def __len__(self) -> int:
        return self._length

    def _replace(self, **changes: Any) -> "StreamSplit":
        args = dict(length=len(self), sample_shape=self.sample_shape, read=self.read, keep=self.keep,
                    limit=self.limit, first=self.first)
        args.update(changes)
        return StreamSplit(self.source, **args)

    def positions(self, total: int) -> np.ndarray:
        """Positions in the source of this split's samples (``total``: the source's sample count)."""
        kept = np.flatnonzero(self.keep) if self.keep is not None else np.arange(total)
        return kept if self.limit is None else kept[:self.limit]

    def _sequential(self) -> Iterator[tuple[model_inputs.Batch, torch.Tensor]]:
        """This split's samples in source order, from a source that can only be iterated."""
        position = taken = 0
        for batch in iter_batches(self.source):
            x, y = self.read(batch)
            if position == 0 and self.first is not None and len(y) and model_inputs.digest(x) != self.first:
                raise HawqError("the data gave its samples in another order than on the first pass: hawq-onnx "
                                "reads it several times and needs the same order each time (shuffling happens "
                                "inside hawq-onnx); pass a map-style Dataset or a DataLoader over one")
            n = len(y)
            if self.keep is not None:
                mask = torch.from_numpy(self.keep[position:position + n])
                if len(mask) != n:
                    raise HawqError("the data gave more samples on this pass than on the first: it must give the "
                                    "same samples on every pass")
                x, y = model_inputs.take(x, mask), y[mask]
            position += n
            if self.limit is not None:
                x, y = model_inputs.take(x, slice(0, self.limit - taken)), y[:self.limit - taken]
            if len(y):
                taken += len(y)
                yield x, y
            if self.limit is not None and taken >= self.limit:
                return

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, limit: int | None = None,
                drop_last: bool = False) -> Iterator[tuple[model_inputs.Batch, torch.Tensor]]:
        """(x, y) batches of ``batch_size``; ``limit`` caps the number of batches."""
        if batch_size <= 0:
            raise HawqError(f"batch size must be positive, got {batch_size}")
        if self._mapped is not None:
            dataset, how = self._mapped
            order = how["indices"][self.positions(len(how["indices"]))]
            if shuffle:
                order = order[np.random.default_rng(seed).permutation(len(order))]
            if drop_last:
                order = order[:len(order) - len(order) % batch_size]
            if limit is not None:
                order = order[:limit * batch_size]
            for batch in _indexed(dataset, how, order.tolist(), batch_size):
                yield self.read(batch)
            return
        yield from self._recut(batch_size, shuffle, seed, limit, drop_last)

    def _recut(self, batch_size: int, shuffle: bool, seed: int, limit: int | None,
               drop_last: bool) -> Iterator[tuple[model_inputs.Batch, torch.Tensor]]:
        rng = np.random.default_rng(seed)
        hold = max(SHUFFLE_BUFFER, batch_size) if shuffle else batch_size
        pool_x: list[model_inputs.Batch] = []
        pool_y: list[torch.Tensor] = []
        pooled = count = 0

        def cut(final: bool) -> Iterator[tuple[model_inputs.Batch, torch.Tensor]]:
            nonlocal pool_x, pool_y, pooled, count
            x, y = model_inputs.concat(pool_x), torch.cat(pool_y)
            if shuffle:
                order = torch.from_numpy(rng.permutation(len(y)))
                x, y = model_inputs.take(x, order), y[order]
            keep_from = len(y) if final else len(y) - (hold - batch_size)
            start = 0
            while start + batch_size <= keep_from or (final and start < len(y) and not drop_last):
                if limit is not None and count >= limit:
                    break
                yield model_inputs.take(x, slice(start, start + batch_size)), y[start:start + batch_size]
                count += 1
                start += batch_size
            pool_x, pool_y = [model_inputs.take(x, slice(start, None))], [y[start:]]
            pooled = len(y) - start

        for x, y in self._sequential():
            pool_x.append(x)
            pool_y.append(y)
            pooled += len(y)
            if pooled >= hold:
                yield from cut(final=False)
            if limit is not None and count >= limit:
                return
        if pooled:
            yield from cut(final=True)

    def take(self, n: int | None) -> "StreamSplit":
        return self if n is None or n >= len(self) else self._replace(limit=n)

    def subset(self, fraction: float, seed: int, total: int) -> "StreamSplit":
        """A seeded ``fraction`` of this split's samples (as ``Split.subset`` draws it)."""
        if fraction >= 1.0:
            return self
        mine = self.positions(total)
        n = max(1, int(round(len(mine) * fraction)))
        keep = np.zeros(total, bool)
        keep[mine[np.sort(np.random.default_rng(seed).permutation(len(mine))[:n])]] = True
        return self._replace(length=n, keep=keep, limit=None)

    def gather(self, indices: np.ndarray) -> tuple[model_inputs.Arrays, np.ndarray]:
        """The samples at ``indices`` (sorted positions within this split) as arrays."""
        wanted = np.asarray(indices, np.int64)
        if self._mapped is not None:
            dataset, how = self._mapped
            chosen = how["indices"][self.positions(len(how["indices"]))[wanted]]
            parts = [self.read(b) for b in _indexed(dataset, how, chosen.tolist(), ARRAY_BATCH)]
        else:
            parts, seen = [], 0
            for x, y in self._sequential():
                lo, hi = np.searchsorted(wanted, seen), np.searchsorted(wanted, seen + len(y))
                if hi > lo:
                    local = torch.from_numpy(wanted[lo:hi] - seen)
                    parts.append((model_inputs.take(x, local), y[local]))
                seen += len(y)
                if hi >= len(wanted):
                    break
        if not parts:
            return model_inputs.as_numpy(model_inputs.example(self.sample_shape, 0)), np.zeros(0, np.int64)
        return (model_inputs.concat([model_inputs.as_numpy(x) for x, _ in parts]),
                np.concatenate([y.numpy() for _, y in parts]))
