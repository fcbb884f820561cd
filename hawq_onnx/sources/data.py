"""Data sources named by ``--data``: ``digits``, ``cifar10:DIR``, ``npz:FILE``, ``imagefolder:DIR``.

Each gives train, calibration and evaluation splits already scaled to [0, 1], laid out as the
model's input (NCHW), and normalised with the model spec's mean and std. The array sources are
held in memory; ``imagefolder:DIR`` (``sources.imagefolder``) is decoded as it is read, streamed
like data a Python caller passes as a DataLoader (``sources.stream.StreamSplit``). The stages
read either kind through ``batches``, ``take``, ``subset`` and ``sample_shape``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError
from hawq_onnx.models.spec import ModelSpec
from hawq_onnx.sources import imagefolder
from hawq_onnx.sources.cifar_pickle import read_cifar_batch
from hawq_onnx.sources.splits import (
    CALIBRATION_SIZE,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    Dataset,
    Split,
    stratified_holdout,
)


def _stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    mask = stratified_holdout(y, test_fraction, seed)
    return x[~mask], y[~mask], x[mask], y[mask]


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # N,1,8,8 in [0,1]
    y = d.target.astype(np.int64)
    return _stratified_split(x, y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``cifar-10-batches-py`` file, through an unpickler that admits only numpy's array
    reconstruction: a crafted batch is refused, never run (``sources.cifar_pickle``)."""
    return read_cifar_batch(path)


def _load_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not folder.is_dir():
        raise HawqError(f"CIFAR-10 folder {folder} does not exist")
    if (folder / "train.npz").is_file() and (folder / "test.npz").is_file():
        tr = _read_npz(folder / "train.npz")
        te = _read_npz(folder / "test.npz")
        return tr[0], tr[1], te[0], te[1]
    batches = folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() else folder
    train_files = [batches / f"data_batch_{i}" for i in range(1, 6)]
    if all(p.is_file() for p in train_files) and (batches / "test_batch").is_file():
        parts = [_read_cifar_batch(p) for p in train_files]
        xt, yt = _read_cifar_batch(batches / "test_batch")
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt)
    raise HawqError(f"{folder} holds neither train.npz/test.npz nor the cifar-10-batches-py files")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    inputs, y = _read_npz_arrays(path)
    if list(inputs) != ["x"]:
        raise HawqError(f"data file {path} must hold arrays 'x' and 'y' (it has {', '.join(inputs)}, y); named "
                        "arrays are inputs of a model that takes several (one declaring no input shape)")
    return inputs["x"], y


