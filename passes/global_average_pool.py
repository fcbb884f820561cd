"""Rewrite a spatial ReduceMean (keepdims=1) as GlobalAveragePool.

torch exports ``adaptive_avg_pool2d(x, 1)`` and ``x.mean((2, 3), keepdim=True)`` as
ReduceMean, which ONNX Runtime only runs in float; GlobalAveragePool has an integer kernel
(QLinearGlobalAveragePool), so the rewrite keeps a quantized network integer to its head.
Preserves: the graph's function exactly (same reduction, same output shape and name).
Rewrites only a ReduceMean over every axis after the channel axis of an input whose rank
is known, with keepdims=1.
"""

from __future__ import annotations

import onnx_ir as ir
from hawq_onnx.passes.graph_edit import constant_array, int_attr, nodes_of


def _reduced_axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # opset >= 18: axes is an input
        axes = constant_array(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    attr = node.attributes.get("axes")
    return None if attr is None else [int(a) for a in attr.as_ints()]


class ReduceMeanToGlobalAveragePoolPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in nodes_of(graph, ["ReduceMean"]):
            x = node.inputs[0]
            rank = len(x.shape) if x is not None and x.shape is not None else None
            axes = _reduced_axes(node)
            if rank is None or rank < 3 or axes is None or int_attr(node, "keepdims", 1) != 1:
                continue
            if sorted(a % rank for a in axes) != list(range(2, rank)):
                continue
            pool = ir.node("GlobalAveragePool", [x], name=node.name, outputs=[ir.Value(name=node.outputs[0].name)])
            pool.outputs[0].shape, pool.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
            old = node.outputs[0]
            is_output = old.is_graph_output()
            old.replace_all_uses_with(pool.outputs[0], replace_graph_outputs=True)
            graph.insert_before(node, pool)
            graph.remove(node, safe=True)
            if is_output:
                pool.outputs[0].name = old.name
            modified = True
        return ir.passes.PassResult(model, modified)
