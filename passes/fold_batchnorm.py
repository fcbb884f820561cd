"""Fold an inference-mode BatchNormalization into the Conv or Gemm that feeds it.

hawq-onnx folds BatchNorm in PyTorch before export, and torch's exporter folds it too, so on
our own exports this pass finds nothing; it is here for ONNX files that kept the node.

Preserves: the graph's function (up to float rounding), the Conv/Gemm weight and bias
initializer names (they now hold the folded values: the plan maps layers by those names),
and every other node. A BatchNormalization is folded only when its input comes from a Conv or
a Gemm used by nothing else, its statistics are constants, and that layer's weight and bias
are initializers used by nothing else.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import NameScope, add_initializer, constant_array, int_attr, nodes_of, sole_user


def _owned_initializer(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and len(value.uses()) == 1


def _foldable(layer: ir.Node | None, bn: ir.Node) -> bool:
    if layer is None or layer.op_type not in ("Conv", "Gemm") or layer.domain not in ("", "ai.onnx"):
        return False
    if len(bn.outputs) != 1 or int_attr(bn, "training_mode", 0) != 0:
        return False
    if any(constant_array(v) is None for v in bn.inputs[1:5]):
        return False
    if layer.op_type == "Gemm" and (int_attr(layer, "transA", 0) != 0 or len(layer.inputs) < 2):
        return False
    if sole_user(layer.outputs[0]) is not bn:
        return False
    bias = layer.inputs[2] if len(layer.inputs) > 2 else None
    return _owned_initializer(layer.inputs[1]) and (bias is None or _owned_initializer(bias))


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Conv/Gemm -> BatchNormalization becomes one Conv/Gemm.

    W' = W * g / sqrt(v + eps) per output channel, b' = (b - m) * g / sqrt(v + eps) + beta.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameScope(graph)
        modified = False
        for bn in nodes_of(graph, ["BatchNormalization"]):
            layer = bn.inputs[0].producer() if bn.inputs[0] is not None else None
            if not _foldable(layer, bn):
                continue
            gamma, beta, mean, var = (constant_array(v).astype(np.float64) for v in bn.inputs[1:5])
            eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
            factor = gamma / np.sqrt(var + eps)
            weight_value = layer.inputs[1]
            w = weight_value.const_value.numpy().astype(np.float64)
            # Output channels: axis 0 of a Conv weight; of a Gemm weight, axis 0 with transB else 1.
            axis = 1 if layer.op_type == "Gemm" and int_attr(layer, "transB", 0) == 0 else 0
            shape = [1] * w.ndim
            shape[axis] = -1
            w_folded = (w * factor.reshape(shape)).astype(np.float32)
            weight_value.const_value = ir.Tensor(w_folded, name=weight_value.name)
            bias_value = layer.inputs[2] if len(layer.inputs) > 2 else None
            b = np.zeros_like(mean) if bias_value is None else bias_value.const_value.numpy().astype(np.float64)
            b_folded = ((b - mean) * factor + beta).astype(np.float32)
            if bias_value is None:
                bias_value = add_initializer(graph, names, f"{weight_value.name}_bias", b_folded)
                layer.resize_inputs(3)
                layer.replace_input_with(2, bias_value)
            else:
                bias_value.const_value = ir.Tensor(b_folded, name=bias_value.name)
            out, folded_out = bn.outputs[0], layer.outputs[0]
            out_name, is_output = out.name, out.is_graph_output()
            folded_out.type = folded_out.type or out.type
            folded_out.shape = folded_out.shape or out.shape
            statistics = [v for v in bn.inputs[1:5] if v is not None]
            out.replace_all_uses_with(folded_out, replace_graph_outputs=True)
            graph.remove(bn, safe=True)
            if is_output:  # keep the model's interface: the output keeps its name
                folded_out.name = out_name
            for v in statistics:
                if v.is_initializer() and not v.uses() and v.name in graph.initializers:
                    graph.initializers.pop(v.name)
            modified = True
        return ir.passes.PassResult(model, modified)