def _read_npz_arrays(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The labels ``y`` and every other array of an npz file, by name, in the file's order."""
    if not path.is_file():
        raise HawqError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "y" not in z or len(z.files) < 2:
                raise HawqError(f"data file {path} must hold arrays 'x' and 'y' (or 'y' and one array per named "
                                f"input; it has {', '.join(z.files) or 'none'})")
            return {k: np.asarray(z[k]) for k in z.files if k != "y"}, np.asarray(z["y"])
    except HawqError:
        raise
    except Exception as exc:
        raise HawqError(f"data file {path} is not a readable .npz ({exc.__class__.__name__})") from None


def _prepare_named(inputs: dict[str, np.ndarray], y: np.ndarray, signature: model_inputs.Signature, where: str,
                   num_classes: int | None) -> Split:
    """Arrays taken as the model's inputs as they are (no scaling or normalisation: token ids and
    masks are not images), floats as float32, checked against the model's signature."""
    for name, a in inputs.items():
        _checked_samples(a, y, f"{where}, array {name!r}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise HawqError(f"{where}: array {name!r} holds NaN or Inf")
    _, y = _checked_samples(next(iter(inputs.values())), y, where)
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise HawqError(f"{where}: labels out of range [0, {num_classes}) (min {y.min()}, max {y.max()})")
    arrays = {k: np.ascontiguousarray(a, np.float32 if a.dtype.kind == "f" else None) for k, a in inputs.items()}
    x: model_inputs.Arrays = arrays
    if signature.form == "single":
        x = next(iter(arrays.values()))
    elif signature.form == "positional":
        x = tuple(arrays.values())
    if model_inputs.shape_of(x, signature.names) != signature:
        raise HawqError(f"{where}: the arrays ({model_inputs.describe(model_inputs.shape_of(x, signature.names))}) "
                        f"do not fit the model's inputs ({signature.describe()})")
    return Split(x, y)


def _to_unit_range(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def _to_model_layout(x: np.ndarray, input_shape: tuple[int, ...], where: str) -> np.ndarray:
    if tuple(x.shape[1:]) == tuple(input_shape):
        return x
    # Images stored channels-last (N,H,W,C) for a model that takes N,C,H,W.
    if x.ndim == 4 and len(input_shape) == 3 and tuple(x.shape[1:]) == (input_shape[1], input_shape[2], input_shape[0]):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 3 and len(input_shape) == 3 and input_shape[0] == 1 and tuple(x.shape[1:]) == tuple(input_shape[1:]):
        return x[:, None]
    raise HawqError(f"{where}: samples of shape {tuple(x.shape[1:])} do not fit the model input {tuple(input_shape)}")


def _normalise(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    if spec.mean is None or spec.std is None:
        return x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = np.asarray(spec.mean, np.float32).reshape(shape)
    std = np.asarray(spec.std, np.float32).reshape(shape)
    return ((x - mean) / std).astype(np.float32)


def _checked_samples(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` real numbers with one label each in ``y``; labels as int64 (whole-valued floats allowed)."""
    if len(x) == 0:
        raise HawqError(f"{where}: no samples; give at least one sample")
    if len(x) != len(y):
        raise HawqError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise HawqError(f"{where}: inputs must be an integer or float array, got {x.dtype}")
    whole_floats = (np.issubdtype(y.dtype, np.floating) and y.ndim == 1 and np.isfinite(y).all()
                    and bool((y == np.round(y)).all()))
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or whole_floats):
        raise HawqError(f"{where}: labels must be a 1-D array of class indices (integers), got {y.dtype} "
                        f"{tuple(y.shape)}")
    return x, y.astype(np.int64)


def _prepare(x: np.ndarray, y: np.ndarray, spec: ModelSpec, where: str, num_classes: int | None) -> Split:
    x, y = _checked_samples(x, y, where)
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise HawqError(f"{where}: labels out of range [0, {num_classes}) (min {y.min()}, max {y.max()})")
    xf = _to_unit_range(x)
    if not np.isfinite(xf).all():
        raise HawqError(f"{where}: inputs hold NaN or Inf")
    xf = _to_model_layout(xf, spec.input_shape, where)
    return Split(np.ascontiguousarray(_normalise(xf, spec)), y.astype(np.int64))


def resolve_source(source: str | None, spec: ModelSpec) -> str:
    """``--data`` as given, else the model's embedded default (digits for the digits CNN)."""
    if source:
        return source
    default = spec.extra.get("default_data")
    if default is None:
        raise HawqError(f"model {spec.name} has no embedded data: pass --data (digits, cifar10:DIR, npz:FILE "
                        "or imagefolder:DIR)")
    return default


def sample_shape(source: str | None) -> model_inputs.InputShape | None:
    """One input sample's shape (no batch) in ``source``, for a model that declares none.

    Reads only the headers of an npz file's arrays. Channels-last images (N, H, W, 1|3) give
    (C, H, W), the layout the data is fed in; named arrays besides ``y`` (or an integer ``x``
    other than uint8 pixels) give the signature of a model taking them as they are. None where
    the source says nothing readable: the loader reports that properly later."""
    if not source:
        return None
    kind, _, arg = source.partition(":")
    if kind == "digits" and not arg:
        return (1, 8, 8)
    if kind == "cifar10" and arg:
        return (3, 32, 32)
    if kind == "imagefolder" and arg:
        return imagefolder.sample_shape(arg)
    if kind != "npz" or not arg:
        return None
    try:
        headers = _npz_headers(arg.split(",")[0])
    except Exception:  # anything unreadable: load_data says what is wrong with the file
        return None
    headers.pop("y", None)
    if not headers:
        return None
    if list(headers) != ["x"] or headers["x"][1].kind not in "uf":
        # Named arrays, or integer inputs other than uint8 images: the model's inputs as they are.
        return model_inputs.Signature(tuple(model_inputs.InputSpec(k, tuple(int(d) for d in shape[1:]),
                                                                   str(np.dtype(np.float32) if dt.kind == "f" else dt))
                                            for k, (shape, dt) in headers.items()),
                                      "keyword" if list(headers) != ["x"] else "single")
    sample = tuple(int(d) for d in headers["x"][0][1:])
    if len(sample) == 3 and sample[2] in (1, 3) and sample[0] > 4 and sample[1] > 4:
        return (sample[2], sample[0], sample[1])
    return sample or None


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of an npz file, from the headers only."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if not member.endswith(".npy"):
                continue
            with z.open(member) as f:
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
                shape, _, dtype = read_header(f)
            out[member[:-4]] = (tuple(shape), np.dtype(dtype))
    return out


def _load_named(source: str, files: list[str], spec: ModelSpec, num_classes: int | None) -> tuple[Split, Split]:
    if len(files) == 2:
        tr, te = _read_npz_arrays(Path(files[0])), _read_npz_arrays(Path(files[1]))
        return (_prepare_named(*tr, spec.input_shape, f"{source} (train)", num_classes),
                _prepare_named(*te, spec.input_shape, f"{source} (test)", num_classes))
    whole = _prepare_named(*_read_npz_arrays(Path(files[0])), spec.input_shape, source, num_classes)
    test_mask = stratified_holdout(whole.y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return (Split(model_inputs.take(whole.x, ~test_mask), whole.y[~test_mask]),
            Split(model_inputs.take(whole.x, test_mask), whole.y[test_mask]))


def load_data(source: str, spec: ModelSpec, calibration_size: int = CALIBRATION_SIZE, seed: int = 0) -> Dataset:
    """Parse a ``--data`` value and load it for the model described by ``spec``."""
    kind, _, arg = source.partition(":")
    if kind == "imagefolder":
        return imagefolder.load(source, spec, calibration_size, seed)
    num_classes = spec.num_classes
    if kind == "digits" and not arg:
        x_tr, y_tr, x_te, y_te = _load_digits()
        num_classes = num_classes or 10
    elif kind == "cifar10" and arg:
        x_tr, y_tr, x_te, y_te = _load_cifar10(Path(arg))
        num_classes = num_classes or 10
    elif kind == "npz" and arg and not model_inputs.is_single(spec.input_shape):
        train, test = _load_named(source, arg.split(","), spec, num_classes)
        return _dataset(source, train, test, num_classes, calibration_size, seed)
    elif kind == "npz" and arg:
        # One file: a fixed 80/20 stratified split; train and test files: npz:TRAIN,TEST.
        files = arg.split(",")
        if len(files) == 2:
            x_tr, y_tr = _read_npz(Path(files[0]))
            x_te, y_te = _read_npz(Path(files[1]))
        else:
            x, y = _checked_samples(*_read_npz(Path(arg)), f"data file {arg}")
            x_tr, y_tr, x_te, y_te = _stratified_split(x, y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    else:
        raise HawqError(f"unknown data source {source!r}: use digits, cifar10:DIR, npz:FILE or imagefolder:DIR")
    if not model_inputs.is_single(spec.input_shape):
        raise HawqError(f"{source}: the model takes {model_inputs.describe(spec.input_shape)}; give it an npz file "
                        "with one array per input (and 'y')")
    train = _prepare(x_tr, y_tr, spec, f"{source} (train)", num_classes)
    test = _prepare(x_te, y_te, spec, f"{source} (test)", num_classes)
    return _dataset(source, train, test, num_classes, calibration_size, seed)


def _dataset(source: str, train: Split, test: Split, num_classes: int | None, calibration_size: int,
             seed: int) -> Dataset:
    classes = num_classes or int(max(train.y.max(), test.y.max())) + 1
    # A fixed, seeded calibration subset of the training split: never the evaluation data.
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:calibration_size])
    calib = Split(model_inputs.take(train.x, idx), train.y[idx])
    return Dataset(source, train, calib, test, classes)
