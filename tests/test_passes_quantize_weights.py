"""QuantizeWeightsPass: planned weights become packed integers behind DequantizeLinear, biases int32."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hawq_onnx.passes.quantize_weights import QuantizeWeightsPass, WeightQuantSpec
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.core.grid import (
    bias_scale,
    dequantize,
    fake_quantize_weight_np,
    quantize_bias,
    quantize_weight,
    weight_qrange,
    weight_scale,
)

RNG = np.random.default_rng(0)
W_CONV = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
B_CONV = RNG.normal(size=4).astype(np.float32)
W_FC = RNG.normal(size=(6, 5)).astype(np.float32)   # PyTorch layout [out, in]
B_FC = RNG.normal(size=6).astype(np.float32)
ONNX_TYPE = {8: TensorProto.INT8, 4: TensorProto.INT4, 3: TensorProto.INT4, 2: TensorProto.INT2}


def conv_model(opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])],
        [numpy_helper.from_array(W_CONV, "conv.weight"), numpy_helper.from_array(B_CONV, "conv.bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=13 if opset >= 25 else 10)


def linear_model(op: str) -> onnx.ModelProto:
    """Linear as Gemm(transB=0) or as MatMul + Add: the weight is stored [in, out], channels on axis 1."""
    inits = [numpy_helper.from_array(W_FC.T.copy(), "val_6"), numpy_helper.from_array(B_FC, "fc.bias")]
    if op == "Gemm":
        nodes = [helper.make_node("Gemm", ["x", "val_6", "fc.bias"], ["y"], name="fc")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "val_6"], ["m"], name="fc"),
                 helper.make_node("Add", ["m", "fc.bias"], ["y"], name="fc_bias")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def quantize(proto: onnx.ModelProto, spec: WeightQuantSpec) -> onnx.ModelProto:
    out = ir.to_proto(QuantizeWeightsPass([spec])(ir.from_proto(proto)).model)
    onnx.checker.check_model(out, full_check=True)
    return out


def initializer(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in proto.graph.initializer if i.name == name)


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_conv_weights_are_packed_integers_of_the_grid(bits):
    scale = weight_scale(W_CONV, bits)
    out = quantize(conv_model(25 if bits == 2 else 21), WeightQuantSpec("conv", "conv", bits, tuple(scale), 0, 0.05))
    w = initializer(out, "conv.weight")
    assert w.data_type == ONNX_TYPE[bits]
    q = numpy_helper.to_array(w).astype(np.int32)  # unpacks INT4/INT2 as onnx defines them
    np.testing.assert_array_equal(q, quantize_weight(W_CONV, scale, bits))
    assert q.min() >= weight_qrange(bits)[0] and q.max() <= weight_qrange(bits)[1]
    packed = len(w.raw_data)
    assert packed == {8: 108, 4: 54, 3: 54, 2: 27}[bits]  # 108 weights, two or four to a byte
    # The bias is int32 on the grid of scale s_w * s_a.
    b = initializer(out, "conv.bias")
    assert b.data_type == TensorProto.INT32
    np.testing.assert_array_equal(numpy_helper.to_array(b), quantize_bias(B_CONV, scale, 0.05))
    np.testing.assert_array_equal(numpy_helper.to_array(initializer(out, "conv.bias_scale")), bias_scale(scale, 0.05))
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "conv.weight")
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute}["axis"] == 0


@pytest.mark.parametrize("bits", [8, 4])
def test_conv_computes_the_fake_quantized_layer(bits):
    scale = weight_scale(W_CONV, bits)
    out = quantize(conv_model(21), WeightQuantSpec("conv", "conv", bits, tuple(scale), 0, 0.05))
    reference = conv_model(21)
    reference.graph.initializer[0].CopyFrom(numpy_helper.from_array(fake_quantize_weight_np(W_CONV, scale, bits), "conv.weight"))
    b_hat = dequantize(quantize_bias(B_CONV, scale, 0.05), bias_scale(scale, 0.05), 0)
    reference.graph.initializer[1].CopyFrom(numpy_helper.from_array(b_hat, "conv.bias"))
    x = RNG.normal(size=(2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(reference, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_linear_weights_quantize_per_output_column(op):
    scale = weight_scale(W_FC, 4)
    out = quantize(linear_model(op), WeightQuantSpec("fc", "fc", 4, tuple(scale), 1, 0.1))
    w = initializer(out, "fc.weight")  # renamed after the layer
    assert w.data_type == TensorProto.INT4 and list(w.dims) == [5, 6]
    np.testing.assert_array_equal(numpy_helper.to_array(w).astype(np.int32), quantize_weight(W_FC, scale, 4).T)
    assert numpy_helper.to_array(initializer(out, "fc.bias")).dtype == np.int32
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    w_hat = fake_quantize_weight_np(W_FC, scale, 4)
    b_hat = dequantize(quantize_bias(B_FC, scale, 0.1), bias_scale(scale, 0.1), 0)
    np.testing.assert_allclose(run(out, x), x @ w_hat.T + b_hat, rtol=1e-5, atol=1e-5)


def test_float_input_keeps_a_float_bias():
    scale = weight_scale(W_CONV, 8)
    out = quantize(conv_model(21), WeightQuantSpec("conv", "conv", 8, tuple(scale), 0, None))
    assert initializer(out, "conv.bias").data_type == TensorProto.FLOAT
    assert initializer(out, "conv.weight").data_type == TensorProto.INT8


def test_wrong_scale_count_is_an_error():
    from hawq_onnx.errors import HawqError

    with pytest.raises(HawqError, match="3 weight scales for 4 channels"):
        quantize(conv_model(21), WeightQuantSpec("conv", "conv", 8, (1.0, 1.0, 1.0), 0, None))


def test_a_layer_called_twice_gets_one_quantized_weight():
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["y1"], pads=[1, 1, 1, 1], name="first"),
             helper.make_node("Conv", ["y1", "conv.weight"], ["y"], pads=[1, 1, 1, 1], name="second")]
    w = RNG.normal(size=(3, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [numpy_helper.from_array(w, "conv.weight")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    scale = tuple(weight_scale(w, 4))
    out = ir.to_proto(QuantizeWeightsPass([WeightQuantSpec("first", "conv", 4, scale, 0, None),
                                           WeightQuantSpec("second", "conv", 4, scale, 0, None)])(
        ir.from_proto(proto)).model)
    onnx.checker.check_model(out, full_check=True)
    assert sorted(i.name for i in out.graph.initializer if i.data_type == TensorProto.INT4) == ["conv.weight",
                                                                                              "conv.weight_zp"]
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] == convs[1].input[1]
