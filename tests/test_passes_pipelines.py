"""The clean-up passes (onnxsim, unused values, deduplication, shapes, checker) and the target pass lists."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hawq_onnx.passes import pipelines
from hawq_onnx.passes.clip_sub_byte_activations import ClipSubByteActivationsPass
from hawq_onnx.passes.drop_intermediate_shapes import DropIntermediateShapesPass
from hawq_onnx.passes.onnx_simplify import OnnxSimplifyPass
from hawq_onnx.passes.widen_sub_byte_weights import WidenSubByteWeightsPass
from onnx import TensorProto, helper, numpy_helper


def qdq_model() -> onnx.ModelProto:
    """Two Q/DQ pairs with separate but equal zero points, an unused initializer, value_info."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s1"), numpy_helper.from_array(np.array(0, np.uint8), "z1"),
             numpy_helper.from_array(np.array(0.2, np.float32), "s2"), numpy_helper.from_array(np.array(0, np.uint8), "z2"),
             numpy_helper.from_array(np.ones(3, np.float32), "unused")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s1", "z1"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             helper.make_node("Relu", ["d1"], ["r2"]),
             helper.make_node("QuantizeLinear", ["r2", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model)


def test_cleanup_dedups_removes_unused_drops_shapes_and_checks():
    proto = qdq_model()
    assert len(proto.graph.value_info) > 0
    out = ir.to_proto(pipelines.cleanup_stage()(ir.from_proto(proto)).model)
    names = {i.name for i in out.graph.initializer}
    assert "unused" not in names
    # Equal zero points merged (and, as every Q/DQ parameter, renamed short): one zero point left.
    zero_points = [i for i in out.graph.initializer if i.data_type == TensorProto.UINT8]
    assert len(zero_points) == 1 and len(names) == 3      # s1, s2 and the zero point
    assert len(out.graph.value_info) == 0                 # intermediate shapes dropped ...
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT  # ... the interface kept
    onnx.checker.check_model(out, full_check=True)


def test_drop_intermediate_shapes_keeps_the_interface():
    model = ir.from_proto(qdq_model())
    DropIntermediateShapesPass()(model)
    out = ir.to_proto(model)
    assert not out.graph.value_info
    assert [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim] == ["N", ""]


def test_onnxsim_keeps_names_and_adds_no_metadata():
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Reshape", ["w", "shp"], ["w2"]),
             helper.make_node("Add", ["x", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.arange(6, dtype=np.float32), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    result = OnnxSimplifyPass()(ir.from_proto(proto))
    out = ir.to_proto(result.model)
    assert result.modified
    assert [n.op_type for n in out.graph.node] == ["Add"]  # the static shape computation folded
    assert [o.name for o in out.graph.output] == ["y"] and [i.name for i in out.graph.input] == ["x"]
    assert not [p for p in out.metadata_props if p.key.startswith("onnxsim")]


def test_targets_are_pass_lists():
    ort_cpu = [type(p) for p in pipelines.activation_stage("ort-cpu", [], None).passes]
    compact = [type(p) for p in pipelines.activation_stage("compact", [], None).passes]
    assert ClipSubByteActivationsPass in ort_cpu and WidenSubByteWeightsPass in ort_cpu
    assert ClipSubByteActivationsPass not in compact and WidenSubByteWeightsPass not in compact
    with pytest.raises(ValueError, match="unknown target"):
        pipelines.activation_stage("gpu", [], None)
