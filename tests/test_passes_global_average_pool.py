"""ReduceMeanToGlobalAveragePoolPass: spatial ReduceMean (keepdims=1) becomes GlobalAveragePool."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hawq_onnx.passes.global_average_pool import ReduceMeanToGlobalAveragePoolPass
from onnx import TensorProto, helper, numpy_helper


def reduce_mean_model(axes: list[int], keepdims: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=keepdims, name="mean")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(axes, np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return onnx.shape_inference.infer_shapes(model)


def rewrite(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    result = ReduceMeanToGlobalAveragePoolPass()(ir.from_proto(proto))
    return ir.to_proto(result.model), result.modified


def test_spatial_mean_becomes_global_average_pool_with_the_same_output():
    for axes in ([2, 3], [-1, -2]):
        proto = reduce_mean_model(axes, 1)
        out, modified = rewrite(proto)
        assert modified
        assert [n.op_type for n in out.graph.node] == ["Relu", "GlobalAveragePool"]
        assert out.graph.output[0].name == "y"
        onnx.checker.check_model(out, full_check=True)
        x = np.random.default_rng(0).normal(size=(2, 4, 3, 5)).astype(np.float32)
        before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        after = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert after.shape == before.shape == (2, 4, 1, 1)
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_other_reductions_are_left_alone():
    for axes, keepdims in (([2, 3], 0), ([1], 1), ([3], 1)):
        out, modified = rewrite(reduce_mean_model(axes, keepdims))
        assert not modified
        assert [n.op_type for n in out.graph.node] == ["Relu", "ReduceMean"]
