"""Replace planned layers' float weights by integers behind DequantizeLinear; biases to int32.

For each layer spec: the weight initializer becomes its integers from
``quantization.quantize_weight`` (symmetric on the plan's weight range, per output channel, zero
point 0) stored in
the narrowest ONNX type that holds them (INT8 for 8 bits, INT4 for 4 and 3 bits, INT2 for 2:
onnx packs sub-byte tensors, two or four values a byte), read through
``DequantizeLinear(q, scale[C], zero_point[C] = 0, axis=channel axis)`` (the zero point is
explicit: ONNX Runtime 1.32 fuses Gemm into QGemm only with one; equal zero vectors are merged
by the clean-up). Where the layer's input is
quantized (``input_scale`` set) its bias becomes int32 on the grid of scale s_w * s_a
(``quantization.quantize_bias``), the form ONNX Runtime folds into QLinearConv/QGemm.

Preserves: every node's inputs except the planned weights and biases, which now carry the
fake-quantized values of the PyTorch reference; the weight initializer is named
``<layer>.weight`` (and the bias ``<layer>.bias``) so the file says which layer is which.
A weight that other nodes also read stays float for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ml_dtypes
import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import NameScope, add_initializer, constant_array, make_node, sole_user

from hawq_onnx.core.grid import bias_scale, quantize_bias, quantize_weight
from hawq_onnx.errors import HawqError

# Weight bits -> (ONNX storage type, numpy dtype of that storage).
STORAGE = {
    8: (ir.DataType.INT8, np.int8),
    4: (ir.DataType.INT4, ml_dtypes.int4),
    3: (ir.DataType.INT4, ml_dtypes.int4),
    2: (ir.DataType.INT2, ml_dtypes.int2),
}


@dataclass(frozen=True)
class WeightQuantSpec:
    node: str                  # ONNX node name (Conv, Gemm or MatMul)
    layer: str                 # plan layer name: names the new initializers
    bits: int
    scale: tuple[float, ...]   # per output channel
    channel_axis: int
    input_scale: float | None  # scale of the quantized input; None leaves the bias float
    weight_range: str = "narrow"  # quantization.WEIGHT_RANGES


def _bias_input(graph_node: ir.Node) -> tuple[ir.Node, int] | None:
    """(node, input index) holding the layer's bias: Conv/Gemm input 2, or the Add after a MatMul."""
    if graph_node.op_type in ("Conv", "Gemm"):
        return (graph_node, 2) if len(graph_node.inputs) > 2 and graph_node.inputs[2] is not None else None
    add = sole_user(graph_node.outputs[0])
    if add is None or add.op_type != "Add":
        return None
    other = 1 if add.inputs[0] is graph_node.outputs[0] else 0
    return add, other


def _quantize_along(w: np.ndarray, scale: np.ndarray, bits: int, axis: int, weight_range: str) -> np.ndarray:
    q = quantize_weight(np.moveaxis(w, axis, 0), scale, bits, weight_range)  # the grid is defined on axis 0
    return np.moveaxis(q, 0, axis)


class QuantizeWeightsPass(ir.passes.InPlacePass):
    def __init__(self, specs: Sequence[WeightQuantSpec]) -> None:
        super().__init__()
        self.specs = list(specs)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = {n.name: n for n in graph}
        names = NameScope(graph)
        # A layer called twice (two nodes, one weight) gets one quantized weight, read twice.
        groups: dict[tuple, list[tuple[ir.Node, WeightQuantSpec]]] = {}
        for spec in self.specs:
            node = nodes.get(spec.node)
            if node is None:
                raise HawqError(f"layer {spec.layer}: node {spec.node} is not in the graph")
            key = (id(node.inputs[1]), spec.layer, spec.bits, spec.scale, spec.channel_axis)
            groups.setdefault(key, []).append((node, spec))
        for users in groups.values():
            self._quantize_weight(graph, names, users)
            for node, spec in users:
                if spec.input_scale is not None:
                    self._quantize_bias(graph, names, node, spec)
        return ir.passes.PassResult(model, bool(self.specs))

    @staticmethod
    def _replace_constant(graph: ir.Graph, names: NameScope, value: ir.Value, user: ir.Node, index: int) -> None:
        """Detach ``user`` from ``value``; drop the initializer (and free its name) when nothing else reads it."""
        user.replace_input_with(index, None)
        if value.is_initializer() and not value.uses() and not value.is_graph_output():
            graph.initializers.pop(value.name)
            names.release(value.name)

    def _quantize_weight(self, graph: ir.Graph, names: NameScope, users: list[tuple[ir.Node, WeightQuantSpec]]) -> None:
        node, spec = users[0]
        value = node.inputs[1]
        w = constant_array(value)
        if w is None:
            raise HawqError(f"layer {spec.layer}: the weight of node {node.name} is not a constant")
        scale = np.asarray(spec.scale, np.float32)
        if scale.shape != (w.shape[spec.channel_axis],):
            raise HawqError(f"layer {spec.layer}: {scale.size} weight scales for {w.shape[spec.channel_axis]} channels")
        dtype, np_dtype = STORAGE[spec.bits]
        q = _quantize_along(w.astype(np.float32), scale, spec.bits, spec.channel_axis, spec.weight_range)
        for user, _ in users:  # first, so that the float weight's name is free when no one else reads it
            self._replace_constant(graph, names, value, user, 1)
        base = f"{spec.layer}.weight"
        q_value = add_initializer(graph, names, base, q.astype(np_dtype), dtype)
        s_value = add_initializer(graph, names, f"{base}_scale", scale)
        z_value = add_initializer(graph, names, f"{base}_zp", np.zeros(scale.shape, np_dtype), dtype)
        dq = make_node(names, "DequantizeLinear", [q_value, s_value, z_value], f"{base}_dq",
                       {"axis": spec.channel_axis})
        graph.insert_before(node, dq)
        for user, _ in users:
            user.replace_input_with(1, dq.outputs[0])

    def _quantize_bias(self, graph: ir.Graph, names: NameScope, node: ir.Node, spec: WeightQuantSpec) -> None:
        where = _bias_input(node)
        if where is None:
            return
        user, index = where
        value = user.inputs[index]
        b = constant_array(value)
        if b is None or b.ndim != 1 or b.shape[0] != len(spec.scale):
            return  # a broadcast or computed bias stays float
        if node.op_type == "Gemm" and any(node.attributes[a].as_float() != 1.0
                                          for a in ("alpha", "beta") if a in node.attributes):
            return  # alpha/beta rescale the bias: ORT's integer Gemm assumes 1
        q = quantize_bias(b.astype(np.float32), np.asarray(spec.scale, np.float32), spec.input_scale)
        s = bias_scale(np.asarray(spec.scale, np.float32), spec.input_scale)
        self._replace_constant(graph, names, value, user, index)
        base = f"{spec.layer}.bias"
        q_value = add_initializer(graph, names, base, q.astype(np.int32))
        s_value = add_initializer(graph, names, f"{base}_scale", s)
        dq = make_node(names, "DequantizeLinear", [q_value, s_value], f"{base}_dq", {"axis": 0})
        graph.insert_before(user, dq)
        user.replace_input_with(index, dq.outputs[0])
