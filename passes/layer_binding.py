"""Which ONNX node is which plan layer: the one place where PyTorch names meet the graph.

A plan names layers by PyTorch module path (``layer1.0.conv1``). torch's exporter keeps
parameter names, so a Conv or Gemm reads the initializer ``layer1.0.conv1.weight``. A Linear
applied to a tensor of rank > 2 becomes a MatMul whose weight the exporter transposed and
renamed (``val_6``): that layer is found by value, the transpose of the PyTorch weight.
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
    not found, or whose channel count differs, raises HawqError; an optional one is logged.
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
        raise HawqError(f"{len(missing)} plan layer(s) not found in the ONNX graph ({shown}): no Conv, Gemm or "
                        "MatMul reads their weight; is the plan for this model?")
    bound_nodes = {b.node for b in bound}
    unplanned = [f"{node.name} ({node.op_type}, weight {value.name})" for node, value, _ in candidates
                 if node.name not in bound_nodes]
    return bound, unplanned
