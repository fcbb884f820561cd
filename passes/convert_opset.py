"""Raise the model's default-domain opset with onnx's version converter, and its IR version to match.

INT4/UINT4 tensors need opset 21 and IR 10, INT2/UINT2 opset 25 and IR 13. onnx.checker
does not check that the IR version suits the opset, so the pass sets it from onnx's own
release table (``onnx.helper.find_min_ir_version_for``), never by hand.
Run it on the float graph, before quantization: the converter's adapters then only meet
ordinary operators. Preserves: the graph's function, names, initializers. Never lowers an
opset or an IR version.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import version_converter

from hawq_onnx.errors import HawqError

# The first opset whose QuantizeLinear/DequantizeLinear take each sub-byte type.
OPSET_FOR_BITS = {8: 21, 4: 21, 3: 21, 2: 25}


def required_opset(weight_bits) -> int:
    """The opset a model with weights of these bit widths needs (21 at least)."""
    return max([OPSET_FOR_BITS[b] for b in weight_bits if b is not None] + [21])


class ConvertOpsetPass(ir.passes.FunctionalPass):
    def __init__(self, target_opset: int) -> None:
        super().__init__()
        self.target_opset = target_opset

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto = ir.to_proto(model)
        current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        modified = False
        if current is None or current < self.target_opset:
            try:
                proto = version_converter.convert_version(proto, self.target_opset)
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                raise HawqError(f"onnx's version converter cannot take this model from opset {current} to "
                                f"{self.target_opset}: {reason}") from None
            modified = True
        ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import))
        if proto.ir_version < ir_version:
            proto.ir_version = ir_version
            modified = True
        return ir.passes.PassResult(ir.from_proto(proto), modified)
