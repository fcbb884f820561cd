"""UnsignedWideInputWeightsPass: 8-bit weights behind full-range uint8 inputs become uint8 + 128."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hawq_onnx.passes.unsigned_wide_input_weights import UnsignedWideInputWeightsPass
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
C = 8


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def model(w_max: int = 127) -> onnx.ModelProto:
    """x (uint8, full range) -> Conv "wide" (int8 weights up to ``w_max``) -> Relu -> uint8 Q ->
    Clip(0, 15) -> Conv "narrow" (int8 weights, 4-bit input) -> Relu -> uint8 Q/DQ -> y."""
    w_wide = RNG.integers(-w_max, w_max + 1, size=(C, C, 3, 3))
    w_wide[:, :, 1, 1] = w_max  # every channel reaches w_max, on the positive side
    w_narrow = RNG.integers(-127, 128, size=(C, C, 3, 3))
    inits = [_init("x_scale", np.array(1 / 255, np.float32)), _init("x_zp", np.array(0, np.uint8)),
             _init("wide.weight", w_wide.astype(np.int8)), _init("wide.weight_scale", np.full(C, 1 / 127, np.float32)),
             _init("wide.weight_zp", np.zeros(C, np.int8)),
             _init("h_scale", np.array(20.0, np.float32)), _init("h_zp", np.array(0, np.uint8)),
             _init("h_min", np.array(0, np.uint8)), _init("h_max", np.array(15, np.uint8)),
             _init("narrow.weight", w_narrow.astype(np.int8)),
             _init("narrow.weight_scale", np.full(C, 1 / 127, np.float32)),
             _init("narrow.weight_zp", np.zeros(C, np.int8)),
             _init("y_scale", np.array(8.0, np.float32)), _init("y_zp", np.array(0, np.uint8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wide.weight", "wide.weight_scale", "wide.weight_zp"], ["w1"], axis=0),
             helper.make_node("Conv", ["xd", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("QuantizeLinear", ["r1", "h_scale", "h_zp"], ["hq"]),
             helper.make_node("Clip", ["hq", "h_min", "h_max"], ["hc"]),
             helper.make_node("DequantizeLinear", ["hc", "h_scale", "h_zp"], ["hd"]),
             helper.make_node("DequantizeLinear", ["narrow.weight", "narrow.weight_scale", "narrow.weight_zp"], ["w2"],
                              axis=0),
             helper.make_node("Conv", ["hd", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("QuantizeLinear", ["r2", "y_scale", "y_zp"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 6, 6])], inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    out.ir_version = 10
    return out


def run_pass(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = ir.to_proto(UnsignedWideInputWeightsPass()(ir.from_proto(proto)).model)
    onnx.checker.check_model(out, full_check=True)
    return out


def weight_and_zero_point(proto: onnx.ModelProto, name: str) -> tuple[np.ndarray, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == name)
    return inits[name], inits[dq.input[2]]


def run(proto: onnx.ModelProto, x: np.ndarray, level: ort.GraphOptimizationLevel, optimized: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = optimized
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_only_the_wide_input_layer_is_stored_unsigned_with_the_same_integers():
    before = model()
    after = run_pass(before)
    w_before, _ = weight_and_zero_point(before, "wide.weight")
    w_after, zp_after = weight_and_zero_point(after, "wide.weight")
    assert w_after.dtype == np.uint8 and zp_after.dtype == np.uint8 and (zp_after == 128).all()
    np.testing.assert_array_equal(w_after.astype(np.int16) - 128, w_before)  # same integers, same name
    # 4-bit input (Clip at 15): 2 * 15 * 127 cannot pass int16, the fast U8S8 form stays.
    w_narrow, zp_narrow = weight_and_zero_point(after, "narrow.weight")
    assert w_narrow.dtype == np.int8 and zp_narrow.dtype == np.int8
    assert "wide.weight_zp" not in {i.name for i in after.graph.initializer}  # the old zero point is gone


def test_weights_that_cannot_saturate_stay_signed():
    after = run_pass(model(w_max=64))  # 2 * 255 * 64 = 32640 <= 32767
    w, zp = weight_and_zero_point(after, "wide.weight")
    assert w.dtype == np.int8 and zp.dtype == np.int8


def test_integer_kernels_compute_the_reference_and_stay_fused(tmp_path):
    # Inputs at the top of the uint8 range meet +127 weights: U8S8 on a CPU without VNNI would
    # clamp those pairs at 32767 (measured on AVX2: the digits default lost 2.8 points).
    x = RNG.uniform(0.8, 1.0, size=(4, C, 6, 6)).astype(np.float32)
    before = model()
    after = run_pass(before)
    reference = run(after, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # DQ -> float Conv -> Q
    np.testing.assert_array_equal(reference, run(before, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
    optimized_path = str(tmp_path / "optimized.onnx")
    fused = run(after, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized_path)
    assert np.abs(fused - reference).max() <= 8.0 + 1e-6  # one output step (rounding ties aside)
    assert np.mean(fused == reference) >= 0.99
    ops = collections.Counter(n.op_type for n in onnx.load(optimized_path).graph.node)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0
