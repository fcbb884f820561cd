"""Streamed data: a DataLoader is read batch by batch on every pass, never held whole, and gives
the same splits as the same samples held as arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from hawq_onnx.errors import HawqError
from hawq_onnx.sources.splits import Split
from hawq_onnx.sources.stream import StreamSplit
from hawq_onnx.sources.user_data import as_dataset, split_batch

N = 103


def arrays(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 2, 3)).astype(np.float32), (np.arange(n) % 5).astype(np.int64)


def loader(n: int = N, batch: int = 7) -> DataLoader:
    x, y = arrays(n)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch)


def stream(n: int = N, keep: np.ndarray | None = None) -> StreamSplit:
    length = n if keep is None else int(keep.sum())
    return StreamSplit(loader(n), length=length, sample_shape=(2, 3), read=lambda b: split_batch(b), keep=keep)


def cat(batches) -> tuple[np.ndarray, np.ndarray]:
    parts = list(batches)
    return np.concatenate([x.numpy() for x, _ in parts]), np.concatenate([y.numpy() for _, y in parts])


def test_batches_are_recut_in_order():
    x, y = arrays()
    sizes = [len(b[0]) for b in stream().batches(10)]
    assert sizes == [10] * 10 + [3]
    got_x, got_y = cat(stream().batches(10))
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert [len(b[0]) for b in stream().batches(10, drop_last=True)] == [10] * 10
    assert len(list(stream().batches(10, limit=3))) == 3


def test_shuffled_batches_are_a_seeded_permutation(monkeypatch):
    import hawq_onnx.sources.stream as module

    monkeypatch.setattr(module, "SHUFFLE_BUFFER", 32)  # a buffer smaller than the data: still every sample once
    x, _ = arrays()
    a, _ = cat(stream().batches(8, shuffle=True, seed=3))
    b, _ = cat(stream().batches(8, shuffle=True, seed=3))
    c, _ = cat(stream().batches(8, shuffle=True, seed=4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, x)
    assert sorted(map(tuple, a.reshape(N, -1).tolist())) == sorted(map(tuple, x.reshape(N, -1).tolist()))


def test_keep_take_subset_and_gather_match_the_arrays():
    x, y = arrays()
    keep = np.arange(N) % 3 != 0
    s = stream(keep=keep)
    kx, ky = x[keep], y[keep]
    np.testing.assert_array_equal(cat(s.batches(16))[0], kx)
    assert len(s) == len(kx) and len(s.take(5)) == 5
    np.testing.assert_array_equal(cat(s.take(5).batches(2))[1], ky[:5])
    sub_stream = s.subset(0.3, seed=2, total=N)
    sub_array = Split(kx, ky).subset(0.3, seed=2)
    np.testing.assert_array_equal(cat(sub_stream.batches(16))[0], sub_array.x)
    gx, gy = s.gather(np.array([0, 4, 50, len(kx) - 1]))
    np.testing.assert_array_equal(gx, kx[[0, 4, 50, len(kx) - 1]])


def test_a_dataloader_gives_the_same_dataset_as_its_arrays():
    x, y = arrays()
    held = as_dataset((x, y), num_classes=5, seed=0, calibration_size=16)
    streamed = as_dataset(loader(), num_classes=5, seed=0, calibration_size=16)
    assert isinstance(streamed.train, StreamSplit) and isinstance(held.train, Split)
    for name in ("train", "test"):
        sx, sy = cat(getattr(streamed, name).batches(50))
        np.testing.assert_array_equal(sx, getattr(held, name).x)
        np.testing.assert_array_equal(sy, getattr(held, name).y)
    np.testing.assert_array_equal(streamed.calib.x, held.calib.x)
    assert streamed.samples == N and streamed.labels_given


def test_unlabelled_stream_is_labelled_by_the_labeler():
    x, _ = arrays()
    data = DataLoader(torch.from_numpy(x), batch_size=9)
    ds = as_dataset(data, num_classes=5, labeler=lambda v: np.full(len(v), 4, np.int64), calibration_size=8)
    assert not ds.labels_given and "float model" in ds.name
    assert set(cat(ds.train.batches(20))[1].tolist()) == {4}


class Passes(IterableDataset):
    """An iterable source whose passes differ: more samples, or another order, each time."""

    def __init__(self, grow: bool):
        self.grow, self.passes = grow, 0

    def __iter__(self):
        self.passes += 1
        n = 20 + (5 * self.passes if self.grow else 0)
        order = range(n) if self.grow else np.random.default_rng(self.passes).permutation(n)
        for i in order:
            yield torch.full((2,), float(i)), 0


@pytest.mark.parametrize("grow, message", [(True, "more samples"), (False, "another order")])
def test_an_iterable_that_changes_between_passes_is_refused(grow, message):
    data = DataLoader(Passes(grow), batch_size=4)
    with pytest.raises(HawqError, match=message):
        ds = as_dataset(data, num_classes=1, calibration_size=4)  # one pass scans, the next gathers
        list(ds.train.batches(4))


def test_a_shuffled_dataloader_is_read_by_index():
    """A loader's own shuffle=True does not move samples between the hold-out and training."""
    x, y = arrays()
    shuffled = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=7, shuffle=True)
    held = as_dataset((x, y), num_classes=5, calibration_size=16)
    streamed = as_dataset(shuffled, num_classes=5, calibration_size=16)
    for _ in range(2):
        np.testing.assert_array_equal(cat(streamed.test.batches(50))[0], held.test.x)


