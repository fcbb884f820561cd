"""Which ONNX node is which plan layer: the one place where PyTorch names meet the graph.

A plan names layers by PyTorch module path (``layer1.0.conv1``). torch's exporter keeps
parameter names, so a Conv or Gemm reads the initializer ``layer1.0.conv1.weight``. A Linear
applied to a tensor of rank > 2 becomes a MatMul whose weight the exporter transposed and
renamed (``val_6``): that layer is found by value, the transpose of the PyTorch weight.
A layer found nowhere is an error that says what the graph holds instead (its weight read by
another op, cut out of a weight fused from several layers, or absent).
This is analysis, not a pass: it changes nothing in the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import constant_array, int_attr

from hawq_onnx.errors import HawqError

log = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "Gemm", "MatMul")
WEIGHT_INPUT = 1


@dataclass(frozen=True)
class BoundLayer:
    layer: str          # plan layer (PyTorch module path)
    node: str           # ONNX node name
    op_type: str
    weight: str         # name of the weight initializer the node reads
    channel_axis: int   # the output-channel axis of that initializer


@dataclass(frozen=True)
class LayerRequest:
    """What the binding needs to know about a plan layer."""

    name: str
    out_channels: int
    required: bool      # quantized by the plan: failing to find it is an error


def channel_axis(node: ir.Node, weight: np.ndarray) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if int_attr(node, "transB", 0) == 1 else 1
    return weight.ndim - 1  # MatMul: [..., K, N]


def weighted_layer_nodes(graph: ir.Graph) -> list[tuple[ir.Node, ir.Value, np.ndarray]]:
    """Every Conv/Gemm/MatMul whose weight input is a constant, in graph order."""
    found = []
    for node in graph:
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) <= WEIGHT_INPUT:
            continue
        value = node.inputs[WEIGHT_INPUT]
        array = constant_array(value)
        if array is not None and array.ndim >= 2 and np.issubdtype(array.dtype, np.floating):
            found.append((node, value, array))
    return found


def _matches(onnx_weight: np.ndarray, torch_weight: np.ndarray) -> bool:
    return onnx_weight.shape == torch_weight.shape and np.array_equal(onnx_weight, torch_weight)


def bind_layers(graph: ir.Graph, layers: Sequence[LayerRequest],
                weights: Mapping[str, np.ndarray] | None = None) -> tuple[list[BoundLayer], list[str]]:
    """Bind each plan layer to the node(s) reading its weight.

    ``weights`` maps layer name -> its (BN-folded) PyTorch weight: with it, a name match is
    checked by value and a renamed MatMul/Gemm weight is found as the transpose. Returns the
    bindings and the names of weighted nodes no plan layer covers. A required layer that is
    not found (the error says what holds the first one's weight instead), or whose channel
    count differs, raises HawqError; an optional one is logged.
    """
    candidates = weighted_layer_nodes(graph)
    by_name: dict[str, list[tuple[ir.Node, ir.Value, np.ndarray]]] = {}
    for entry in candidates:
        by_name.setdefault(entry[1].name, []).append(entry)
    bound: list[BoundLayer] = []
    used: set[str] = set()
    missing: list[str] = []
    for request in layers:
        torch_weight = None if weights is None else weights.get(request.name)
        entries = by_name.get(f"{request.name}.weight", [])
        if entries and torch_weight is not None and not _matches(entries[0][2], torch_weight):
            raise HawqError(f"the ONNX initializer {request.name}.weight differs from the model's weight "
                            f"{tuple(torch_weight.shape)}: export from the BatchNorm-folded model")
        if not entries and torch_weight is not None and torch_weight.ndim == 2:
            entries = [e for e in candidates if e[0].op_type in ("MatMul", "Gemm") and e[1].name not in used
                       and _matches(e[2], torch_weight.T)]
        if not entries:
            if request.required:
                missing.append(request.name)
            else:
                log.warning("plan layer %s (left float by the plan) has no node in the ONNX graph", request.name)
            continue
        for node, value, array in entries:
            axis = channel_axis(node, array)
            if array.shape[axis] != request.out_channels:
                raise HawqError(f"plan layer {request.name} has {request.out_channels} output channels but its ONNX "
                                f"weight {value.name} has {array.shape[axis]}; allocate a plan for this model")
            bound.append(BoundLayer(request.name, node.name, node.op_type, value.name, axis))
            used.add(value.name)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        first = missing[0]
        held = _what_holds(graph, first, None if weights is None else weights.get(first))
        raise HawqError(f"{len(missing)} plan layer(s) not found in the ONNX graph ({shown}): no Conv, Gemm or "
                        f"MatMul reads their weight as its own; {first}: {held}")
    bound_nodes = {b.node for b in bound}
    unplanned = [f"{node.name} ({node.op_type}, weight {value.name})" for node, value, _ in candidates
                 if node.name not in bound_nodes]
    return bound, unplanned


def _readers(value: ir.Value) -> str:
    readers = [f"{user.op_type} node {user.name} (input {index})" for user, index in value.uses()]
    return ", ".join(readers[:3]) if readers else "no node"


def _constants(graph: ir.Graph) -> list[tuple[ir.Value, np.ndarray]]:
    values = list(graph.initializers.values()) + [n.outputs[0] for n in graph if n.op_type == "Constant"]
    arrays = [(v, constant_array(v)) for v in values]
    return [(v, a) for v, a in arrays if a is not None and a.ndim == 2 and np.issubdtype(a.dtype, np.floating)]


def _slice_offset(whole: np.ndarray, part: np.ndarray, axis: int) -> int | None:
    """Where ``part`` lies in ``whole`` along ``axis`` (the other axis equal), else None."""
    if whole.shape[1 - axis] != part.shape[1 - axis] or whole.shape[axis] <= part.shape[axis]:
        return None
    size = part.shape[axis]
    first = np.take(part, 0, axis=axis)
    for start in range(whole.shape[axis] - size + 1):
        if np.array_equal(np.take(whole, start, axis=axis), first) and \
                np.array_equal(np.take(whole, range(start, start + size), axis=axis), part):
            return start
    return None


def _what_holds(graph: ir.Graph, name: str, weight: np.ndarray | None) -> str:
    """What the graph holds instead of the layer's node, for the one-line error: the layer's
    weight read by another kind of op, or cut out of a weight the exporter fused, or nothing."""
    named = graph.initializers.get(f"{name}.weight")
    if named is not None:
        return f"its weight {named.name} is read by {_readers(named)}"
    if weight is None or weight.ndim != 2:
        return f"the graph has no initializer {name}.weight; is the plan for this model?"
    weight = weight.astype(np.float32)
    for value, array in _constants(graph):
        array = array.astype(np.float32)
        for form, w, axis in (("its weight", weight, 0), ("its transposed weight", weight.T, 1)):
            if array.shape == w.shape and np.array_equal(array, w):
                return f"{form} is {value.name}, read by {_readers(value)}"
            start = _slice_offset(array, w, axis)
            if start is not None:
                lines = "rows" if axis == 0 else "columns"
                return (f"{form} is {lines} {start}:{start + w.shape[axis]} of {value.name} "
                        f"{list(array.shape)}, a weight fused from several layers, read by {_readers(value)}")
    return "no constant of the graph holds its weight; is the plan for this model?"
