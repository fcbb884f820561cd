"""The cost model: each layer's Omega per (weight bits, input bits), and the allocation problem.

The cost of giving layer i weight bits w and input bits a (HAWQ-V2/V3):

    Omega_i(w, a) = Tr(H_i) / n_i * ||Q_w(W_i) - W_i||^2  +  Tr(H_x) / m_i * E||Q_a(x) - x||^2

with Tr(H_i)/n_i the average Hessian trace of the layer's weights (``metric="eigenvalue"`` puts
HAWQ-v1's top eigenvalue in its place) and the second, activation term only where the
sensitivity file measured it. A negative or zero curvature is clamped to 0 (a layer with a
zero Hessian is free to compress) with a warning.

:func:`build_problem` resolves pins, ties and kept-float layers into items, each with the size,
BOPs and Omega of every choice it may take, for the solvers of :mod:`hawq_onnx.allocation.pareto`.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hawq_onnx.allocation.pareto import Item
from hawq_onnx.allocation.units import Bits, check_bits, format_bits
from hawq_onnx.core.grid import FLOAT_BITS, WEIGHT_RANGES
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.latency_table import LatencyTable
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity, perturbation_key
from hawq_onnx.options import METRICS, SCALE_METHODS  # the choice lists, defined once

log = logging.getLogger(__name__)

DEFAULT_W_BITS = (2, 4, 8)
DEFAULT_A_BITS = (4, 8)
END_BITS = (8, 8)  # first and last layer, as HAWQ does


# --- costs ----------------------------------------------------------------------------------

def curvature(layer: LayerSensitivity, metric: str = "trace") -> float:
    """Tr(H)/n (or the top eigenvalue), clamped at 0."""
    value = layer.trace_per_param if metric == "trace" else layer.top_eigenvalue
    return max(float(value), 0.0)


def has_activation_term(layer: LayerSensitivity) -> bool:
    return layer.act_elements > 0 and bool(layer.act_perturbation)


def choice_cost(layer: LayerSensitivity, bits: Bits, metric: str = "trace", scale_method: str = "maxabs",
                weight_range: str = "narrow") -> float:
    """Omega of one layer at (w_bits, a_bits): weight term plus, where measured, activation term."""
    w, a = bits
    omega = 0.0
    if w is not None:
        key = perturbation_key(scale_method, weight_range)
        table = layer.perturbation.get(key)
        if not table and scale_method == "maxabs":
            # max|w| scales never reach the extra level (w / s >= -qmax): both ranges give one
            # Q(W), so a report written before weight ranges prices the full range too.
            table = layer.perturbation.get(scale_method)
        if not table:
            have = ", ".join(sorted(layer.perturbation)) or "none"
            raise HawqError(f"the sensitivity file has no {key} weight perturbations for layer {layer.name} "
                            f"(it has: {have}); choose another weight scale method or weight range, or rerun "
                            "analyze")
        if str(w) not in table:
            raise OptionError(f"the sensitivity file has no {w}-bit perturbation for layer {layer.name} "
                              f"(it has {', '.join(sorted(table, key=int))}); choose {{w_bits}} among those or "
                              "rerun analyze with these bits", "w_bits")
        delta = table[str(w)]
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
            raise HawqError(f"the sensitivity file has an invalid {w}-bit perturbation for layer {layer.name}")
        omega += curvature(layer, metric) * float(delta)
    if a is not None and has_activation_term(layer):
        if str(a) not in layer.act_perturbation:
            raise OptionError(f"the sensitivity file has no {a}-bit activation perturbation for layer "
                              f"{layer.name} (it has {', '.join(sorted(layer.act_perturbation, key=int))}); choose "
                              "{a_bits} among those or rerun analyze with these bits", "a_bits")
        delta = layer.act_perturbation[str(a)]
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
            raise HawqError(f"the sensitivity file has an invalid {a}-bit activation perturbation for layer {layer.name}")
        omega += max(float(layer.act_trace), 0.0) / layer.act_elements * float(delta)
    return omega


# --- the problem: layers grouped into items with their options --------------------------------

@dataclass
class Problem:
    """The allocation problem once candidates, pins, ties and costs are resolved."""

    report: Sensitivity
    groups: list[list[int]]        # layer indices per item, network order
    options: list[list[Bits]]      # per item, the choices it may take
    items: list[Item]
    pinned: dict[str, Bits]        # fixed layers (pins, ends, kept float) -> bits
    keep_float: list[str]
    ties: list[list[str]]
    terms: list[str]               # "weight", and "activation" when the file measured it
    clamped: list[str]             # layers whose curvature was clamped to 0
    metric: str
    scale_method: str
    weight_range: str

    @property
    def float_bytes(self) -> int:
        return sum(layer.params for layer in self.report.layers) * FLOAT_BITS // 8

    @property
    def float_bops(self) -> int:
        return sum(layer.macs for layer in self.report.layers) * FLOAT_BITS * FLOAT_BITS

    def layer_bits(self, choice: Sequence[int]) -> list[Bits]:
        out: list[Bits] = [(None, None)] * len(self.report.layers)
        for group, options, j in zip(self.groups, self.options, choice):
            for i in group:
                out[i] = options[j]
        return out


def _match(pattern: str, names: list[str], what: str) -> list[str]:
    if pattern in names:
        return [pattern]
    hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not hits:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise OptionError(f"{{{what}}}: no layer matches {pattern!r}; layers are {shown} ({len(names)} in all)", what)
    return hits


def build_problem(report: Sensitivity, *, w_bits: Sequence[int] = DEFAULT_W_BITS,
                  a_bits: Sequence[int] = DEFAULT_A_BITS, metric: str = "trace", scale_method: str = "maxabs",
                  weight_range: str = "narrow",
                  ties: Sequence[str | Sequence[str]] = (), pinned: Mapping[str, tuple[int, int]] | None = None,
                  pin_ends: bool = True, keep_float: Sequence[str] = (),
                  latency_tables: Sequence[LatencyTable] = ()) -> Problem:
    """Resolve layer patterns, fixed layers and tie groups; price every option of every item.

    With ``latency_tables`` every option also carries its milliseconds per table, and a free
    layer, or an end layer pinned by ``pin_ends``, may also stay float (its inputs and weights),
    which a latency budget can prefer where the layer's integer kernel is the slower one."""
    if metric not in METRICS:
        raise HawqError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if scale_method not in SCALE_METHODS:
        raise HawqError(f"weight scale method {scale_method!r} is not one of {', '.join(SCALE_METHODS)}")
    if weight_range not in WEIGHT_RANGES:
        raise HawqError(f"weight range {weight_range!r} is not one of {', '.join(WEIGHT_RANGES)}")
    w_bits, a_bits = tuple(sorted(set(w_bits))), tuple(sorted(set(a_bits)))
    check_bits(w_bits, a_bits, "candidates")
    layers = report.layers
    if metric == "eigenvalue" and any(layer.top_eigenvalue is None for layer in layers):
        raise OptionError("the sensitivity file has no top eigenvalues (they were not computed); choose the trace "
                          "{metric} or analyse again with {eigenvalues}", "metric", "eigenvalues")
    names = [layer.name for layer in layers]
    index = {n: i for i, n in enumerate(names)}

    fixed: dict[str, Bits] = {}
    for pattern in keep_float:
        for n in _match(pattern, names, "keep_float"):
            fixed[n] = (None, None)
    for pattern, bits in (pinned or {}).items():
        check_bits((bits[0],), (bits[1],), f"pin {pattern}")
        for n in _match(pattern, names, "pins"):
            if n in fixed and fixed[n] != tuple(bits):
                raise OptionError(f"layer {n} is both {format_bits(fixed[n])} and {format_bits(tuple(bits))} "
                                  "by {pins}/{keep_float}; give it one precision", "pins", "keep_float")
            fixed[n] = (int(bits[0]), int(bits[1]))
    ends: set[str] = set()
    if pin_ends:
        for n in (names[0], names[-1]):
            if n not in fixed:
                fixed[n] = END_BITS
                ends.add(n)

    # union-find over tied layers
    parent = list(range(len(layers)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in ties:
        patterns = [p.strip() for p in tie.split(",")] if isinstance(tie, str) else list(tie)
        members = sorted({index[n] for p in patterns if p for n in _match(p, names, "ties")})
        for i in members[1:]:
            parent[root(i)] = root(members[0])
    by_root: dict[int, list[int]] = {}
    for i in range(len(layers)):
        by_root.setdefault(root(i), []).append(i)
    groups = sorted(by_root.values(), key=lambda g: g[0])

    candidates: list[Bits] = [(w, a) for w in w_bits for a in a_bits]
    if latency_tables:
        candidates.append((None, None))
    options: list[list[Bits]] = []
    items: list[Item] = []
    for group in groups:
        fixed_here = {fixed[names[i]] for i in group if names[i] in fixed}
        if len(fixed_here) > 1:
            shown = ", ".join(f"{names[i]} {format_bits(fixed[names[i]])}" for i in group if names[i] in fixed)
            raise OptionError(f"tied layers are fixed to different precisions ({shown}); untie them or change "
                              "{pins}/{keep_float}/{pin_ends}", "pins", "keep_float", "pin_ends")
        opts = list(fixed_here) if fixed_here else candidates
        if latency_tables and fixed_here == {END_BITS} and all(names[i] in ends for i in group if names[i] in fixed):
            # At least 8 bits, as HAWQ keeps the ends: float is more precise still, and under a
            # latency budget often faster (a first conv of 1-3 channels is slow as an int8 kernel).
            opts = [END_BITS, (None, None)]
        size, bops, cost = [], [], []
        for w, a in opts:
            size.append(sum(layers[i].params * (FLOAT_BITS if w is None else w) for i in group))
            bops.append(sum(layers[i].macs * (FLOAT_BITS if w is None else w) * (FLOAT_BITS if a is None else a)
                            for i in group))
            omega = 0.0
            for i in group:
                omega += choice_cost(layers[i], (w, a), metric, scale_method, weight_range)
            cost.append(omega)
        latency = [[sum(table.ms(names[i], w, a) for i in group) for w, a in opts] for table in latency_tables]
        options.append(list(opts))
        items.append(Item.of(size, bops, cost, latency if latency_tables else None))

    clamped = [layer.name for layer in layers
               if (layer.trace_per_param if metric == "trace" else layer.top_eigenvalue) <= 0
               or (has_activation_term(layer) and layer.act_trace < 0)]
    if clamped:
        log.warning(f"{len(clamped)} layer(s) have a non-positive Hessian {metric} ({', '.join(clamped[:5])}"
                    f"{', ...' if len(clamped) > 5 else ''}); their curvature is taken as 0, so they are free "
                    "to compress")
    ties_out = [[names[i] for i in g] for g in groups if len(g) > 1]
    terms = ["weight"] + (["activation"] if any(has_activation_term(layer) for layer in layers) else [])
    return Problem(report=report, groups=groups, options=options, items=items,
                   pinned={n: fixed[n] for n in names if n in fixed},
                   keep_float=[n for n in names if fixed.get(n) == (None, None)], ties=ties_out, terms=terms,
                   clamped=clamped, metric=metric, scale_method=scale_method, weight_range=weight_range)


# --- totals of a choice -----------------------------------------------------------------------

@dataclass(frozen=True)
class Totals:
    size_bits: int
    bops: int
    omega: float


def totals_of(problem: Problem, choice: Sequence[int]) -> Totals:
    omega = 0.0
    for item, j in zip(problem.items, choice):  # summed in item order, as the frontier sums
        omega += float(item.cost[j])
    return Totals(size_bits=sum(int(item.size[j]) for item, j in zip(problem.items, choice)),
                  bops=sum(int(item.bops[j]) for item, j in zip(problem.items, choice)), omega=omega)
