"""SplitSharedAddPass: a residual Add shared by a 4-bit layer and other consumers is computed twice."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hawq_onnx.passes.insert_activation_qdq import EdgeQuant, Fixed, QParams, place
from hawq_onnx.passes.split_shared_add import SplitSharedAddPass
from onnx import TensorProto, helper, numpy_helper

P4 = QParams(4, 0.2345, 0)
P8 = QParams(8, 0.0123, 0)


def block_model() -> onnx.ModelProto:
    """relu(a + b) feeds a conv (planned input grid) and the next Add (identity path)."""
    w = np.random.default_rng(0).normal(size=(4, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Add", ["ra", "rb"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["block"], name="relu"),
             helper.make_node("Conv", ["block", "w"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Add", ["block", "c"], ["y"], name="next_add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4, 5, 5]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def split(grid: QParams) -> tuple[ir.Model, bool]:
    model = ir.from_proto(block_model())
    result = SplitSharedAddPass([EdgeQuant("conv1", 0, "conv1", grid)])(model)
    return result.model, result.modified


def test_the_4bit_layer_reads_its_own_copy_of_the_sum():
    model, modified = split(P4)
    assert modified
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node].count("Add") == 3
    conv = next(n for n in proto.graph.node if n.name == "conv1")
    assert conv.input[0] != "block"
    assert next(n for n in proto.graph.node if n.name == "next_add").input[0] == "block"
    x = {n: np.random.default_rng(1).normal(size=(2, 4, 5, 5)).astype(np.float32) for n in "ab"}
    before = ort.InferenceSession(block_model().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    after = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_array_equal(after, before)
    # Each copy now has one grid: the layer's, and a calibrated 8-bit one for the identity path.
    model.graph.sort()
    p = place(model.graph, [EdgeQuant("conv1", 0, "conv1", P4)])
    assert p[conv.input[0]].shared == Fixed(P4) and not p[conv.input[0]].overrides
    assert p["block"].shared is not None and not p["block"].overrides


def test_an_8bit_grid_serves_everyone_without_a_copy():
    _, modified = split(P8)
    assert not modified
