"""Compute each int32 bias's scale in the graph, as input scale x weight scale, instead of storing it.

A quantized bias is dequantized with scale ``s_x * s_w[c]`` per output channel
(``hawq_onnx.core.grid.bias_scale``, a float32 product). The file already holds both factors,
the layer input's scale and the weight's per-channel scale: ``Mul(s_w, s_x)`` gives the same
float32 array bit for bit, and runtimes fold it at load (ONNX Runtime's constant folding runs
before its QDQ fusions; QLinearConv reads the int32 bias, not its scale). Four bytes per output
channel leave the file (ResNet20: 3.4 KB of a 111 KB file).

Only where the stored scale equals the product exactly: anything else (a bias scale made by
another tool, a per-channel input scale) is left as it is.

Preserves: every value the graph computes (the scale is the same array), the bias initializer
and its DequantizeLinear, the layer's fusion into an integer kernel.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import NameScope, constant_array, make_node, nodes_of

LAYER_BIAS_INPUT = {"Conv": 2, "Gemm": 2, "ConvTranspose": 2}


def _dequantize_scale(value: ir.Value | None) -> ir.Value | None:
    """The scale input of the DequantizeLinear that gives ``value`` (through a weight's Cast chain)."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.inputs) < 2:
        return None
    return dq.inputs[1]


class ComputedBiasScalePass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameScope(graph)
        products: dict[tuple[str, str], ir.Value] = {}  # (weight scale, input scale) -> Mul output
        modified = False
        for layer in nodes_of(graph, list(LAYER_BIAS_INPUT)):
            index = LAYER_BIAS_INPUT[layer.op_type]
            if len(layer.inputs) <= index:
                continue
            bias_dq = layer.inputs[index].producer() if layer.inputs[index] is not None else None
            if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or len(bias_dq.inputs) < 2:
                continue
            stored, x_scale, w_scale = bias_dq.inputs[1], _dequantize_scale(layer.inputs[0]), \
                _dequantize_scale(layer.inputs[1])
            if stored is None or x_scale is None or w_scale is None or not stored.is_initializer():
                continue
            s, sx, sw = (constant_array(v) for v in (stored, x_scale, w_scale))
            if s is None or sx is None or sw is None or sx.size != 1 or s.dtype != np.float32 \
                    or sx.dtype != np.float32 or sw.dtype != np.float32 or sw.shape != s.shape:
                continue
            if not np.array_equal((sw * sx.reshape(())).astype(np.float32).view(np.uint32), s.view(np.uint32)):
                continue  # not this product, bit for bit
            key = (w_scale.name, x_scale.name)
            if key not in products:
                mul = make_node(names, "Mul", [w_scale, x_scale], f"{stored.name}_product")
                mul.outputs[0].type, mul.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(s.shape)
                graph.insert_before(bias_dq, mul)
                products[key] = mul.outputs[0]
            bias_dq.replace_input_with(1, products[key])
            if not stored.uses():
                graph.initializers.pop(stored.name)
            modified = True
        return ir.passes.PassResult(model, modified)
