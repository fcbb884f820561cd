"""The passes that take bytes out of the file without changing a value: computed bias scales,
short names for the exporter's tensors, no default attributes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hawq_onnx.passes.compact_names import CompactNamesPass
from hawq_onnx.passes.computed_bias_scale import ComputedBiasScalePass
from hawq_onnx.passes.drop_default_attributes import DropDefaultAttributesPass
from onnx import TensorProto, helper, numpy_helper

SX = np.float32(0.0371)
SW = np.array([0.011, 0.0203, 0.0077], np.float32)


def conv_model(bias_scale: np.ndarray, strides=(1, 1)) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(int8 weight DQ, int32 bias DQ) -> Relu -> Q/DQ, with the exporter's long names."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(SX), "input_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "input_zp"),
             numpy_helper.from_array(rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8), "layer.weight"),
             numpy_helper.from_array(SW, "layer.weight_scale"),
             numpy_helper.from_array(np.zeros(3, np.int8), "layer.weight_zp"),
             numpy_helper.from_array(rng.integers(-500, 500, 3).astype(np.int32), "layer.bias"),
             numpy_helper.from_array(bias_scale, "layer.bias_scale"),
             numpy_helper.from_array(np.array(0.05, np.float32), "relu_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "relu_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "input_scale", "input_zp"], ["input_q"]),
             helper.make_node("DequantizeLinear", ["input_q", "input_scale", "input_zp"], ["input_dq"]),
             helper.make_node("DequantizeLinear", ["layer.weight", "layer.weight_scale", "layer.weight_zp"],
                              ["layer.weight_dq"], axis=0),
             helper.make_node("DequantizeLinear", ["layer.bias", "layer.bias_scale"], ["layer.bias_dq"], axis=0),
             helper.make_node("Conv", ["input_dq", "layer.weight_dq", "layer.bias_dq"], ["conv"], name="node_conv",
                              group=1, auto_pad="NOTSET", strides=list(strides), dilations=[1, 1], pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Relu", ["conv"], ["relu"], name="node_relu"),
             helper.make_node("QuantizeLinear", ["relu", "relu_scale", "relu_zp"], ["relu_q"]),
             helper.make_node("DequantizeLinear", ["relu_q", "relu_scale", "relu_zp"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def run(proto: onnx.ModelProto, optimized: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(1).normal(size=(4, 2, 6, 6)).astype(np.float32)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def fused_ops(proto: onnx.ModelProto, tmp_path) -> set[str]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}


def apply(pass_, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    own = onnx.ModelProto()
    own.CopyFrom(proto)  # onnx_ir wraps the initializers' protos: a renamed value renames them
    result = pass_(ir.from_proto(own))
    out = ir.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result.modified


def test_bias_scale_becomes_the_product_of_the_scales_it_is(tmp_path):
    proto = conv_model(SW * SX)
    out, modified = apply(ComputedBiasScalePass(), proto)
    assert modified
    assert "layer.bias_scale" not in {i.name for i in out.graph.initializer}
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert list(mul.input) == ["layer.weight_scale", "input_scale"]
    for optimized in (False, True):
        np.testing.assert_array_equal(run(out, optimized), run(proto, optimized))
    assert "QLinearConv" in fused_ops(out, tmp_path)  # ONNX Runtime still fuses the layer
    stored = sum(i.ByteSize() for i in out.graph.initializer)
    assert stored < sum(i.ByteSize() for i in proto.graph.initializer) - 4 * len(SW)


def test_a_bias_scale_that_is_not_the_product_is_kept():
    off_by_an_ulp = np.nextafter(SW * SX, np.float32(1))
    out, modified = apply(ComputedBiasScalePass(), conv_model(off_by_an_ulp))
    assert not modified and "layer.bias_scale" in {i.name for i in out.graph.initializer}


def test_compact_names_keep_the_layers_the_float_tensors_and_the_interface(tmp_path):
    proto = conv_model(SW * SX)
    out, modified = apply(CompactNamesPass(), proto)
    assert modified
    values = {o for n in out.graph.node for o in n.output}
    inits = {i.name for i in out.graph.initializer}
    assert {"layer.weight", "layer.bias"} <= inits          # the layer names stay on the weights
    assert {"conv", "relu", "y"} <= values                    # the float model's tensors and the output
    assert not any(v.endswith(("_q", "_dq")) for v in values)
    assert not any(i.endswith(("_scale", "_zp")) for i in inits)
    assert [n.input[0] for n in out.graph.node][:1] == ["x"]
    for optimized in (False, True):
        np.testing.assert_array_equal(run(out, optimized), run(proto, optimized))
    assert "QLinearConv" in fused_ops(out, tmp_path)
    assert sum(n.ByteSize() for n in out.graph.node) < sum(n.ByteSize() for n in proto.graph.node)
    again, _ = apply(CompactNamesPass(), proto)
    assert again.SerializeToString() == out.SerializeToString()  # the same names every time


@pytest.mark.parametrize("strides, kept", [((1, 1), {"pads", "kernel_shape"}), ((2, 2), {"pads", "kernel_shape", "strides"})])
def test_default_attributes_are_dropped_and_the_values_stay(strides, kept):
    proto = conv_model(SW * SX, strides)
    out, modified = apply(DropDefaultAttributesPass(), proto)
    assert modified
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert {a.name for a in conv.attribute} == kept
    dq = next(n for n in out.graph.node if n.output[0] == "layer.weight_dq")
    assert [a.name for a in dq.attribute] == ["axis"]  # 0, not DequantizeLinear's default of 1
    np.testing.assert_array_equal(run(out, False), run(proto, False))
