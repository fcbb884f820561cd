"""WidenSubByteWeightsPass: packed INT4/INT2 weights reach DequantizeLinear through Cast(to=INT8)."""

from __future__ import annotations

import collections

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hawq_onnx.passes.widen_sub_byte_weights import WidenSubByteWeightsPass
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
SUB_BYTE = {4: (TensorProto.INT4, ml_dtypes.int4, 7), 2: (TensorProto.INT2, ml_dtypes.int2, 1)}


def qdq_conv_model(bits: int) -> onnx.ModelProto:
    """uint8 activation Q/DQ around a Conv whose weight is a direct sub-byte DequantizeLinear."""
    onnx_type, np_type, qmax = SUB_BYTE[bits]
    q = RNG.integers(-qmax, qmax + 1, size=(8, 4, 3, 3))
    inits = [numpy_helper.from_array(q.astype(np_type), "w"),
             numpy_helper.from_array(np.full(8, 0.02, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(8, np_type), "w_zp"),
             numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
             numpy_helper.from_array(np.array(0.1, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "y_scale", "y_zp"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])], inits)
    opset = 25 if bits == 2 else 21
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def widen(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = ir.to_proto(WidenSubByteWeightsPass()(ir.from_proto(proto)).model)
    onnx.checker.check_model(out, full_check=True)
    return out


def session(proto: onnx.ModelProto, level: ort.GraphOptimizationLevel, optimized: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [4, 2])
def test_packed_weight_is_kept_and_widened_by_cast(bits):
    proto = qdq_conv_model(bits)
    out = widen(proto)
    packed_before = next(i for i in proto.graph.initializer if i.name == "w")
    packed_after = next(i for i in out.graph.initializer if i.name == "w")
    assert packed_after.data_type == packed_before.data_type == SUB_BYTE[bits][0]
    assert packed_after.raw_data == packed_before.raw_data  # still packed on disk
    cast = next(n for n in out.graph.node if n.op_type == "Cast")
    assert list(cast.input) == ["w"] and cast.attribute[0].i == TensorProto.INT8
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == cast.output[0])
    assert numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == dq.input[2])).dtype == np.int8


@pytest.mark.parametrize("bits", [4, 2])
def test_widened_model_computes_the_same_and_runs_as_qlinearconv(bits, tmp_path):
    proto = qdq_conv_model(bits)
    out = widen(proto)
    x = RNG.normal(size=(2, 4, 6, 6)).astype(np.float32)
    reference = session(proto, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {"x": x})[0]
    optimized = str(tmp_path / "opt.onnx")
    fused = session(out, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, optimized).run(None, {"x": x})[0]
    ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 0 and ops["Cast"] == 0  # the Cast is folded at load
    # The integer kernel rounds its output once; the emulation rounds the same value: one step at most.
    assert np.abs(fused - reference).max() <= 0.1 + 1e-6
    assert np.mean(fused == reference) > 0.95
