"""ConvertOpsetPass: onnx's version converter, and an IR version that matches the opset."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hawq_onnx.passes.convert_opset import ConvertOpsetPass, required_opset
from onnx import TensorProto, helper, numpy_helper


def small_model(opset: int = 21) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    w = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain == "")


def test_raises_opset_and_ir_version_for_int2():
    proto = small_model(21)
    result = ConvertOpsetPass(25)(ir.from_proto(proto))
    out = ir.to_proto(result.model)
    assert result.modified
    assert opset_of(out) == 25
    assert out.ir_version == onnx.helper.find_min_ir_version_for(list(out.opset_import)) == 13
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(1).normal(size=(1, 3, 4, 4)).astype(np.float32)
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(out), run(proto), rtol=1e-6)


def test_never_lowers():
    result = ConvertOpsetPass(21)(ir.from_proto(small_model(21)))
    assert not result.modified
    assert opset_of(ir.to_proto(result.model)) == 21


@pytest.mark.parametrize("bits, opset", [((8,), 21), ((4, 8), 21), ((3, None), 21), ((2, 4, 8), 25), ((), 21)])
def test_required_opset(bits, opset):
    assert required_opset(bits) == opset
