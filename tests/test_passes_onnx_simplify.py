"""OnnxSimplifyPass keeps every weighted layer its own standard node (issue 23)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.onnx_simplify import SKIPPED_OPTIMIZERS, OnnxSimplifyPass
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def three_projections() -> ir.Model:
    """Attention's q/k/v: three bias-free MatMuls with constant weights on one computed tensor."""
    inits = [numpy_helper.from_array(RNG.normal(size=(8, 8)).astype(np.float32), f"w{n}") for n in "qkv"]
    nodes = [helper.make_node("Relu", ["x"], ["h"])]
    nodes += [helper.make_node("MatMul", ["h", f"w{n}"], [f"y{n}"], name=n) for n in "qkv"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
                              [helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, ["N", 4, 8]) for n in "qkv"],
                              inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def test_q_k_v_projections_stay_three_nodes_on_their_own_weights():
    model = OnnxSimplifyPass()(three_projections()).model
    matmuls = [n for n in model.graph if n.op_type == "MatMul"]
    assert [n.inputs[1].name for n in matmuls] == ["wq", "wk", "wv"]
    assert not [n for n in model.graph if n.op_type == "Split" or n.domain not in ("", "ai.onnx")]


def test_onnxsim_would_fuse_them_without_the_skip(monkeypatch):
    """The skip is what keeps them apart (where this onnxsim has the fusion at all)."""
    import hawq_onnx.passes.onnx_simplify as onnx_simplify

    assert "fuse_qkv" in SKIPPED_OPTIMIZERS
    monkeypatch.setattr(onnx_simplify, "SKIPPED_OPTIMIZERS", ())
    model = OnnxSimplifyPass()(three_projections()).model
    ops = [n.op_type for n in model.graph]
    assert ops.count("MatMul") in (1, 3)  # fused, or an onnxsim without fuse_qkv
    assert all(n.domain in ("", "ai.onnx") for n in model.graph)  # a contrib-op result is discarded
