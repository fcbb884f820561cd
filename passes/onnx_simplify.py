"""Run onnxsim (constant folding, shape-op simplification, dead-code removal) on the graph.

Runs on the float graph, before quantization: onnxsim leaves QuantizeLinear/DequantizeLinear
alone but cannot evaluate sub-byte (INT4/INT2) tensors, so nothing it could improve appears
later. Preserves: the graph's function, input and output names, initializer names. Drops the
``onnxsim.*`` metadata keys onnxsim adds, so the output stays free of build-time metadata.
A model onnxsim cannot simplify is returned unchanged (logged), never half-simplified.

Also preserves every weighted layer as its own standard ONNX node. onnxsim's attention
fusions are skipped: ``fuse_qkv`` (three MatMuls with constant weights reading one tensor, as
attention's q/k/v projections do, become one MatMul on the concatenated weight and a Split)
would give three plan layers with their own bits one weight, and ``fuse_attention`` /
``fuse_gqa`` fold the projections into com.microsoft contrib ops, outside standard ONNX and
without a weight per layer for the plan's Q/DQ.
A result that still brings in an operator domain the input did not use is discarded (logged).
"""

from __future__ import annotations

import contextlib
import io
import logging

import onnx
import onnx_ir as ir

log = logging.getLogger(__name__)

# onnxoptimizer passes that would merge layers the plan quantizes separately.
SKIPPED_OPTIMIZERS = ("fuse_qkv", "fuse_attention", "fuse_gqa")


def _domains(proto: onnx.ModelProto) -> set[str]:
    return {n.domain or "ai.onnx" for n in proto.graph.node}


class OnnxSimplifyPass(ir.passes.FunctionalPass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        import onnxsim

        proto = ir.to_proto(model)
        before = proto.SerializeToString(deterministic=True)
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                simplified, ok = onnxsim.simplify(proto, skipped_optimizers=list(SKIPPED_OPTIMIZERS))
        except Exception as exc:  # onnxsim raises bare RuntimeErrors from C++
            log.info("onnxsim could not simplify the model (%s: %s); keeping it as is",
                     exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")
            return ir.passes.PassResult(ir.from_proto(proto), False)
        if not ok:
            log.info("onnxsim's result failed its own check; keeping the model as is")
            return ir.passes.PassResult(ir.from_proto(proto), False)
        new_domains = _domains(simplified) - _domains(proto)
        if new_domains:
            log.info("onnxsim brought in operators of %s; keeping the model as is", ", ".join(sorted(new_domains)))
            return ir.passes.PassResult(ir.from_proto(proto), False)
        keep = [p for p in simplified.metadata_props if not p.key.startswith("onnxsim.")]
        del simplified.metadata_props[:]
        simplified.metadata_props.extend(keep)
        modified = simplified.SerializeToString(deterministic=True) != before
        return ir.passes.PassResult(ir.from_proto(simplified), modified)
