"""InsertActivationQDQPass and its placement: plan edges, integer regions, nested 4-bit grids."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hawq_onnx.passes.clip_sub_byte_activations import ClipSubByteActivationsPass
from hawq_onnx.passes.insert_activation_qdq import (
    Calibrated,
    EdgeQuant,
    Fixed,
    InsertActivationQDQPass,
    Nested,
    QParams,
    calibration_sites,
    nested_qparams,
    place,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.core.grid import activation_qrange, dequantize, quantize

RNG = np.random.default_rng(0)
P8 = QParams(8, 0.02, 0)
# Scales that are not round numbers: integer-valued weights times round scales would put many
# values exactly on rounding boundaries, where float32 ties (not the grids) decide.
P4 = QParams(4, 0.3137, 0)
IN8 = QParams(8, 0.0312, 128)


def _conv(name: str, x: str, out: str, c_in: int, c_out: int, inits: list) -> list[onnx.NodeProto]:
    """A Conv whose weight is already int8 behind DequantizeLinear (as after QuantizeWeightsPass)."""
    inits += [numpy_helper.from_array(RNG.integers(-127, 128, size=(c_out, c_in, 3, 3)).astype(np.int8), f"{name}.weight"),
              numpy_helper.from_array(np.full(c_out, 0.0123457, np.float32), f"{name}.weight_scale")]
    return [helper.make_node("DequantizeLinear", [f"{name}.weight", f"{name}.weight_scale"], [f"{name}.weight_dq"], axis=0),
            helper.make_node("Conv", [x, f"{name}.weight_dq"], [out], pads=[1, 1, 1, 1], name=name)]


def residual_model(second_branch: bool = False) -> onnx.ModelProto:
    """x -> conv0 -> relu r0 -> conv1 -> relu r1; out = relu(r0 + r1) -> pool; optionally r0 -> conv2 -> y2."""
    inits: list = []
    nodes = _conv("conv0", "x", "c0", 3, 8, inits) + [helper.make_node("Relu", ["c0"], ["r0"])]
    nodes += _conv("conv1", "r0", "c1", 8, 8, inits) + [helper.make_node("Relu", ["c1"], ["r1"])]
    nodes += [helper.make_node("Add", ["r0", "r1"], ["s"]), helper.make_node("Relu", ["s"], ["out"]),
              helper.make_node("GlobalAveragePool", ["out"], ["pooled"])]
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 8, 1, 1])]
    if second_branch:
        nodes += _conv("conv2", "r0", "y2", 8, 8, inits)
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 8, 6, 6]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def head_model() -> onnx.ModelProto:
    """x -> GlobalAveragePool -> Reshape -> Gemm (planned): a grid-preserving move before the layer."""
    inits = [numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
             numpy_helper.from_array(RNG.integers(-127, 128, size=(4, 8)).astype(np.int8), "fc.weight"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "fc.weight_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "fc.weight_zp")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["v"]),
             helper.make_node("DequantizeLinear", ["fc.weight", "fc.weight_scale", "fc.weight_zp"], ["w"], axis=0),
             helper.make_node("Gemm", ["v", "w"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def edges(conv1: QParams, conv2: QParams | None = None) -> list[EdgeQuant]:
    out = [EdgeQuant("conv0", 0, "conv0", IN8), EdgeQuant("conv1", 0, "conv1", conv1)]
    if conv2 is not None:
        out.append(EdgeQuant("conv2", 0, "conv2", conv2))
    return out


def placements(proto: onnx.ModelProto, e: list[EdgeQuant]):
    model = ir.from_proto(proto)
    model.graph.sort()
    return place(model.graph, e)


def insert(proto: onnx.ModelProto, e: list[EdgeQuant], ranges) -> onnx.ModelProto:
    out = ir.to_proto(InsertActivationQDQPass(e, ranges)(ir.from_proto(proto)).model)
    onnx.checker.check_model(out, full_check=True)
    return out


def producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in proto.graph.node for o in n.output}


def test_an_8bit_plan_grid_serves_the_residual_path_too():
    p = placements(residual_model(), edges(P8))
    assert p["x"].shared == Fixed(IN8)
    assert p["r0"].shared == Fixed(P8) and not p["r0"].overrides  # conv1's grid, shared with the Add
    assert isinstance(p["r1"].shared, Calibrated)  # conv1's output: an Add input, calibrated
    assert p["r1"].shared.sum_with == "r0"       # ... over the range that can change the sum
    assert isinstance(p["out"].shared, Calibrated)  # QLinearAdd's output (after its Relu)
    assert p["s"].shared is None and p["c0"].shared is None  # before a fused Relu: nothing
    assert p["pooled"].shared is None             # graph outputs stay float
    assert calibration_sites(p) == ["r1", "r0", "out"]


def test_a_4bit_plan_grid_keeps_to_its_edge_and_nests_in_an_8bit_grid():
    p = placements(residual_model(), edges(P4))
    assert p["r0"].shared == Nested(P4, "r0")
    assert p["r0"].overrides == {("conv1", 0): (P4, "conv1", True)}
    ranges = {"r0": (0.0, 6.0), "r1": (0.0, 3.0), "out": (0.0, 8.0)}
    out = insert(residual_model(), edges(P4), ranges)
    made = producers(out)
    conv1 = next(n for n in out.graph.node if n.name == "conv1")
    dq4 = made[conv1.input[0]]
    q4 = made[dq4.input[0]]
    dq8 = made[q4.input[0]]
    assert (dq4.op_type, q4.op_type, dq8.op_type) == ("DequantizeLinear", "QuantizeLinear", "DequantizeLinear")
    assert made[dq8.input[0]].input[0] == "r0"                      # the 8-bit grid sits on r0
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert dq8.output[0] in add.input                               # the identity path reads 8 bits
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert inits[q4.input[2]].dtype.name == "uint4"                 # 16 levels, ONNX's own type
    assert np.isclose(float(inits[q4.input[1]]), P4.scale)
    # 6.0 is 19.1 steps of P4: k = 255 // 19.1 = 13 is odd, the largest grid step that reaches it.
    assert float(inits[dq8.input[1]]) == pytest.approx(P4.scale / 13, rel=1e-6)
    assert nested_qparams(P4, 6.0).scale == pytest.approx(P4.scale / 13, rel=1e-6)


def test_requantized_4bit_input_equals_direct_quantization(tmp_path):
    """The planned layer sees exactly Q4(r0), as the PyTorch reference does, with ORT's kernels."""
    proto = residual_model()
    ranges = {"r0": (0.0, 6.0), "r1": (0.0, 3.0), "out": (0.0, 8.0)}
    out = ir.from_proto(insert(proto, edges(P4), ranges))
    out = ClipSubByteActivationsPass()(out).model
    out_proto = ir.to_proto(out)
    conv1 = next(n for n in out_proto.graph.node if n.name == "conv1")
    for name in ("r0", conv1.input[0]):
        out_proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    x = RNG.normal(size=(16, 3, 6, 6)).astype(np.float32)
    r0, seen = ort.InferenceSession(out_proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["r0", conv1.input[0]], {"x": x})
    expected = dequantize(quantize(r0, P4.scale, P4.zero_point, *activation_qrange(4)), P4.scale, P4.zero_point)
    np.testing.assert_array_equal(seen, expected)
    assert len(np.unique(seen)) <= 16


