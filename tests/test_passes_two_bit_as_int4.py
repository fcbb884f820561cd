"""TwoBitAsInt4Pass: INT2 weights re-stored as packed INT4, the same integers, for readers without INT2."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hawq_onnx.passes.two_bit_as_int4 import TwoBitAsInt4Pass
from hawq_onnx.passes.widen_sub_byte_weights import WidenSubByteWeightsPass
from onnx import TensorProto, helper, numpy_helper


def two_bit_model(q: np.ndarray) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(q.astype(ml_dtypes.int2), "w"),
             numpy_helper.from_array(np.array([0.5, 0.25, 2.0], np.float32), "s"),
             numpy_helper.from_array(np.zeros(3, ml_dtypes.int2), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], axis=0),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)], ir_version=13)


def test_int2_becomes_int4_with_the_same_values_and_widens_as_before():
    q = np.random.default_rng(0).integers(-2, 2, size=(3, 5)).astype(np.int8)
    proto = two_bit_model(q)
    result = TwoBitAsInt4Pass()(ir.from_proto(proto))
    assert result.modified
    out = ir.to_proto(WidenSubByteWeightsPass()(result.model).model)
    onnx.checker.check_model(out, full_check=True)
    inits = {i.name: i for i in out.graph.initializer}
    assert inits["w"].data_type == TensorProto.INT4 and len(inits["w"].raw_data) == 8  # 15 values, 2 a byte
    assert not any(i.data_type == TensorProto.INT2 for i in out.graph.initializer)
    np.testing.assert_array_equal(numpy_helper.to_array(inits["w"]).astype(np.int8), q)
    x = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    off = ort.SessionOptions()
    off.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    before = ort.InferenceSession(proto.SerializeToString(), off, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    after = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])


def test_a_model_without_int2_is_left_alone():
    proto = two_bit_model(np.zeros((3, 5), np.int8))
    model = ir.from_proto(proto)
    TwoBitAsInt4Pass()(model)
    assert TwoBitAsInt4Pass()(model).modified is False
