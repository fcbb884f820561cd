"""Run onnxsim (constant folding, shape-op simplification, dead-code removal) on the graph.

Runs on the float graph, before quantization: onnxsim leaves QuantizeLinear/DequantizeLinear
alone but cannot evaluate sub-byte (INT4/INT2) tensors, so nothing it could improve appears
later. Preserves: the graph's function, input and output names, initializer names. Drops the
``onnxsim.*`` metadata keys onnxsim adds, so the output stays free of build-time metadata.
A model onnxsim cannot simplify is returned unchanged (logged), never half-simplified.
"""

from __future__ import annotations

import contextlib
import io
import logging

import onnx_ir as ir

log = logging.getLogger(__name__)


class OnnxSimplifyPass(ir.passes.FunctionalPass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        import onnxsim

        proto = ir.to_proto(model)
        before = proto.SerializeToString(deterministic=True)
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                simplified, ok = onnxsim.simplify(proto)
        except Exception as exc:  # onnxsim raises bare RuntimeErrors from C++
            log.info("onnxsim could not simplify the model (%s: %s); keeping it as is",
                     exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")
            return ir.passes.PassResult(ir.from_proto(proto), False)
        if not ok:
            log.info("onnxsim's result failed its own check; keeping the model as is")
            return ir.passes.PassResult(ir.from_proto(proto), False)
        keep = [p for p in simplified.metadata_props if not p.key.startswith("onnxsim.")]
        del simplified.metadata_props[:]
        simplified.metadata_props.extend(keep)
        modified = simplified.SerializeToString(deterministic=True) != before
        return ir.passes.PassResult(ir.from_proto(simplified), modified)
