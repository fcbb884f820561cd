"""bind_layers: plan layers to ONNX nodes by parameter name, and by value for a renamed MatMul weight."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import pytest
from hawq_onnx.passes.layer_binding import BoundLayer, LayerRequest, bind_layers
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.errors import HawqError

RNG = np.random.default_rng(0)
WEIGHTS = {
    "a": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),  # Conv
    "b": RNG.normal(size=(6, 4)).astype(np.float32),        # Linear -> Gemm(transB=1)
    "c": RNG.normal(size=(5, 6)).astype(np.float32),        # Linear on 3-D input -> MatMul with W^T renamed
}
EXTRA = RNG.normal(size=(4, 4, 1, 1)).astype(np.float32)   # a conv the plan does not cover


def graph() -> ir.Graph:
    inits = [numpy_helper.from_array(WEIGHTS["a"], "a.weight"), numpy_helper.from_array(WEIGHTS["b"], "b.weight"),
             numpy_helper.from_array(WEIGHTS["c"].T.copy(), "val_6"), numpy_helper.from_array(EXTRA, "d.weight"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "a.weight"], ["ca"], pads=[1, 1, 1, 1], name="node_a"),
             helper.make_node("Conv", ["ca", "d.weight"], ["cd"], name="node_d"),
             helper.make_node("GlobalAveragePool", ["cd"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["v"]),
             helper.make_node("Gemm", ["v", "b.weight"], ["fb"], transB=1, name="node_b"),
             helper.make_node("MatMul", ["fb", "val_6"], ["y"], name="node_c")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])).graph


def requests(**channels) -> list[LayerRequest]:
    out = {"a": 4, "b": 6, "c": 5}
    out.update(channels)
    return [LayerRequest(name, c, True) for name, c in out.items()]


def test_binds_by_name_and_finds_the_transposed_matmul_weight():
    bound, unplanned = bind_layers(graph(), requests(), WEIGHTS)
    assert bound == [BoundLayer("a", "node_a", "Conv", "a.weight", 0),
                     BoundLayer("b", "node_b", "Gemm", "b.weight", 0),
                     BoundLayer("c", "node_c", "MatMul", "val_6", 1)]
    assert unplanned == ["node_d (Conv, weight d.weight)"]


def test_a_missing_planned_layer_is_an_error_naming_it():
    with pytest.raises(HawqError, match=r"1 plan layer\(s\) not found.*layer9\.conv"):
        bind_layers(graph(), requests() + [LayerRequest("layer9.conv", 4, True)], WEIGHTS)


def test_a_missing_float_layer_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        bound, _ = bind_layers(graph(), requests() + [LayerRequest("gone", 4, False)], WEIGHTS)
    assert len(bound) == 3
    assert "plan layer gone" in caplog.text


def test_channel_mismatch_is_an_error():
    with pytest.raises(HawqError, match="plan layer a has 8 output channels but its ONNX weight a.weight has 4"):
        bind_layers(graph(), requests(a=8), WEIGHTS)


def test_weight_that_differs_from_the_model_is_an_error():
    other = dict(WEIGHTS, a=WEIGHTS["a"] * 2)
    with pytest.raises(HawqError, match="differs from the model's weight"):
        bind_layers(graph(), requests(), other)


def test_without_weights_the_renamed_matmul_cannot_be_found():
    with pytest.raises(HawqError, match="not found in the ONNX graph"):
        bind_layers(graph(), requests(), None)


def test_a_weight_fused_with_others_is_one_line_error_saying_so():
    """What onnxsim's fuse_qkv made of separate q/k/v projections: one MatMul on [Wq^T | Wk^T | Wv^T]."""
    w = {name: RNG.normal(size=(4, 4)).astype(np.float32) for name in ("q", "k", "v")}
    fused = np.concatenate([w[n].T for n in "qkv"], axis=1)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "qkv"], ["m"], name="fused"),
                           helper.make_node("Split", ["m"], ["yq", "yk", "yv"], axis=-1, num_outputs=3)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, None) for n in "qkv"],
                          [numpy_helper.from_array(fused, "qkv")])
    graph_ = ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])).graph
    with pytest.raises(HawqError) as info:
        bind_layers(graph_, [LayerRequest(n, 4, True) for n in "qkv"], w)
    message = str(info.value)
    assert "\n" not in message and message.startswith("3 plan layer(s) not found in the ONNX graph (q, k, v)")
    assert message.endswith("q: its transposed weight is columns 0:4 of qkv [4, 12], a weight fused from several "
                            "layers, read by MatMul node fused (input 1)")


def test_a_weight_read_by_another_op_is_named():
    g = helper.make_graph([helper.make_node("Einsum", ["x", "e.weight"], ["y"], equation="btd,ed->bte", name="ein")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.ones((5, 4), np.float32), "e.weight")])
    graph_ = ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])).graph
    with pytest.raises(HawqError, match=r"e: its weight e.weight is read by Einsum node ein \(input 1\)$"):
        bind_layers(graph_, [LayerRequest("e", 5, True)], {"e": np.ones((5, 4), np.float32)})
