"""ClipSubByteActivationsPass: uint4 Q/DQ becomes uint8 Q -> Clip(0, 15) -> DQ, value for value."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hawq_onnx.passes.clip_sub_byte_activations import ClipSubByteActivationsPass
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.core.grid import activation_qrange, dequantize, quantize

SCALE, ZERO_POINT = 0.25, 3


def activation_model() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(SCALE, np.float32), "s4"),
             numpy_helper.from_array(np.array(ZERO_POINT, ml_dtypes.uint4), "z4"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s8"),
             numpy_helper.from_array(np.array(128, np.uint8), "z8")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s4", "z4"], ["q4"]),
             helper.make_node("DequantizeLinear", ["q4", "s4", "z4"], ["y4"]),
             helper.make_node("QuantizeLinear", ["x", "s8", "z8"], ["q8"]),
             helper.make_node("DequantizeLinear", ["q8", "s8", "z8"], ["y8"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
                              [helper.make_tensor_value_info("y4", TensorProto.FLOAT, [1000]),
                               helper.make_tensor_value_info("y8", TensorProto.FLOAT, [1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_sixteen_levels_in_uint8_with_an_integer_clip():
    proto = activation_model()
    result = ClipSubByteActivationsPass()(ir.from_proto(proto))
    out = ir.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    assert result.modified
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "Clip", "DequantizeLinear",
                                                  "QuantizeLinear", "DequantizeLinear"]
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    clip = out.graph.node[1]
    assert inits[clip.input[1]].dtype == np.uint8 and int(inits[clip.input[1]]) == 0
    assert int(inits[clip.input[2]]) == 15
    assert all(a.dtype != ml_dtypes.uint4 for a in inits.values())  # no uint4 left
    x = np.random.default_rng(0).normal(scale=3, size=1000).astype(np.float32)
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    after = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])  # bit for bit
    np.testing.assert_array_equal(after[1], before[1])  # the 8-bit pair is untouched
    expected = dequantize(quantize(x, SCALE, ZERO_POINT, *activation_qrange(4)), SCALE, ZERO_POINT)
    np.testing.assert_array_equal(after[0], expected)
    assert len(np.unique(after[0])) == 16


def test_sixteen_levels_with_a_float_clip_before_an_8_bit_q():
    """OpenVINO's form: the same integers, with the clamp in float where the runtime fuses it."""
    proto = activation_model()
    result = ClipSubByteActivationsPass(on_integers=False)(ir.from_proto(proto))
    out = ir.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["Clip", "QuantizeLinear", "DequantizeLinear",
                                                  "QuantizeLinear", "DequantizeLinear"]
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    clip = out.graph.node[0]
    lo, hi = float(inits[clip.input[1]]), float(inits[clip.input[2]])
    assert (lo, hi) == ((0 - ZERO_POINT) * SCALE, (15 - ZERO_POINT) * SCALE)
    assert all(a.dtype != ml_dtypes.uint4 for a in inits.values())
    # Values on and around the bounds, and far outside them.
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(scale=3, size=900), [lo, hi, lo - 1e-6, hi + 1e-6, hi - SCALE / 2, -50, 50],
                        np.linspace(lo - 1, hi + 1, 93)]).astype(np.float32)
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    after = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_a_requantization_keeps_the_integer_clip_in_the_float_form():
    """DQ -> uint4 Q: the Clip stays on the integers, where the identity-LeakyRelu rewrite applies."""
    proto = activation_model()
    graph = proto.graph
    graph.node[0].input[0] = "y8"  # the 4-bit pair now requantizes the 8-bit one
    nodes = [graph.node[2], graph.node[3], graph.node[0], graph.node[1]]
    del graph.node[:]
    graph.node.extend(nodes)
    out = ir.to_proto(ClipSubByteActivationsPass(on_integers=False)(ir.from_proto(proto)).model)
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "DequantizeLinear", "QuantizeLinear",
                                                  "Clip", "DequantizeLinear"]
