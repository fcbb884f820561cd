"""Insert QuantizeLinear/DequantizeLinear on activations: the plan's layer inputs and the tensors between.

Two kinds of activation quantization meet here:
- plan edges: the input of each planned layer, with the plan's (bits, scale, zero point),
  exactly what the PyTorch fake-quant reference applies;
- integer regions: ONNX Runtime runs a Conv as QLinearConv only when its output is quantized
  too, and Add, Mul, Concat, (Global)AveragePool as integer kernels only when all their
  inputs and their output are. Those tensors get 8-bit grids calibrated on data.

Placement, per activation tensor (:func:`place`):
- one plan grid P on the tensor and nothing else to serve: P, shared by its consumers;
- an 8-bit P and other consumers: P serves them all (it was calibrated on this tensor), unless
  a consumer is a move (Reshape...) on the way to layers with other plan grids: those quantize
  the float tensor themselves, as the reference does, so P is then P's layers' own (below);
- a 4-bit P and other consumers that need 8 bits (an Add's identity path, the producing
  Conv's output): an 8-bit grid *nested* on P (step s/k, zero point k*z, k odd <= 17 and as
  large as the tensor's range allows) serves the others, and P's consumers requantize from it.
  With k odd every 4-bit rounding boundary lies exactly on an 8-bit one, so the requantized
  value equals quantizing the float tensor to P directly: the planned layer sees exactly the
  reference's input (a value exactly on a boundary, a float32 tie, may round the other way),
  and the producer still fuses into one integer kernel (the ``ort-cpu`` target runs the
  requantization as an integer table, ``integer_requantize``, and computes a residual
  Add twice instead, ``split_shared_add``, which keeps the identity path's grid finer);
- several different plan grids (counting those behind moves): each plan consumer gets its own
  Q/DQ on the float tensor;
- no plan grid but an integer consumer or producer: a calibrated 8-bit grid.
Grid-preserving data movement (Reshape, Transpose, Slice, zero Pad, MaxPool...) passes
grids through unchanged in both directions, so ONNX Runtime keeps those ops in uint8 too.

Sub-byte grids are written in ONNX's own types (uint4 zero point: QuantizeLinear saturates to
exactly 16 levels); the ``ort-cpu`` target rewrites them with ``ClipSubByteActivationsPass``.

Preserves: the graph's inputs, outputs (graph outputs stay float) and every node; consumers
read dequantized values instead of float ones. With ``ranges=None`` only grids that need no
calibration are inserted: the partially quantized model on which the others are calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import ml_dtypes
import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import NameScope, add_initializer, is_activation, make_node, pads_with_zero, sole_user

from hawq_onnx.core.grid import activation_qparams, activation_qrange
from hawq_onnx.errors import HawqError

INTEGER_OPS = ("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool")
MOVE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Pad", "MaxPool", "Identity")
FUSED_ACTIVATIONS = ("Relu",)
INTER_LAYER_BITS = 8
NESTED_MAX_K = 17  # 15 * 17 = 255: the 8-bit grid spans exactly the 4-bit one


@dataclass(frozen=True)
class QParams:
    bits: int
    scale: float
    zero_point: int


@dataclass(frozen=True)
class EdgeQuant:
    """The plan's quantization of one node input."""

    node: str
    input: int
    layer: str
    qparams: QParams


@dataclass(frozen=True)
class Fixed:
    qparams: QParams


@dataclass(frozen=True)
class Calibrated:
    """8 bits over this tensor's observed range; for the only input of an Add, over its useful part.

    Where ``tensor`` feeds nothing but an Add whose output is read through one grid, values
    below ``lo_out - hi_other`` or above ``hi_out - lo_other`` give a saturated (or, after a
    Relu, zero) output whatever the other input is: the range is clipped there, so the 8 bits
    resolve the part that can change the result.
    """

    tensor: str
    sum_with: str | None = None          # the Add's other input
    sum_grid: "Grid | None" = None        # the grid of the Add's output (after its Relu)
    sum_relu: bool = False


@dataclass(frozen=True)
class Nested:
    inner: QParams
    tensor: str  # k chosen from this tensor's observed maximum


Grid = Union[Fixed, Calibrated, Nested]


@dataclass
class TensorPlacement:
    shared: Grid | None = None
    # (node name, input index) -> (grid, layer, requantize from the shared grid?)
    overrides: dict[tuple[str, int], tuple[QParams, str, bool]] = field(default_factory=dict)