def test_without_ranges_only_the_plan_grids_go_in():
    out = insert(residual_model(), edges(P4), None)
    qs = [n for n in out.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(n.input[0] for n in qs) == ["r0", "x"]  # conv1's Q4 straight on r0, conv0's input
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert list(add.input) == ["r0", "r1"]               # the residual stays float


def test_different_plan_grids_each_get_their_own_qdq():
    p = placements(residual_model(second_branch=True), edges(P4, P8))
    assert p["r0"].overrides == {("conv1", 0): (P4, "conv1", False), ("conv2", 0): (P8, "conv2", False)}
    assert isinstance(p["r0"].shared, Calibrated)  # for the Add
    out = insert(residual_model(second_branch=True), edges(P4, P8), {"r0": (0.0, 6.0), "r1": (0.0, 3.0), "out": (0.0, 8.0)})
    quantized_r0 = [n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r0"]
    assert len(quantized_r0) == 3


def test_a_planned_grid_flows_back_through_pooling_and_reshape():
    e = [EdgeQuant("fc", 0, "fc", P8)]
    p = placements(head_model(), e)
    assert p["v"].shared == Fixed(P8)
    assert p["g"].shared == Fixed(P8)       # back through the Reshape: QLinearGlobalAveragePool writes fc's grid
    assert isinstance(p["r"].shared, Calibrated)
    out = insert(head_model(), e, {"r": (0.0, 5.0)})
    x = np.abs(RNG.normal(size=(3, 8, 4, 4))).astype(np.float32)
    y = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == (3, 4)


def shared_projections_model() -> onnx.ModelProto:
    """Attention's projections on one tensor: k reads it directly (a bias-free Linear, MatMul),
    q and v through the Reshape of onnxsim's batched Gemm (tokens flattened to rows)."""
    inits = [numpy_helper.from_array(np.array([-1, 8], np.int64), "rows")]
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Reshape", ["h", "rows"], ["flat"])]
    for name, x, op in (("q", "flat", "Gemm"), ("k", "h", "MatMul"), ("v", "flat", "Gemm")):
        inits += [numpy_helper.from_array(RNG.integers(-127, 128, size=(8, 8)).astype(np.int8), f"{name}.weight"),
                  numpy_helper.from_array(np.full(8, 0.01, np.float32), f"{name}.weight_scale")]
        nodes += [helper.make_node("DequantizeLinear", [f"{name}.weight", f"{name}.weight_scale"], [f"{name}_w"], axis=1),
                  helper.make_node(op, [x, f"{name}_w"], [f"y{name}"], name=name)]
    outputs = [helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, shape)
               for n, shape in (("q", [None, 8]), ("k", ["N", 4, 8]), ("v", [None, 8]))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_layers_behind_a_move_keep_their_own_grid_on_the_float_tensor():
    """k's 8-bit grid must not round the tensor that q and v, behind a Reshape, quantize to other
    grids: each would otherwise see a twice-rounded input that the PyTorch reference never sees."""
    e = [EdgeQuant("q", 0, "q", P8), EdgeQuant("k", 0, "k", IN8), EdgeQuant("v", 0, "v", QParams(8, 0.025, 0))]
    p = placements(shared_projections_model(), e)
    assert p["h"].shared is None and p["h"].overrides == {("k", 0): (IN8, "k", False)}
    out = insert(shared_projections_model(), e, {})
    made = producers(out)
    for name in "qkv":
        node = next(n for n in out.graph.node if n.name == name)
        q = made[made[node.input[0]].input[0]]
        assert q.op_type == "QuantizeLinear" and q.input[0] in ("h", "flat")  # straight from the float tensor
    same = [EdgeQuant(n, 0, n, P8) for n in "qkv"]  # one grid for all three: shared, as before
    assert placements(shared_projections_model(), same)["h"].shared == Fixed(P8)


def test_unknown_edge_node_is_an_error():
    from hawq_onnx.errors import HawqError

    with pytest.raises(HawqError, match="not in the graph"):
        insert(residual_model(), [EdgeQuant("nope", 0, "nope", P8)], None)


@settings(max_examples=60, deadline=None)
@given(scale=st.floats(1e-3, 10.0), zero_point=st.integers(0, 15), hi=st.floats(0.0, 1e3), seed=st.integers(0, 2**16))
def test_nested_grid_requantizes_exactly(scale, zero_point, hi, seed):
    inner = QParams(4, float(np.float32(scale)), zero_point)
    outer = nested_qparams(inner, hi)
    k = round(inner.scale / outer.scale)
    assert k % 2 == 1 and 1 <= k <= 17 and outer.zero_point == k * zero_point <= 255
    x = np.random.default_rng(seed).uniform(-20 * scale, 40 * scale, size=2000).astype(np.float32)
    lo4, hi4 = activation_qrange(4)
    direct = quantize(x, inner.scale, inner.zero_point, lo4, hi4)
    via8 = dequantize(quantize(x, outer.scale, outer.zero_point, 0, 255), outer.scale, outer.zero_point)
    requantized = quantize(via8, inner.scale, inner.zero_point, lo4, hi4)
    np.testing.assert_array_equal(requantized, direct)
