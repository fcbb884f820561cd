"""Store 2-bit weights as packed INT4 for runtimes whose ONNX reader has no INT2 (OpenVINO 2026.4).

The integers of a 2-bit weight, -2..1, are INT4 values as they are: the tensor is written as
INT4 (two per byte instead of four), its zero point likewise; every DequantizeLinear or Cast
that read the INT2 tensor reads the INT4 one. Runs before ``WidenSubByteWeightsPass``, which
then widens INT4 as it would have widened INT2.

Preserves: every value the graph computes (the integers, scales and axes are unchanged), the
initializer names; the file grows by half a byte per 2-bit weight (the report gives its size).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import constant_array


class TwoBitAsInt4Pass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.dtype != ir.DataType.INT2:
                continue
            q = constant_array(value).astype(np.int8).astype(ml_dtypes.int4)
            value.const_value = ir.Tensor(q, dtype=ir.DataType.INT4, name=value.name)
            value.type, value.shape = None, None  # the tensor carries both (see graph_edit.add_initializer)
            modified = True
        return ir.passes.PassResult(model, modified)