def nested_qparams(inner: QParams, hi: float) -> QParams:
    """The 8-bit grid with step inner.scale / k (k odd) whose top reaches ``hi`` if it can."""
    top = hi / inner.scale + inner.zero_point  # the range in inner steps above q = 0
    k = NESTED_MAX_K if top * NESTED_MAX_K <= 255 else int(255 // top)
    k = max(1, k if k % 2 == 1 else k - 1)
    return QParams(8, float(np.float32(np.float32(inner.scale) / np.float32(k))), inner.zero_point * k)


def _is_move(node: ir.Node) -> bool:
    if node.op_type not in MOVE_OPS or node.domain not in ("", "ai.onnx") or not is_activation(node.inputs[0]):
        return False
    if node.op_type == "MaxPool" and len(node.outputs) > 1:
        return False  # the indices output is not a grid
    return node.op_type != "Pad" or pads_with_zero(node)


def _is_integer_op(node: ir.Node) -> bool:
    return (node.op_type in INTEGER_OPS and node.domain in ("", "ai.onnx")
            and all(is_activation(v) for v in node.inputs if v is not None))


def _fusable_layer(node: ir.Node, edges: Mapping[tuple[str, int], EdgeQuant]) -> bool:
    """A planned Conv with quantized input and weight: ORT fuses it only with its output quantized."""
    if node.op_type != "Conv" or (node.name, 0) not in edges or len(node.inputs) < 2:
        return False
    weight_producer = node.inputs[1].producer() if node.inputs[1] is not None else None
    return weight_producer is not None and weight_producer.op_type in ("DequantizeLinear", "Cast")


def _output_side(node: ir.Node) -> ir.Value | None:
    """The tensor whose quantization completes ``node``'s integer kernel (after a fused Relu)."""
    out = node.outputs[0]
    user = sole_user(out)
    if user is not None and user.op_type in FUSED_ACTIVATIONS:
        out = user.outputs[0]
    return None if out.is_graph_output() else out


def _grids_behind_moves(v: ir.Value, by_edge: Mapping[tuple[str, int], EdgeQuant]) -> set[QParams]:
    """The plan grids of the layers reading ``v``, directly or through grid-preserving moves."""
    grids: set[QParams] = set()
    for use in v.uses():
        edge = by_edge.get((use.node.name, use.idx))
        if edge is not None:
            grids.add(edge.qparams)
        elif use.idx == 0 and _is_move(use.node):
            grids |= _grids_behind_moves(use.node.outputs[0], by_edge)
    return grids


def place(graph: ir.Graph, edges: Sequence[EdgeQuant]) -> dict[str, TensorPlacement]:
    """Decide every activation tensor's grids (see the module docstring). The graph must be sorted."""
    by_edge = {(e.node, e.input): e for e in edges}
    nodes = list(graph)
    tensors: list[ir.Value] = [v for v in graph.inputs if is_activation(v)]
    tensors += [v for n in nodes for v in n.outputs if is_activation(v)]

    wants_output: set[str] = set()
    integer_users: set[str] = set()
    for node in nodes:
        if _is_integer_op(node) or _fusable_layer(node, by_edge):
            side = _output_side(node)
            if side is not None:
                wants_output.add(side.name)
        if _is_integer_op(node):
            integer_users.update(v.name for v in node.inputs if v is not None)
    moves = [n for n in nodes if _is_move(n)]
    for node in reversed(moves):  # a move feeding an integer region pulls its input in
        if node.outputs[0].name in integer_users or node.outputs[0].name in wants_output:
            integer_users.add(node.inputs[0].name)

    placements: dict[str, TensorPlacement] = {}
    for v in tensors:
        uses = [u for u in v.uses()]
        plan_uses = [(u, by_edge[(u.node.name, u.idx)]) for u in uses if (u.node.name, u.idx) in by_edge]
        non_plan = len(uses) - len(plan_uses)
        need_shared = v.name in wants_output or v.name in integer_users
        groups: dict[QParams, list[EdgeQuant]] = {}
        for _, e in plan_uses:
            groups.setdefault(e.qparams, []).append(e)
        p = TensorPlacement()
        if not groups:
            p.shared = Calibrated(v.name) if need_shared else None
        elif len(groups) == 1 and _grids_behind_moves(v, by_edge) <= set(groups):
            (qp, group), = groups.items()
            if non_plan == 0 or qp.bits == INTER_LAYER_BITS:
                p.shared = Fixed(qp)
            else:
                p.shared = Nested(qp, v.name) if need_shared else None
                p.overrides = {(e.node, e.input): (qp, e.layer, need_shared) for e in group}
        else:
            p.shared = Calibrated(v.name) if need_shared and non_plan else None
            p.overrides = {(e.node, e.input): (e.qparams, e.layer, False) for _, e in plan_uses}
        placements[v.name] = p

    # Grid-preserving moves: a planned grid flows back to the move's input, any grid flows forward.
    for v in reversed(tensors):
        p = placements[v.name]
        if not isinstance(p.shared, Calibrated) or p.overrides:
            continue
        users = [u.node for u in v.uses()]
        if not users or not all(u in moves and u.inputs[0] is v for u in users):
            continue
        grids = {placements[u.outputs[0].name].shared for u in users}
        if len(grids) == 1 and isinstance(next(iter(grids)), (Fixed, Nested)):
            p.shared = next(iter(grids))
    for node in moves:
        src, dst = placements.get(node.inputs[0].name), placements.get(node.outputs[0].name)
        if src is not None and dst is not None and src.shared is not None and isinstance(dst.shared, Calibrated):
            dst.shared = src.shared
    for node in nodes:
        if node.op_type == "Add" and _is_integer_op(node):
            _bound_add_inputs(node, placements)
    return placements


def _bound_add_inputs(add: ir.Node, placements: dict[str, TensorPlacement]) -> None:
    """Give an Add's calibrated inputs the range clipping of :class:`Calibrated`, where it is safe."""
    a, b = add.inputs[0], add.inputs[1]
    if a is b:
        return
    out = add.outputs[0]
    relu = sole_user(out)
    relu = relu if relu is not None and relu.op_type in FUSED_ACTIVATIONS else None
    result = relu.outputs[0] if relu is not None else out
    p_out = placements.get(result.name)
    if p_out is None or p_out.shared is None or p_out.overrides or result.is_graph_output():
        return
    for v, other in ((a, b), (b, a)):
        p = placements.get(v.name)
        uses = list(v.uses())
        if (p is None or p.overrides or not isinstance(p.shared, Calibrated) or p.shared.tensor != v.name
                or len(uses) != 1 or v.is_graph_output()):
            continue
        p.shared = Calibrated(v.name, other.name, p_out.shared, relu is not None)


def calibration_sites(placements: Mapping[str, TensorPlacement]) -> list[str]:
    """Tensors whose observed range the placement needs, in graph order."""
    sites: dict[str, None] = {}

    def visit(grid: Grid | None) -> None:
        if isinstance(grid, (Calibrated, Nested)):
            sites[grid.tensor] = None
        if isinstance(grid, Calibrated) and grid.sum_with is not None:
            sites[grid.sum_with] = None
            visit(grid.sum_grid)

    for p in placements.values():
        visit(p.shared)
    return list(sites)


def _grid_range(qp: QParams) -> tuple[float, float]:
    qmin, qmax = activation_qrange(qp.bits)
    return (qmin - qp.zero_point) * qp.scale, (qmax - qp.zero_point) * qp.scale


def resolve(grid: Grid | None, ranges: Mapping[str, tuple[float, float]] | None) -> QParams | None:
    if grid is None or isinstance(grid, Fixed):
        return None if grid is None else grid.qparams
    if ranges is None:
        return None
    if grid.tensor not in ranges:
        raise HawqError(f"no calibrated range for tensor {grid.tensor}")
    lo, hi = ranges[grid.tensor]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise HawqError(f"tensor {grid.tensor} took non-finite values on the calibration data")
    if isinstance(grid, Nested):
        return nested_qparams(grid.inner, hi)
    if grid.sum_with is not None:
        out = resolve(grid.sum_grid, ranges)
        if grid.sum_with not in ranges or out is None:
            raise HawqError(f"no calibrated range for tensor {grid.sum_with}")
        other_lo, other_hi = ranges[grid.sum_with]
        out_lo, out_hi = _grid_range(out)
        lo = max(lo, (max(out_lo, 0.0) if grid.sum_relu else out_lo) - other_hi)
        hi = min(hi, out_hi - other_lo)
        if not lo < hi:  # the tensor cannot change the result: any small grid does
            lo, hi = min(lo, hi), max(lo, hi)
    scale, zero_point = activation_qparams(lo, hi, INTER_LAYER_BITS)
    return QParams(INTER_LAYER_BITS, scale, zero_point)


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {v.name: v for v in graph.inputs}
    values.update({v.name: v for n in graph for v in n.outputs})
    return values


def off_plan_grids(graph: ir.Graph, placements: Mapping[str, TensorPlacement], edges: Sequence[EdgeQuant],
                   ranges: Mapping[str, tuple[float, float]]) -> dict[str, QParams]:
    """Tensor -> its shared grid, where some consumer other than a planned layer's input reads it.

    These are the grids the plan does not describe: the ones a PyTorch reference must add
    (``hawq_onnx.qat.region_grids``). A planned layer quantizes its own input to its plan grid.
    """
    planned = {(e.node, e.input) for e in edges}
    values = _values_by_name(graph)
    out = {}
    for name, p in placements.items():
        qp = resolve(p.shared, ranges)
        if qp is not None and any((u.node.name, u.idx) not in planned for u in values[name].uses()):
            out[name] = qp
    return out


def _zero_point_array(qp: QParams) -> tuple[np.ndarray, ir.DataType]:
    lo, hi = activation_qrange(qp.bits)
    if not lo <= qp.zero_point <= hi:
        raise HawqError(f"zero point {qp.zero_point} outside the {qp.bits}-bit range [{lo}, {hi}]")
    if qp.bits == 8:
        return np.array(qp.zero_point, np.uint8), ir.DataType.UINT8
    if qp.bits == 4:
        return np.array(qp.zero_point, ml_dtypes.uint4), ir.DataType.UINT4
    raise HawqError(f"no ONNX type for {qp.bits}-bit activations")


class InsertActivationQDQPass(ir.passes.InPlacePass):
    def __init__(self, edges: Sequence[EdgeQuant], ranges: Mapping[str, tuple[float, float]] | None) -> None:
        super().__init__()
        self.edges = list(edges)
        self.ranges = ranges

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        graph.sort()
        known = {n.name for n in graph}
        unknown = sorted({e.node for e in self.edges} - known)
        if unknown:
            raise HawqError(f"plan edges name nodes not in the graph: {', '.join(unknown[:5])}")
        placements = place(graph, self.edges)
        names = NameScope(graph)
        values = _values_by_name(graph)
        modified = False
        for name, p in placements.items():
            modified |= self._insert(graph, names, values[name], p)
        return ir.passes.PassResult(model, modified)

    def _qdq(self, graph: ir.Graph, names: NameScope, src: ir.Value, qp: QParams, base: str) -> list[ir.Node]:
        zp, dtype = _zero_point_array(qp)
        s_value = add_initializer(graph, names, f"{base}_scale", np.array(qp.scale, np.float32))
        z_value = add_initializer(graph, names, f"{base}_zp", zp, dtype)
        q = make_node(names, "QuantizeLinear", [src, s_value, z_value], f"{base}_q")
        dq = make_node(names, "DequantizeLinear", [q.outputs[0], s_value, z_value], f"{base}_dq")
        return [q, dq]

    def _insert(self, graph: ir.Graph, names: NameScope, v: ir.Value, p: TensorPlacement) -> bool:
        shared = resolve(p.shared, self.ranges)
        uses = list(v.uses())
        new_nodes: list[ir.Node] = []
        shared_out: ir.Value | None = None
        if shared is not None:
            new_nodes = self._qdq(graph, names, v, shared, v.name)
            shared_out = new_nodes[1].outputs[0]
        # One Q/DQ per distinct (grid, source) among the overridden uses.
        override_outs: dict[tuple[QParams, bool], ir.Value] = {}
        for use in uses:
            key = (use.node.name, use.idx)
            if key in p.overrides:
                qp, layer, from_shared = p.overrides[key]
                from_shared = from_shared and shared_out is not None
                if (qp, from_shared) not in override_outs:
                    src = shared_out if from_shared else v
                    pair = self._qdq(graph, names, src, qp, f"{v.name}_{layer}")
                    new_nodes += pair
                    override_outs[(qp, from_shared)] = pair[1].outputs[0]
                use.node.replace_input_with(use.idx, override_outs[(qp, from_shared)])
            elif shared_out is not None:
                use.node.replace_input_with(use.idx, shared_out)
        if not new_nodes:
            return False
        producer = v.producer()
        if producer is not None:
            graph.insert_after(producer, new_nodes)
        else:
            graph.insert_before(next(iter(graph)), new_nodes)
        return True
