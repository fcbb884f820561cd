"""FoldBatchNormPass on hand-built Conv -> BatchNormalization and Gemm -> BatchNormalization graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hawq_onnx.passes.fold_batchnorm import FoldBatchNormPass
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def _bn_inits(c: int, prefix: str) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), f"{prefix}.scale"),
            numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), f"{prefix}.B"),
            numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), f"{prefix}.mean"),
            numpy_helper.from_array(RNG.uniform(0.5, 2, c).astype(np.float32), f"{prefix}.var")]


def conv_bn_model(extra_use: bool = False, with_bias: bool = True) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv.weight")]
    inputs = ["x", "conv.weight"]
    if with_bias:
        inits.append(numpy_helper.from_array(RNG.normal(size=4).astype(np.float32), "conv.bias"))
        inputs.append("conv.bias")
    inits += _bn_inits(4, "bn")
    nodes = [helper.make_node("Conv", inputs, ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.B", "bn.mean", "bn.var"], ["y"],
                              epsilon=1e-3, name="bn")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])]
    if extra_use:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 4, 5, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def gemm_bn_model(trans_b: int) -> onnx.ModelProto:
    w = RNG.normal(size=(6, 5) if trans_b else (5, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "fc.weight"), numpy_helper.from_array(RNG.normal(size=6).astype(np.float32), "fc.bias")]
    inits += _bn_inits(6, "bn")
    nodes = [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["g"], transB=trans_b, name="fc"),
             helper.make_node("BatchNormalization", ["g", "bn.scale", "bn.B", "bn.mean", "bn.var"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def fold(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    model = ir.from_proto(proto)
    result = FoldBatchNormPass()(model)
    return ir.to_proto(result.model), result.modified


def test_conv_bn_folds_exactly_and_keeps_names():
    for with_bias in (True, False):
        proto = conv_bn_model(with_bias=with_bias)
        folded, modified = fold(proto)
        assert modified
        assert [n.op_type for n in folded.graph.node] == ["Conv"]
        assert folded.graph.output[0].name == "y"
        assert "conv.weight" in {i.name for i in folded.graph.initializer}
        onnx.checker.check_model(folded, full_check=True)
        x = RNG.normal(size=(2, 3, 5, 5)).astype(np.float32)
        np.testing.assert_allclose(run(folded, x)[0], run(proto, x)[0], rtol=1e-4, atol=1e-4)


def test_gemm_bn_folds_along_the_output_axis():
    for trans_b in (0, 1):
        proto = gemm_bn_model(trans_b)
        folded, modified = fold(proto)
        assert modified and [n.op_type for n in folded.graph.node] == ["Gemm"]
        assert {i.name for i in folded.graph.initializer} == {"fc.weight", "fc.bias"}
        onnx.checker.check_model(folded, full_check=True)
        x = RNG.normal(size=(3, 5)).astype(np.float32)
        np.testing.assert_allclose(run(folded, x)[0], run(proto, x)[0], rtol=1e-4, atol=1e-4)


def test_conv_output_used_elsewhere_is_not_folded():
    folded, modified = fold(conv_bn_model(extra_use=True))
    assert not modified
    assert [n.op_type for n in folded.graph.node] == ["Conv", "BatchNormalization", "Relu"]
