"""Float export and `inspect`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.core.onnx_inspect import inspect_onnx
from hawq_onnx.onnx_export.float_onnx import float_onnx
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def digits_float():
    loaded = load_model("digits-cnn")
    reference = load_model("digits-cnn").module
    pairs = fold_batchnorm(loaded.module, loaded.spec.input_shape)
    return loaded, reference, pairs, float_onnx(loaded.module, loaded.spec.input_shape)


def test_bn_fold_is_exact_and_keeps_names(digits_float):
    loaded, reference, pairs, proto = digits_float
    assert len(pairs) == 5
    x = torch.from_numpy(load_data("digits", loaded.spec).test.x)
    with torch.no_grad():
        assert (loaded.module(x) - reference(x)).abs().max() < 1e-4
    names = {i.name for i in proto.graph.initializer}
    assert {"stem.weight", "block_conv1.weight", "fc.weight"} <= names
    stem = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "stem.weight"))
    assert np.allclose(stem, loaded.module.stem.weight.detach().numpy())  # the folded weight


def test_float_export_matches_torch_on_real_data(digits_float):
    loaded, reference, _, proto = digits_float
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 21
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    ds = load_data("digits", loaded.spec)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 360):  # dynamic batch dimension
        x = ds.test.x[:batch]
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        assert np.abs(sess.run(None, {"input": x})[0] - expected).max() <= 1e-4


def test_inspect_float_digits(digits_float):
    *_, proto = digits_float
    ins = inspect_onnx(proto)
    assert [r.layer for r in ins.layers] == ["stem", "block_conv1", "block_conv2", "down", "conv", "fc"]
    # conv MACs: out elements x (C_in * k * k); fc: 10 x 32
    assert [r.macs for r in ins.layers] == [64 * 16 * 9, 64 * 16 * 144, 64 * 16 * 144, 16 * 32 * 144,
                                            16 * 32 * 288, 320]
    assert all(r.storage == "float32" and r.bits == 32 and r.act_bits is None for r in ins.layers)


def _qdq_graph(bits_dtype, values, clip_levels=None):
    """x -> Q(uint8) [-> Clip] -> DQ -> Conv(W: intN -> Cast(int8) -> DQ)."""
    w = np.array(values, dtype=np.int8).reshape(2, 1, 1, 2)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xc" if clip_levels else "xq", "s", "zp"], ["xd"]),
             helper.make_node("Cast", ["w"], ["w8"], to=TensorProto.INT8),
             helper.make_node("DequantizeLinear", ["w8", "ws", "wzp"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"])]
    inits = [helper.make_tensor("w", bits_dtype, w.shape, w.flatten().tolist()),
             numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "zp"),
             numpy_helper.from_array(np.full(2, 0.05, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(2, np.int8), "wzp")]
    if clip_levels:
        nodes.insert(1, helper.make_node("Clip", ["xq", "lo", "hi"], ["xc"]))
        inits += [numpy_helper.from_array(np.uint8(0), "lo"), numpy_helper.from_array(np.uint8(clip_levels - 1), "hi")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)], ir_version=13)


@pytest.mark.parametrize("dtype,values,storage,bits", [
    (TensorProto.INT4, [-7, 7, 3, -3], "int4", 4),
    (TensorProto.INT4, [-3, 3, 1, 0], "int4", 3),
    (TensorProto.INT2, [-1, 1, 0, 1], "int2", 2),
    (TensorProto.INT8, [-100, 127, 3, 0], "int8", 8),
])
def test_inspect_traces_packed_weights(dtype, values, storage, bits):
    ins = inspect_onnx(_qdq_graph(dtype, values))
    (row,) = ins.layers
    assert (row.storage, row.bits, row.act_bits, row.params) == (storage, bits, 8, 4)
    assert row.macs == 2 * 3 * 3 * 2  # output 1x2x3x3, 2 MACs per output


def test_inspect_sees_4bit_activations():
    (row,) = inspect_onnx(_qdq_graph(TensorProto.INT4, [1, 2, 3, 4], clip_levels=16)).layers
    assert row.act_bits == 4


class _OptionAShortcut(torch.nn.Module):
    """A strided slice and a channel Pad before a conv: what TorchScript exports of option-A ResNets."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        y = torch.nn.functional.pad(self.a(x)[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        return self.fc(self.b(y).mean((2, 3)))


def test_inspect_counts_macs_where_shape_inference_gives_up():
    from hawq_onnx.core.onnx_shapes import _infer_shapes_batch1
    from hawq_onnx.onnx_export.float_onnx import _export_torchscript

    with warnings.catch_warnings():  # TorchScript says it cannot constant-fold the strided Slice
        warnings.simplefilter("ignore")
        proto = _export_torchscript(_OptionAShortcut().eval(), torch.randn(2, 3, 8, 8), ["input"], 21)
    static = _infer_shapes_batch1(proto)
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [n.output[0] in static for n in layers] == [True, False, False]
    ins = inspect_onnx(proto)
    assert [row.macs for row in ins.layers] == [8 * 8 * 8 * 27, 16 * 4 * 4 * 144, 4 * 16]
    assert ins.layer_macs == 13824 + 36864 + 64


def test_cli_export_and_inspect_json(tmp_path):
    out = tmp_path / "d.onnx"
    r = run_cli("export", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = run_cli("inspect", "--json", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["totals"]["layers"] == 6 and data["totals"]["file_bytes"] == out.stat().st_size


@pytest.mark.parametrize("content", [None, b"", b"\x08\x07garbage" * 10, b"not onnx"])
def test_cli_bad_onnx_one_line(tmp_path, content):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    r = run_cli("inspect", str(path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_cli_export_bad_model(tmp_path):
    r = run_cli("export", "--model", "nope", "--out", str(tmp_path / "x.onnx"))
    assert r.returncode == 2 and "unknown model" in r.stderr and not (tmp_path / "x.onnx").exists()


def test_resnet20_export_accuracy(resnet20_ckpt, cifar_dir):
    loaded = load_model("resnet20-cifar10", str(resnet20_ckpt))
    fold_batchnorm(loaded.module, loaded.spec.input_shape)
    proto = float_onnx(loaded.module, loaded.spec.input_shape)
    ins = inspect_onnx(proto)
    assert len(ins.layers) == 20 and ins.layer_macs == 40_551_040
    ds = load_data(f"cifar10:{cifar_dir}", loaded.spec)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(ds.test), 1000):
        correct += int((sess.run(None, {"input": ds.test.x[i:i + 1000]})[0].argmax(1) == ds.test.y[i:i + 1000]).sum())
    assert correct == 9173  # 91.73 %, the checkpoint's published figure
