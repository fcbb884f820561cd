"""Compute a residual Add twice when a sub-8-bit layer and other consumers share its result.

A ResNet block's input is the previous block's ``Relu(Add(...))``: it feeds the next conv1
(planned 4-bit input) and the next identity path (8 bits). One tensor with one grid serves
both only through an 8-bit grid nested on the 4-bit one (step s/k, k odd, at most 17 and as
large as the tensor's range allows: 7 or 9 for ResNet20's sums), which the 4-bit consumer
requantizes (``IntegerRequantizePass``); rounding k down to an odd integer makes that grid up
to about 2/k coarser than one fitted to the range. Two copies of the Add (with its Relu)
avoid that: one is quantized straight to the layer's grid, the other to an 8-bit grid
calibrated on the sum's own range, and ONNX Runtime runs both as QLinearAdd, as many integer
kernels as the nested form needs. ResNet20 (13x, 4-bit activations, ORT on the 10,000 test
images): 91.17 % with the copies, 91.10 % with nested grids (7 images apart, within noise).
Convolutions are never copied (too costly); their shared outputs keep the nested grid.

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
