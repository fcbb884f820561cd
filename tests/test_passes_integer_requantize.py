"""IntegerRequantizePass: DQ -> Q between grids becomes a QLinearLeakyRelu (a table) under ONNX Runtime, value for value."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hawq_onnx.passes.integer_requantize import IntegerRequantizePass
from onnx import TensorProto, helper, numpy_helper

COARSE_SCALE, COARSE_ZP = 0.4, 2


def model(k: int) -> onnx.ModelProto:
    """x -> 8-bit Q/DQ on the grid nested k times in the coarse one -> Q to the coarse grid -> Clip(0, 15) -> DQ.

    The fine tensor also feeds a second output, as a shared conv output feeds a shortcut.
    """
    fine_scale = np.float32(np.float32(COARSE_SCALE) / np.float32(k))
    inits = [numpy_helper.from_array(np.array(fine_scale, np.float32), "s_fine"),
             numpy_helper.from_array(np.array(COARSE_ZP * k, np.uint8), "z_fine"),
             numpy_helper.from_array(np.array(COARSE_SCALE, np.float32), "s_coarse"),
             numpy_helper.from_array(np.array(COARSE_ZP, np.uint8), "z_coarse"),
             numpy_helper.from_array(np.array(0, np.uint8), "lo"),
             numpy_helper.from_array(np.array(15, np.uint8), "hi")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_fine", "z_fine"], ["fq"]),
             helper.make_node("DequantizeLinear", ["fq", "s_fine", "z_fine"], ["fine"]),
             helper.make_node("QuantizeLinear", ["fine", "s_coarse", "z_coarse"], ["cq"]),
             helper.make_node("Clip", ["cq", "lo", "hi"], ["cc"]),
             helper.make_node("DequantizeLinear", ["cc", "s_coarse", "z_coarse"], ["coarse"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
                              [helper.make_tensor_value_info("coarse", TensorProto.FLOAT, [4096]),
                               helper.make_tensor_value_info("fine", TensorProto.FLOAT, [4096])], inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    out.ir_version = 10
    return out


def run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def every_fine_level(k: int) -> np.ndarray:
    fine_scale = np.float32(COARSE_SCALE) / np.float32(k)
    levels = (np.arange(256) - COARSE_ZP * k) * fine_scale  # each fine integer once
    rest = np.random.default_rng(k).uniform(-2, 8, size=4096 - 256)
    return np.concatenate([levels, rest]).astype(np.float32)


def test_requantization_becomes_an_integer_table_bit_for_bit(tmp_path):
    for k in (2, 3, 5, 17):  # any ratio: the table is built from the float pair itself
        proto = model(k)
        result = IntegerRequantizePass()(ir.from_proto(proto))
        out = ir.to_proto(result.model)
        onnx.checker.check_model(out, full_check=True)
        assert result.modified
        assert [n.op_type for n in out.graph.node].count("LeakyRelu") == 1
        x = every_fine_level(k)
        before, after = run(proto, x), run(out, x)
        np.testing.assert_array_equal(after[0], before[0])  # every fine level lands where the float pair put it
        np.testing.assert_array_equal(after[1], before[1])
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"opt{k}.onnx")
        ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
        assert ops["QLinearLeakyRelu"] == 1 and ops["QuantizeLinear"] == 1  # only the input's Q is left in float
        assert ops["LeakyRelu"] == 0


def test_a_pair_between_integer_types_keeps_the_float_pair():
    proto = model(3)
    for init in proto.graph.initializer:
        if init.name == "z_coarse":  # an int8 target grid: QLinearLeakyRelu takes and gives one type
            init.CopyFrom(numpy_helper.from_array(np.array(COARSE_ZP, np.int8), "z_coarse"))
    proto.graph.node[3].input[1] = ""  # the Clip's uint8 lower bound would not match int8
    proto.graph.node[3].input[2] = ""
    result = IntegerRequantizePass()(ir.from_proto(proto))
    assert not result.modified