def test_a_subset_sampler_is_kept_and_other_samplers_are_iterated():
    from torch.utils.data import SubsetRandomSampler, WeightedRandomSampler

    x, y = arrays()
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    train = DataLoader(ds, batch_size=8, sampler=SubsetRandomSampler(range(10, 60)))
    test = DataLoader(ds, batch_size=8, sampler=SubsetRandomSampler(range(60, 80)))
    d = as_dataset(train, test, num_classes=5, calibration_size=4)
    np.testing.assert_array_equal(cat(d.train.batches(16))[0], x[10:60])
    np.testing.assert_array_equal(cat(d.test.batches(16))[0], x[60:80])
    weighted = DataLoader(ds, batch_size=8, sampler=WeightedRandomSampler(np.ones(N), N))
    with pytest.raises(HawqError, match="another order"):  # a random multiset: iterated, and caught
        ds2 = as_dataset(weighted, num_classes=5, calibration_size=4)
        list(ds2.train.batches(8))


def test_the_loaders_collate_fn_is_used_from_the_first_pass():
    raw = (np.arange(N * 6) % 256).astype(np.uint8).reshape(N, 2, 3)
    ds = TensorDataset(torch.from_numpy(raw), torch.from_numpy(np.arange(N) % 5))

    def to_float(samples):
        xs, ys = zip(*samples)
        return torch.stack(xs).float() / 255, torch.stack(ys)

    d = as_dataset(DataLoader(ds, batch_size=8, collate_fn=to_float), num_classes=5, calibration_size=4)
    got = cat(d.test.batches(50))[0]
    assert got.dtype == np.float32 and got.max() <= 1.0


def test_arrays_as_numpy_gives_them_and_iterable_datasets_are_batched():
    x, y = arrays()
    flipped = as_dataset((x[:, :, ::-1], y[::-1].astype(np.uint32)), num_classes=5, calibration_size=4)
    assert len(flipped.train) + len(flipped.test) == N
    swapped = as_dataset((x.astype(">f4"), y), num_classes=5, calibration_size=4)
    np.testing.assert_array_equal(swapped.test.x, as_dataset((x, y), num_classes=5, calibration_size=4).test.x)

    class Samples(IterableDataset):
        def __iter__(self):
            for i in range(N):
                yield torch.from_numpy(x[i]), int(y[i])

    d = as_dataset(Samples(), num_classes=5, calibration_size=4)
    assert d.samples == N and d.train.sample_shape == (2, 3)


def test_option_errors_leave_other_braces_alone():
    from hawq_onnx.errors import OptionError

    exc = OptionError("layer 'a{1}{x}' in {keep_float} is not {pins}", "keep_float", "pins")
    assert str(exc) == "layer 'a{1}{x}' in keep_float is not pins"
    assert exc.render(lambda p: "--" + p) == "layer 'a{1}{x}' in --keep_float is not --pins"
