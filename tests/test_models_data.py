"""Zoo, model sources and data sources."""

from __future__ import annotations

import pickle
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hawq_onnx.models.registry import ZOO

from hawq_onnx.cli import cli
from hawq_onnx.core.layers import describe_layers
from hawq_onnx.errors import HawqError
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model, model_fingerprint, parse_input_shape


def test_digits_split_is_fixed_and_stratified():
    ds = load_data("digits", ZOO["digits-cnn"])
    again = load_data("digits", ZOO["digits-cnn"])
    assert len(ds.train) + len(ds.test) == 1797
    assert np.array_equal(ds.test.y, again.test.y) and np.array_equal(ds.test.x, again.test.x)
    counts = np.bincount(ds.test.y, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # ~20 % of each class
    assert ds.train.x.shape[1:] == (1, 8, 8) and ds.train.x.dtype == np.float32
    assert len(ds.calib) == 512 and set(map(bytes, ds.calib.x[:5])) <= set(map(bytes, ds.train.x))


def test_embedded_digits_model_accuracy():
    loaded = load_model("digits-cnn")
    ds = load_data("digits", loaded.spec)
    with torch.no_grad():
        acc = (loaded.module(torch.from_numpy(ds.test.x)).argmax(1).numpy() == ds.test.y).mean()
    assert acc >= 0.97


def test_resnet_zoo_layers_and_macs():
    loaded = load_model("resnet20-cifar10")
    layers = describe_layers(loaded.module, loaded.spec.input_shape)
    assert len(layers) == 20
    assert sum(layer.params for layer in layers) == 268_336  # 19 convs 267,696 + linear 640
    assert sum(layer.macs for layer in layers) == 40_551_040
    assert sum(p.numel() for p in loaded.module.parameters()) == 269_722
    for depth in (32, 44, 56):
        assert len(describe_layers(load_model(f"resnet{depth}-cifar10").module, (3, 32, 32))) == 6 * ((depth - 2) // 6) + 2


def test_shared_resnet20_checkpoint_loads(resnet20_ckpt):
    loaded = load_model("resnet20-cifar10", str(resnet20_ckpt))
    assert loaded.weights == str(resnet20_ckpt)
    assert loaded.module.conv1.weight.abs().sum() > 0


def test_user_model_file_and_module(tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text(textwrap.dedent("""
        import torch.nn as nn
        def make():
            m = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
            return m
        def declared():
            m = make()
            m.input_shape = (3, 4)
            return m
        def broken():
            raise ValueError("no such width")
        def not_a_module():
            return 3
    """))
    with pytest.raises(HawqError, match="declares no input shape"):
        load_model(f"{f}:make")
    assert load_model(f"{f}:make", input_shape=(12,)).spec.input_shape == (12,)
    assert load_model(f"{f}:declared").spec.input_shape == (3, 4)
    with pytest.raises(HawqError, match="raised ValueError: no such width"):
        load_model(f"{f}:broken", input_shape=(12,))
    with pytest.raises(HawqError, match="not a torch.nn.Module"):
        load_model(f"{f}:not_a_module", input_shape=(12,))
    with pytest.raises(HawqError, match="has no callable"):
        load_model(f"{f}:missing", input_shape=(12,))
    with pytest.raises(HawqError, match="does not exist"):
        load_model(f"{tmp_path}/nope.py:make")
    m = load_model("hawq_onnx.models.digits_cnn:DigitsCNN", input_shape=(1, 8, 8))  # package.module:factory
    assert type(m.module).__name__ == "DigitsCNN" and m.spec.input_shape == (1, 8, 8)


def test_input_shape_from_the_data(tmp_path):
    from hawq_onnx.sources.data import sample_shape

    f = tmp_path / "mymodel.py"
    f.write_text("import torch.nn as nn\n"
                 "def make():\n    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 30, 3))\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "seq.npz", x=rng.normal(size=(40, 2, 32)).astype(np.float32), y=rng.integers(0, 3, 40))
    np.savez(tmp_path / "hwc.npz", x=rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8), y=rng.integers(0, 3, 40))
    assert sample_shape(f"npz:{tmp_path}/seq.npz") == (2, 32)
    assert sample_shape(f"npz:{tmp_path}/hwc.npz,{tmp_path}/seq.npz") == (3, 16, 16)  # fed as C,H,W
    assert sample_shape("digits") == (1, 8, 8) and sample_shape("cifar10:anywhere") == (3, 32, 32)
    assert sample_shape(f"npz:{tmp_path}/missing.npz") is None and sample_shape(None) is None
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert sample_shape(f"npz:{tmp_path}/junk.npz") is None
    loaded = load_model(f"{f}:make", data_shape=sample_shape(f"npz:{tmp_path}/seq.npz"))
    assert loaded.spec.input_shape == (2, 32)
    assert load_model(f"{f}:make", input_shape=(2, 32), data_shape=(9, 9)).spec.input_shape == (2, 32)
    with pytest.raises(HawqError, match=r"does not run on an input of shape \(1, 3, 16, 16\)"):
        load_model(f"{f}:make", data_shape=(3, 16, 16))
    out = tmp_path / "s.json"
    res = CliRunner().invoke(cli, ["analyze", "--model", f"{f}:make", "--data", f"npz:{tmp_path}/seq.npz",
                                   "--batch-size", "16", "--trace-tol", "0.2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()


def test_weights_errors(tmp_path):
    loaded = load_model("digits-cnn")
    good = tmp_path / "w.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in loaded.module.state_dict().items()}}, good)
    assert load_model("digits-cnn", str(good)).module.fc.weight.equal(loaded.module.fc.weight)
    wrong = tmp_path / "wrong.pt"
    torch.save(load_model("resnet20-cifar10").module.state_dict(), wrong)
    with pytest.raises(HawqError, match="do not fit the model"):
        load_model("digits-cnn", str(wrong))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(HawqError, match="is empty"):
        load_model("digits-cnn", str(empty))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(HawqError, match="not a readable torch checkpoint"):
        load_model("digits-cnn", str(junk))
    sd = loaded.module.state_dict()
    sd["fc.weight"][0, 0] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save(sd, nan)
    with pytest.raises(HawqError, match="fc.weight holds NaN"):
        load_model("digits-cnn", str(nan))


def test_fingerprint_depends_on_architecture_only():
    a, b = load_model("resnet20-cifar10").module, load_model("resnet20-cifar10").module
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(load_model("resnet32-cifar10").module)


@pytest.mark.parametrize("text,expected", [("3,32,32", (3, 32, 32)), ("1x8x8", (1, 8, 8)), (None, None)])
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["3,a", "0,3", "-1"])
def test_parse_input_shape_errors(text):
    with pytest.raises(HawqError):
        parse_input_shape(text)


def _write_cifar_batches(folder, n=20):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)


def test_cifar_python_batches_and_npz_agree(tmp_path):
    spec = ZOO["resnet20-cifar10"]
    _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    ds = load_data(f"cifar10:{tmp_path}", spec)
    assert len(ds.train) == 100 and len(ds.test) == 20 and ds.train.x.shape[1:] == (3, 32, 32)
    # Same pixels stored as HWC npz give the same tensors.
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    hwc = np.asarray(d[b"data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.savez(tmp_path / "t.npz", x=hwc, y=np.asarray(d[b"labels"]))
    npz = load_data(f"npz:{tmp_path}/t.npz,{tmp_path}/t.npz", spec)
    assert np.allclose(npz.test.x, ds.test.x)


def test_shared_cifar_npz(cifar_dir):
    ds = load_data(f"cifar10:{cifar_dir}", ZOO["resnet20-cifar10"])
    assert len(ds.train) == 50_000 and len(ds.test) == 10_000
    assert np.bincount(ds.test.y).tolist() == [1000] * 10


@pytest.mark.parametrize("make,match", [
    (lambda p: np.savez(p, x=np.zeros((4, 1, 8, 8)), y=np.array([0, 1, 2, 10])), "labels out of range"),
    (lambda p: np.savez(p, x=np.zeros((4, 1, 7, 7)), y=np.zeros(4, int)), "do not fit the model input"),
    (lambda p: np.savez(p, x=np.zeros((0, 1, 8, 8)), y=np.zeros(0, int)), "at least one sample"),
    (lambda p: np.savez(p, a=np.zeros(3)), "must hold arrays 'x' and 'y'"),
    (lambda p: np.savez(p, x=np.full((5, 1, 8, 8), np.nan), y=np.zeros(5, int)), "NaN"),
    (lambda p: open(p, "wb").write(b"garbage"), "not a readable .npz"),
    (lambda p: np.savez(p, x=np.array(["a"] * 5), y=np.zeros(5, int)), "inputs must be an integer or float array"),
    (lambda p: np.savez(p, x=np.zeros((5, 1, 8, 8)), y=np.linspace(0, 1, 5)), "labels must be a 1-D array of class"),
    (lambda p: np.savez(p, x=np.zeros((5, 1, 8, 8)), y=np.zeros((5, 2), int)), "labels must be a 1-D array of class"),
    (lambda p: np.savez(p, x=np.zeros((5, 1, 8, 8)), y=np.zeros(4, int)), "5 inputs but 4 labels"),
])
def test_bad_npz(tmp_path, make, match):
    p = tmp_path / "d.npz"
    make(str(p))
    with pytest.raises(HawqError, match=match):
        load_data(f"npz:{p}", ZOO["digits-cnn"])
    with pytest.raises(HawqError, match=match):  # the same checks with separate train and test files
        load_data(f"npz:{p},{p}", ZOO["digits-cnn"])


def test_whole_valued_float_labels_are_class_indices(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 50)
    np.savez(tmp_path / "int.npz", x=x, y=y)
    np.savez(tmp_path / "float.npz", x=x, y=y.astype(np.float32))
    a, b = (load_data(f"npz:{tmp_path}/{n}.npz", ZOO["digits-cnn"]) for n in ("int", "float"))
    assert b.train.y.dtype == np.int64 and np.array_equal(a.train.y, b.train.y) and np.array_equal(a.test.y, b.test.y)


@pytest.mark.parametrize("source", ["imagenet", "cifar10:/nonexistent", "npz:/nonexistent.npz", "digits:x"])
def test_bad_sources(source):
    with pytest.raises(HawqError):
        load_data(source, ZOO["resnet20-cifar10"])
