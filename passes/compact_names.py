"""Short names for the tensors the exporter adds: Q/DQ outputs, scales, zero points, integer steps.

Every QuantizeLinear, DequantizeLinear and Cast output, the integer Clip, Pad, identity
LeakyRelu and scale products computed from them, and the scales, zero points and Clip bounds
those read, carried a name built from the tensor it quantizes (``layer1.0.conv1.weight_dq``,
``relu_2_layer1.1.conv1_q_clip``, ``relu_layer1.0.conv1_scale``): each name is written once
more for every reader, and in a ResNet20 file they were about 12 KB of 111 KB. They become
``q``/``d``/``c``/``t`` (values) and ``s``/``z``/``k`` (scales, zero points, bounds) plus a
base-36 counter, in graph order.

Kept: the graph's inputs and outputs, the quantized weights and biases (their initializers carry
the layer names that ``inspect``, the kernel census and the reports read) and every tensor of the
float model (the convolution, activation and residual outputs, which the exported plan's region
grids name).

Preserves: every node, edge and value; only the names of the added tensors change.
"""

from __future__ import annotations

import onnx_ir as ir
from hawq_onnx.passes.graph_edit import taken_names

PREFIX = {"QuantizeLinear": "q", "DequantizeLinear": "d", "Cast": "c"}
# Steps on tensors the exporter made: renamed when every input is such a tensor or a constant.
DERIVED_OPS = frozenset({"Clip", "Pad", "LeakyRelu", "Mul"})
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = DIGITS[r] + out
        if n == 0:
            return out


class CompactNamesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        taken = taken_names(graph)
        interface = {v.name for v in (*graph.inputs, *graph.outputs)}
        renamed: set[str] = set()
        counters: dict[str, int] = {}

        def fresh(prefix: str) -> str:
            while True:
                n = counters.get(prefix, 0)
                counters[prefix] = n + 1
                name = prefix + _base36(n)
                if name not in taken:
                    taken.add(name)
                    return name

        def added(value: ir.Value | None) -> bool:
            return value is None or value.name in renamed or value.is_initializer()

        modified = False
        parameters: dict[str, str] = {}  # initializer -> prefix, in order of first use
        for node in graph:
            for index, value in enumerate(node.inputs):
                if value is None or not value.is_initializer() or value.name in parameters:
                    continue
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and index >= 1:
                    parameters[value.name] = "s" if index == 1 else "z"
                elif node.op_type == "Clip" and index >= 1:
                    parameters[value.name] = "k"
            if node.op_type in PREFIX:
                prefix = PREFIX[node.op_type]
            elif node.op_type in DERIVED_OPS and all(added(v) for v in node.inputs):
                prefix = "t"
            else:
                continue
            for out in node.outputs:
                if out.name in interface:
                    continue
                out.name = fresh(prefix)
                renamed.add(out.name)
                modified = True
        for name, prefix in parameters.items():
            value = graph.initializers[name]
            if all(_parameter_use(use, renamed) for use in value.uses()) and not value.is_graph_output():
                graph.initializers.pop(name)
                value.name = fresh(prefix)
                graph.register_initializer(value)
                modified = True
        return ir.passes.PassResult(model, modified)


def _parameter_use(use, renamed: set[str]) -> bool:
    """A scale, zero point or bound only: input 1+ of Q/DQ/Clip, or a factor of a renamed product."""
    node = use.node
    if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Clip"):
        return use.idx >= 1
    return node.op_type == "Mul" and all(out.name in renamed for out in node.outputs)
