"""IntegerPadPass: DQ -> zero Pad -> Q of one grid becomes a Pad of the integers with the zero point."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hawq_onnx.passes.integer_pad import IntegerPadPass
from onnx import TensorProto, helper, numpy_helper

SCALE, ZERO_POINT = 0.05, 7
PADS = [0, 2, 0, 0, 0, 2, 0, 0]  # two zero channels on each side, as ResNet's option-A shortcut


def model(*, out_scale: float = SCALE, pad_value: float | None = None, mode: str | None = None) -> onnx.ModelProto:
    """x -> Q/DQ -> Pad (channels) -> Q/DQ -> Add(itself) -> y; the Add keeps a float consumer after the DQ."""
    inits = [numpy_helper.from_array(np.array(SCALE, np.float32), "s"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "s_out"),
             numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "z"),
             numpy_helper.from_array(np.array(PADS, np.int64), "pads")]
    pad_inputs = ["xd", "pads"]
    if pad_value is not None:
        inits.append(numpy_helper.from_array(np.array(pad_value, np.float32), "pad_value"))
        pad_inputs.append("pad_value")
    pad_attrs = {} if mode is None else {"mode": mode}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Pad", pad_inputs, ["padded"], name="shortcut_pad", **pad_attrs),
             helper.make_node("QuantizeLinear", ["padded", "s_out", "z"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "s_out", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 5, 5])], inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    out.ir_version = 10
    return out


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def inputs() -> np.ndarray:
    x = np.random.default_rng(0).normal(scale=4.0, size=(3, 4, 5, 5)).astype(np.float32)
    x.reshape(-1)[:256] = (np.arange(256) - ZERO_POINT) * SCALE  # every integer level, saturation beyond
    return x


def test_the_pad_runs_on_the_integers_bit_for_bit():
    # As in an export: the Pad's output typed float by shape inference, the inserted Q's output untyped.
    proto = onnx.shape_inference.infer_shapes(model())
    kept = [v for v in proto.graph.value_info if v.name != "pq"]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    assert [v.name for v in proto.graph.value_info] == ["xq", "xd", "padded"]
    result = IntegerPadPass()(ir.from_proto(proto))
    out = ir.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    assert result.modified
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    pad = out.graph.node[1]
    assert pad.name == "shortcut_pad" and pad.input[0] == "xq" and pad.input[2] == "z"  # pads with the zero point
    x = inputs()
    expected = run(proto, x)
    np.testing.assert_array_equal(run(out, x), expected)
    assert expected.shape == (3, 8, 5, 5) and not expected[:, :2].any()  # the padded channels are real zeros


def test_onnx_runtime_keeps_the_shortcut_in_uint8(tmp_path):
    out = ir.to_proto(IntegerPadPass()(ir.from_proto(model())).model)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops == {"QuantizeLinear": 1, "Pad": 1, "DequantizeLinear": 1}  # no float Pad between a DQ and a Q


@pytest.mark.parametrize("kwargs", [{"out_scale": 0.1}, {"pad_value": 1.0}, {"mode": "reflect"}],
                         ids=["another grid after", "nonzero pad value", "reflect"])
def test_a_pad_that_would_change_the_integers_is_left_alone(kwargs):
    proto = model(**kwargs)
    result = IntegerPadPass()(ir.from_proto(proto))
    assert not result.modified
    assert [n.op_type for n in ir.to_proto(result.model).graph.node] == [n.op_type for n in proto.graph.node]
