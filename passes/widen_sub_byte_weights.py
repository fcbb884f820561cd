"""Widen packed sub-byte weights through Cast(to=INT8) before an int8 DequantizeLinear.

ONNX Runtime 1.32 on CPU does not fuse a Conv whose weight is an INT4/INT2 DequantizeLinear
(it dequantizes on every run, or rejects INT2 beside uint8 activations), but it folds
``INT4/INT2 initializer -> Cast(to=INT8)`` at session load and then fuses
``DequantizeLinear(int8) -> Conv`` into QLinearConv: int8 speed, sub-byte bytes on disk.

Preserves: the stored (packed) initializers and so the file size, the integer values, scales
and axes; only the DequantizeLinear's input and zero point become int8.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import NameScope, add_initializer, constant_array, make_node, nodes_of

SUB_BYTE_SIGNED = (ir.DataType.INT4, ir.DataType.INT2)


class WidenSubByteWeightsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameScope(graph)
        casts: dict[str, ir.Value] = {}        # packed initializer -> its Cast output
        zero_points: dict[str, ir.Value] = {}  # sub-byte zero point -> int8 twin
        modified = False
        for dq in nodes_of(graph, ["DequantizeLinear"]):
            w = dq.inputs[0]
            if w is None or not w.is_initializer() or w.const_value.dtype not in SUB_BYTE_SIGNED:
                continue
            if w.name not in casts:
                cast = make_node(names, "Cast", [w], f"{w.name}_int8", {"to": ir.DataType.INT8})
                cast.outputs[0].type = ir.TensorType(ir.DataType.INT8)
                cast.outputs[0].shape = w.shape
                graph.insert_before(dq, cast)
                casts[w.name] = cast.outputs[0]
            dq.replace_input_with(0, casts[w.name])
            zp = dq.inputs[2] if len(dq.inputs) > 2 else None
            if zp is not None and zp.const_value is not None and zp.const_value.dtype in SUB_BYTE_SIGNED:
                if zp.name not in zero_points:
                    zero_points[zp.name] = add_initializer(graph, names, f"{zp.name}_int8",
                                                           constant_array(zp).astype(np.int8), ir.DataType.INT8)
                dq.replace_input_with(2, zero_points[zp.name])
            modified = True
        for name in zero_points:
            if not graph.initializers[name].uses():
                graph.initializers.pop(name)
        return ir.passes.PassResult(model, modified)
