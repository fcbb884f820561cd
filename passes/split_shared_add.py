"""Compute a residual Add twice when a sub-8-bit layer and other consumers share its result.

A ResNet block's input is the previous block's ``Relu(Add(...))``: it feeds the next conv1
(planned 4-bit input) and the next identity path (8 bits). One tensor with one grid cannot
serve both without a requantization (DequantizeLinear -> QuantizeLinear, run in float by
ONNX Runtime: about 1 ms a block at batch 64 on ResNet20). Two copies of the Add (with its
Relu) can: one is quantized straight to the layer's grid, the other to the 8-bit grid of the
rest, and ONNX Runtime runs both as QLinearAdd, an integer kernel far cheaper than the float
requantization. Convolutions are never copied (too costly); their shared outputs keep the
nested 8-bit grid of ``InsertActivationQDQPass``.

Preserves: every value the graph computes (the copy computes the same sum from the same
inputs), node names of the original Add and Relu, and the plan edges (the planned layer keeps
its name and input index; only the tensor it reads changes).
"""

from __future__ import annotations

from typing import Sequence

import onnx_ir as ir

from hawq_onnx.passes.graph_edit import NameScope, is_activation, make_node, nodes_of, sole_user
from hawq_onnx.passes.insert_activation_qdq import FUSED_ACTIVATIONS, INTER_LAYER_BITS, EdgeQuant


class SplitSharedAddPass(ir.passes.InPlacePass):
    def __init__(self, edges: Sequence[EdgeQuant]) -> None:
        super().__init__()
        self.edges = {(e.node, e.input): e for e in edges}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameScope(graph)
        modified = False
        for add in nodes_of(graph, ["Add"]):
            if not all(is_activation(v) for v in add.inputs):
                continue
            relu = sole_user(add.outputs[0])
            relu = relu if relu is not None and relu.op_type in FUSED_ACTIVATIONS else None
            result = relu.outputs[0] if relu is not None else add.outputs[0]
            uses = list(result.uses())
            narrow = [u for u in uses if (u.node.name, u.idx) in self.edges
                      and self.edges[(u.node.name, u.idx)].qparams.bits < INTER_LAYER_BITS]
            grids = {self.edges[(u.node.name, u.idx)].qparams for u in narrow}
            if len(grids) != 1 or len(narrow) == len(uses):
                continue  # nothing to split: one grid serves every consumer
            copy = make_node(names, "Add", list(add.inputs), f"{add.outputs[0].name}_narrow")
            new_nodes = [copy]
            if relu is not None:
                new_nodes.append(make_node(names, relu.op_type, [copy.outputs[0]], f"{result.name}_narrow"))
            graph.insert_after(relu or add, new_nodes)
            for use in narrow:
                use.node.replace_input_with(use.idx, new_nodes[-1].outputs[0])
            modified = True
        return ir.passes.PassResult(model, modified)
