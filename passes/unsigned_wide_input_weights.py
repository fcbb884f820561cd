"""Store the int8 weights of layers with full-range uint8 inputs as uint8 with zero point 128.

ONNX Runtime's U8S8 integer kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI)
multiply with ``vpmaddubsw``, which adds two ``uint8 x int8`` products into a *saturating*
int16 before widening. Two products of an input integer near 255 and a weight near +-127 pass
32767 and are clamped: measured on an AMD EPYC (AVX2) with ONNX Runtime 1.32, the digits
default's stem and classifier (8-bit inputs, 8-bit weights) took the file from 99.16 % to
96.38 % top-1, while the same file agreed with the fake-quant model on an AVX-512 VNNI CPU.
ONNX Runtime's documented remedies are a reduced weight range or the U8U8 form; the reduced
range changes the weights, U8U8 does not: ``w + 128`` with zero point 128 holds the same
integers, and ONNX Runtime's U8U8 kernels widen to int16 before any addition.

A layer needs it when two products can pass int16: ``2 * a_max * w_max > 32767``, where
``a_max`` is its largest input integer (255, or the bound of the integer Clip that gives a
sub-8-bit activation its grid) and ``w_max`` its largest |weight| integer. Layers with 4-bit
inputs (15 * 127 * 2 = 3810) or 2-4-bit weights (255 * 7 * 2 = 3570) keep the faster U8S8 form.

Preserves: every value the graph computes (the dequantized weights are bit-identical), the
weight initializer's name, the fused-kernel count (ONNX Runtime fuses uint8 weights into
QLinearConv and QGemm alike) and the file size (one byte per weight either way).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import NameScope, add_initializer, constant_array, nodes_of

INT16_MAX = 32767
UINT8_MAX = 255
U8_WEIGHT_ZERO_POINT = 128
LAYER_OPS = ("Conv", "Gemm", "MatMul")


def _input_integer_max(value: ir.Value | None) -> int | None:
    """Largest integer a layer's data input can hold, when it is a uint8 DequantizeLinear's output."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] is None:
        return None
    source = dq.inputs[0]
    if source.dtype not in (None, ir.DataType.UINT8):
        return None
    clip = source.producer()
    if clip is not None and clip.op_type == "Clip" and len(clip.inputs) > 2:
        hi = constant_array(clip.inputs[2])
        if hi is not None and hi.size == 1:
            return int(hi.reshape(()))
    return UINT8_MAX


def _can_saturate(dq: ir.Node, w_max: int) -> bool:
    for use in dq.outputs[0].uses():
        layer = use.node
        if layer.op_type not in LAYER_OPS or use.idx != 1:
            continue
        a_max = _input_integer_max(layer.inputs[0])
        if a_max is not None and 2 * a_max * w_max > INT16_MAX:
            return True
    return False


class UnsignedWideInputWeightsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameScope(graph)
        modified = False
        for dq in nodes_of(graph, ["DequantizeLinear"]):
            w, zp = dq.inputs[0], dq.inputs[2] if len(dq.inputs) > 2 else None
            if w is None or not w.is_initializer() or w.const_value.dtype != ir.DataType.INT8:
                continue
            if any(use.node is not dq for use in w.uses()):
                continue  # read elsewhere as int8: leave it alone
            q = constant_array(w).astype(np.int16)
            zero = constant_array(zp)  # the exporter always writes it (quantize_weights)
            if zero is None or np.any(zero != 0) or q.size == 0:
                continue  # only symmetric weights: zero point 0
            if not _can_saturate(dq, int(np.abs(q).max())):
                continue
            shifted = (q + U8_WEIGHT_ZERO_POINT).astype(np.uint8)  # [-128, 127] -> [0, 255]
            w.const_value = ir.Tensor(shifted, dtype=ir.DataType.UINT8, name=w.name)
            w.type, w.shape = None, None  # the tensor carries both (see graph_edit.add_initializer)
            u8_zp = add_initializer(graph, names, f"{w.name}_zp_u8",
                                    np.full(zero.shape, U8_WEIGHT_ZERO_POINT, np.uint8), ir.DataType.UINT8)
            dq.replace_input_with(2, u8_zp)
            if zp.is_initializer() and not zp.uses():
                graph.initializers.pop(zp.name)
                names.release(zp.name)
            modified = True
        return ir.passes.PassResult(model, modified)
