"""Keep types and shapes in the file only for the graph's inputs and outputs.

Inferred types and shapes of intermediate tensors (ONNX ``value_info``) are a cache: every
runtime infers them again at load, and ``onnx.checker``'s full check infers and checks them
anyway. In a quantized model they are about 40 bytes per tensor, a noticeable share of a
small file. Preserves: the graph, its interface (input and output types and shapes), and all
initializers (whose types live in the tensors themselves).
"""

from __future__ import annotations

import onnx_ir as ir


class DropIntermediateShapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        interface = {id(v) for v in list(graph.inputs) + list(graph.outputs)}
        modified = False
        values = [v for node in graph for v in node.outputs] + list(graph.initializers.values())
        for value in values:
            if id(value) in interface or (value.type is None and value.shape is None):
                continue
            value.type = None
            value.shape = None
            modified = True
        return ir.passes.PassResult(model, modified)
