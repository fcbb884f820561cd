"""Precision allocation: each layer's (weight bits, input activation bits) under a size budget.

The cost of giving layer i weight bits w and input bits a (HAWQ-V2/V3):

    Omega_i(w, a) = Tr(H_i) / n_i * ||Q_w(W_i) - W_i||^2  +  Tr(H_x) / m_i * E||Q_a(x) - x||^2

with Tr(H_i)/n_i the average Hessian trace of the layer's weights (``metric="eigenvalue"`` puts
HAWQ-v1's top eigenvalue in its place) and the second, activation term only where the
sensitivity file measured it. A negative or zero curvature is clamped to 0 (a layer with a
zero Hessian is free to compress) with a warning.

Allocation minimises sum Omega subject to the weight size (nominal: params x bits / 8, the
measure of HAWQ's compression ratios) and optionally the BOPs (MACs x w_bits x a_bits), one
choice per layer or per group of tied layers; see :mod:`hawq_onnx.allocation.pareto` for the exact solvers.
The first and last layer (in the sensitivity file's order, which is the network's module order)
are pinned to 8/8 bits as in the papers unless told otherwise.

Budgets: ``13x`` is a compression ratio against the float32 weights of the quantizable layers;
sizes are bytes, with KB, MB, GB powers of 1000 and KiB, MiB, GiB powers of 1024
(``800KB`` = 800,000 bytes, ``1.2MiB`` = 1,258,291 bytes, ``819200`` = 819,200 bytes).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

from hawq_onnx.allocation.pareto import Frontier, Item, pareto_frontier, solve_ilp
from hawq_onnx.core.grid import (
    ACTIVATION_BITS,
    FLOAT_BITS,
    WEIGHT_BITS,
    WEIGHT_RANGES,
    storage_bytes,
)
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import LayerPlan, Plan
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity, perturbation_key
from hawq_onnx.options import METRICS, SCALE_METHODS  # the choice lists, defined once

log = logging.getLogger(__name__)

DEFAULT_W_BITS = (2, 4, 8)
DEFAULT_A_BITS = (4, 8)
END_BITS = (8, 8)  # first and last layer, as HAWQ does
PARETO_POINTS = 60  # frontier points kept in the plan (evenly spread in log ratio), plus the chosen one

Bits = tuple[int | None, int | None]  # (w_bits, a_bits); None = float

_NUMBER = r"(?P<num>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?)"
_BYTE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}
_SI = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4}


# --- parsing and formatting -----------------------------------------------------------------

def _number(text: str, units: Sequence[str], what: str, example: str) -> tuple[Decimal, str]:
    m = re.fullmatch(r"\s*" + _NUMBER + r"\s*(?P<unit>[a-z]*)\s*", text.lower())
    if m is None or m["unit"] not in units:
        raise HawqError(f"{what} {text!r} is not understood; give {example}")
    try:
        value = Decimal(m["num"])
    except InvalidOperation:
        raise HawqError(f"{what} {text!r} is not understood; give {example}") from None
    if not value.is_finite() or value <= 0:
        raise HawqError(f"{what} {text!r} must be a positive number; give {example}")
    return value, m["unit"]


def parse_budget(text: str, float_bytes: int) -> int:
    """Weight budget in bytes from a ratio against float32 (``13x``) or a size (``800KB``).

    A ratio r gives floor(float_bytes / r) bytes, so a plan within it compresses at least r
    times. Sizes: B or no unit = bytes, KB/MB/GB = 10^3/10^6/10^9, KiB/MiB/GiB = 2^10/2^20/2^30,
    case-insensitive; fractions of a byte are dropped.
    """
    example = "a compression ratio against float32 (13x, 13.11x) or a size (800KB, 0.8MB, 1.2MiB, 819200)"
    value, unit = _number(text, ("x", *_BYTE_UNITS), "budget", example)
    if unit == "x":
        if value < 1:
            raise HawqError(f"budget {text} asks for more than the float32 weights ({format_bytes(float_bytes)}); "
                            "give a compression ratio of at least 1x")
        n = math.floor(Decimal(float_bytes) / value)
    else:
        n = math.floor(value * _BYTE_UNITS[unit])
        if n > float_bytes:
            raise HawqError(f"budget {text} ({format_bytes(n)}) is larger than the float32 weights "
                            f"({format_bytes(float_bytes)}); give at most {float_bytes} bytes or a ratio >= 1x")
    if n < 1:
        raise HawqError(f"budget {text} is less than one byte; give a ratio or size the weights can fit")
    return n


def parse_bops(text: str, float_bops: int) -> int:
    """BOPs limit from a count (``3e8``, ``300M``, ``0.3G``; k/M/G/T = 10^3..10^12,
    case-insensitive) or a reduction against float 32x32 BOPs (``40x`` = float BOPs / 40)."""
    example = "a count (0.3G, 300M, 3e8) or a reduction against float 32x32 BOPs (40x)"
    value, unit = _number(text, ("x", *_SI), "BOPs limit", example)
    if unit == "x":
        if float_bops <= 0:
            raise HawqError("the sensitivity file has no MACs, so a BOPs limit cannot be given as a ratio")
        return math.floor(Decimal(float_bops) / value)
    return math.floor(value * _SI[unit])


def parse_bits(text: str, allowed: Sequence[int], option: str) -> tuple[int, ...]:
    """``2,4,8`` -> (2, 4, 8), each one of ``allowed``."""
    out = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in allowed:
            raise HawqError(f"{option} {text!r}: {part!r} is not one of {', '.join(map(str, allowed))}")
        out.add(int(part))
    return tuple(sorted(out))


def parse_pin(text: str) -> tuple[str, tuple[int, int]]:
    """``LAYER=W/A`` (LAYER may be a glob pattern) -> (LAYER, (W, A))."""
    m = re.fullmatch(r"\s*(?P<layer>[^=\s]+)\s*=\s*(?P<w>[0-9]+)\s*/\s*(?P<a>[0-9]+)\s*", text)
    if m is None:
        raise HawqError(f"--pin {text!r} is not LAYER=W/A (e.g. conv1=8/8)")
    bits = (int(m["w"]), int(m["a"]))
    _check_bits((bits[0],), (bits[1],), f"--pin {text}")
    return m["layer"], bits


def format_bytes(n: float, *, up: bool = False) -> str:
    """3 significant digits, KB = 1000 bytes; ``up`` rounds up (for lower bounds a user may type)."""
    for unit, mult in (("GB", 1000 ** 3), ("MB", 1000 ** 2), ("KB", 1000), ("bytes", 1)):
        if n >= mult or unit == "bytes":
            v = n / mult
            decimals = 0 if unit == "bytes" or v >= 100 else 1 if v >= 10 else 2
            q = 10 ** decimals
            v = math.ceil(v * q - 1e-9) / q if up else round(v * q) / q
            return f"{v:.{decimals}f} {unit}"
    raise AssertionError("unreachable")


def format_ratio(r: float, *, down: bool = False) -> str:
    return f"{math.floor(r * 100 + 1e-9) / 100 if down else r:.2f}x"


def format_bits(bits: Bits) -> str:
    w, a = bits
    return "float" if w is None and a is None else f"{'f' if w is None else w}/{'f' if a is None else a}"


def _check_bits(w_bits: Sequence[int], a_bits: Sequence[int], where: str) -> None:
    for w in w_bits:
        if w not in WEIGHT_BITS:
            raise HawqError(f"{where}: weight bits {w} is not one of {', '.join(map(str, WEIGHT_BITS))}")
    for a in a_bits:
        if a not in ACTIVATION_BITS:
            raise HawqError(f"{where}: activation bits {a} is not one of {', '.join(map(str, ACTIVATION_BITS))}")


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
            raise HawqError(f"the sensitivity file has no {w}-bit perturbation for layer {layer.name} "
                            f"(it has {', '.join(sorted(table, key=int))}); choose --w-bits among those or rerun "
                            "analyze with these bits")
        delta = table[str(w)]
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
            raise HawqError(f"the sensitivity file has an invalid {w}-bit perturbation for layer {layer.name}")
        omega += curvature(layer, metric) * float(delta)
    if a is not None and has_activation_term(layer):
        if str(a) not in layer.act_perturbation:
            raise HawqError(f"the sensitivity file has no {a}-bit activation perturbation for layer {layer.name} "
                            f"(it has {', '.join(sorted(layer.act_perturbation, key=int))}); choose --a-bits among "
                            "those or rerun analyze with these bits")
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
        raise HawqError(f"{what}: no layer matches {pattern!r}; layers are {shown} ({len(names)} in all)")
    return hits


def build_problem(report: Sensitivity, *, w_bits: Sequence[int] = DEFAULT_W_BITS,
                  a_bits: Sequence[int] = DEFAULT_A_BITS, metric: str = "trace", scale_method: str = "maxabs",
                  weight_range: str = "narrow",
                  ties: Sequence[str | Sequence[str]] = (), pinned: Mapping[str, tuple[int, int]] | None = None,
                  pin_ends: bool = True, keep_float: Sequence[str] = ()) -> Problem:
    """Resolve layer patterns, fixed layers and tie groups; price every option of every item."""
    if metric not in METRICS:
        raise HawqError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if scale_method not in SCALE_METHODS:
        raise HawqError(f"weight scale method {scale_method!r} is not one of {', '.join(SCALE_METHODS)}")
    if weight_range not in WEIGHT_RANGES:
        raise HawqError(f"weight range {weight_range!r} is not one of {', '.join(WEIGHT_RANGES)}")
    w_bits, a_bits = tuple(sorted(set(w_bits))), tuple(sorted(set(a_bits)))
    if not w_bits or not a_bits:
        raise HawqError("give at least one weight bit width and one activation bit width")
    _check_bits(w_bits, a_bits, "candidates")
    layers = report.layers
    names = [layer.name for layer in layers]
    index = {n: i for i, n in enumerate(names)}

    fixed: dict[str, Bits] = {}
    for pattern in keep_float:
        for n in _match(pattern, names, "--keep-float"):
            fixed[n] = (None, None)
    for pattern, bits in (pinned or {}).items():
        _check_bits((bits[0],), (bits[1],), f"pin {pattern}")
        for n in _match(pattern, names, "--pin"):
            if n in fixed and fixed[n] != tuple(bits):
                raise HawqError(f"layer {n} is both {format_bits(fixed[n])} and {format_bits(tuple(bits))} "
                                "by --pin/--keep-float; give it one precision")
            fixed[n] = (int(bits[0]), int(bits[1]))
    if pin_ends:
        for n in (names[0], names[-1]):
            fixed.setdefault(n, END_BITS)

    # union-find over tied layers
    parent = list(range(len(layers)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in ties:
        patterns = [p.strip() for p in tie.split(",")] if isinstance(tie, str) else list(tie)
        members = sorted({index[n] for p in patterns if p for n in _match(p, names, "--tie")})
        for i in members[1:]:
            parent[root(i)] = root(members[0])
    by_root: dict[int, list[int]] = {}
    for i in range(len(layers)):
        by_root.setdefault(root(i), []).append(i)
    groups = sorted(by_root.values(), key=lambda g: g[0])

    candidates = [(w, a) for w in w_bits for a in a_bits]
    options: list[list[Bits]] = []
    items: list[Item] = []
    for group in groups:
        fixed_here = {fixed[names[i]] for i in group if names[i] in fixed}
        if len(fixed_here) > 1:
            shown = ", ".join(f"{names[i]} {format_bits(fixed[names[i]])}" for i in group if names[i] in fixed)
            raise HawqError(f"tied layers are fixed to different precisions ({shown}); untie them or change "
                            "--pin/--keep-float/--no-pin-ends")
        opts = list(fixed_here) if fixed_here else candidates
        size, bops, cost = [], [], []
        for w, a in opts:
            size.append(sum(layers[i].params * (FLOAT_BITS if w is None else w) for i in group))
            bops.append(sum(layers[i].macs * (FLOAT_BITS if w is None else w) * (FLOAT_BITS if a is None else a)
                            for i in group))
            omega = 0.0
            for i in group:
                omega += choice_cost(layers[i], (w, a), metric, scale_method, weight_range)
            cost.append(omega)
        options.append(list(opts))
        items.append(Item.of(size, bops, cost))

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


# --- solving ----------------------------------------------------------------------------------

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


def _fixed_note(problem: Problem) -> str:
    fixed = problem.pinned
    if not fixed:
        return ""
    shown = ", ".join(f"{n} {format_bits(b)}" for n, b in list(fixed.items())[:4])
    return f", fixed layers {shown}{', ...' if len(fixed) > 4 else ''}"


def _check_feasible(problem: Problem, budget_bytes: int, budget_text: str, w_bits: Sequence[int],
                    bops_limit: int | None, bops_text: str | None) -> None:
    float_bytes = problem.float_bytes
    min_bits = sum(int(item.size.min()) for item in problem.items)
    max_bits = sum(int(item.size.max()) for item in problem.items)
    if 8 * budget_bytes < min_bits:
        lo, hi = min_bits / 8, max_bits / 8
        shown = format_bytes(budget_bytes) if budget_text.lower().endswith("x") else format_ratio(float_bytes / budget_bytes)
        raise HawqError(
            f"budget {budget_text} ({shown}) is below "
            f"the smallest possible weight size {format_bytes(lo, up=True)} ({format_ratio(float_bytes / lo, down=True)}: "
            f"every free layer at {min(w_bits)}-bit weights{_fixed_note(problem)}); choose a budget between "
            f"{format_bytes(lo, up=True)} ({format_ratio(float_bytes / lo, down=True)}) and {format_bytes(hi)} "
            f"({format_ratio(float_bytes / hi)})")
    if bops_limit is not None:
        min_bops = sum(int(item.bops.min()) for item in problem.items)
        max_bops = sum(int(item.bops.max()) for item in problem.items)
        if bops_limit < min_bops:
            raise HawqError(f"BOPs limit {bops_text} ({format_bops(bops_limit)}) is below the fewest possible BOPs "
                            f"{format_bops(min_bops, up=True)} (every free layer at its lowest weight x activation "
                            f"bits{_fixed_note(problem)}); choose a limit between {format_bops(min_bops, up=True)} "
                            f"and {format_bops(max_bops)}")


def format_bops(n: float, *, up: bool = False) -> str:
    for unit, mult in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1)):
        if n >= mult or unit == "":
            v = n / mult
            return f"{math.ceil(v * 1000 - 1e-9) / 1000 if up else v:.3f}{unit}".replace(".000", "")
    raise AssertionError("unreachable")


def allocate(report: Sensitivity, budget: int | str, *, w_bits: Sequence[int] = DEFAULT_W_BITS,
             a_bits: Sequence[int] = DEFAULT_A_BITS, metric: str = "trace", scale_method: str = "maxabs",
             weight_range: str = "narrow", bops_limit: int | str | None = None,
             ties: Sequence[str | Sequence[str]] = (),
             pinned: Mapping[str, tuple[int, int]] | None = None, pin_ends: bool = True,
             keep_float: Sequence[str] = (), solver: str = "auto",
             sensitivity_sha256: str | None = None) -> Plan:
    """The lowest-Omega plan whose nominal weight bytes fit ``budget`` (and BOPs ``bops_limit``).

    ``budget``: bytes, or text for :func:`parse_budget` (``13x``, ``800KB``); ``bops_limit``:
    a count or text for :func:`parse_bops`. ``pinned`` maps layer names or glob patterns to
    (w_bits, a_bits); ``pin_ends`` adds 8/8 for the first and last layer unless they are pinned
    or kept float; ``keep_float`` layers keep float weights and inputs; each ``ties`` entry
    (``"a,b"`` or a list, globs allowed) shares one choice, and a tie with a fixed layer takes
    its bits. ``solver``: ``dp`` (exact frontier, size only), ``ilp`` (HiGHS), or ``auto``
    (``dp`` unless a BOPs limit is given). Calibration fields stay empty.
    """
    problem = build_problem(report, w_bits=w_bits, a_bits=a_bits, metric=metric, scale_method=scale_method,
                            weight_range=weight_range,
                            ties=ties, pinned=pinned, pin_ends=pin_ends, keep_float=keep_float)
    float_bytes, float_bops = problem.float_bytes, problem.float_bops
    if isinstance(budget, str):
        budget_text, budget_bytes = budget.strip(), parse_budget(budget, float_bytes)
    else:
        budget_text, budget_bytes = f"{int(budget)} bytes", int(budget)
        if not 1 <= budget_bytes <= float_bytes:
            raise HawqError(f"budget {budget_bytes} bytes is outside 1 .. {float_bytes} (the float32 weights)")
    bops_text = None
    if isinstance(bops_limit, str):
        bops_text, bops_limit = bops_limit.strip(), parse_bops(bops_limit, float_bops)
    elif bops_limit is not None:
        bops_text, bops_limit = str(int(bops_limit)), int(bops_limit)
        if bops_limit <= 0:
            raise HawqError(f"BOPs limit {bops_text} must be positive")
    if bops_limit is not None and bops_limit > float_bops:
        raise HawqError(f"BOPs limit {bops_text} is above the float model's {format_bops(float_bops)} BOPs (32x32 "
                        f"bits), so it limits nothing; give at most {format_bops(float_bops)} or leave --bops out")
    _check_feasible(problem, budget_bytes, budget_text, sorted(set(w_bits)), bops_limit, bops_text)
    if solver == "auto":
        solver = "dp" if bops_limit is None else "ilp"
    if solver not in ("dp", "ilp"):
        raise ValueError(f"solver must be auto, dp or ilp, not {solver!r}")
    if solver == "dp" and bops_limit is not None:
        raise ValueError("the frontier solver handles the size budget only; use solver='ilp' with a BOPs limit")

    frontier = pareto_frontier(problem.items)
    budget_bits = 8 * budget_bytes
    if solver == "dp":
        j = frontier.best_within(budget_bits)
        assert j is not None  # the smallest allocation fits (checked above) and is on the frontier
        choice = frontier.choices(j)
    else:
        found = solve_ilp(problem.items, budget_bits, bops_limit)
        if found is None:
            # unreachable: every item's smallest option also has its fewest BOPs (both grow with the
            # bits), so when each limit admits the all-smallest allocation, both do at once
            raise RuntimeError("HiGHS found no allocation although the smallest one meets both limits")
        choice = found

    if "activation" not in problem.terms and len(set(a_bits)) > 1 and any(len(o) > 1 for o in problem.options):
        log.warning(f"the sensitivity file has no activation Hessian, so activation bits do not change Omega: free "
                    f"layers take {min(a_bits)}-bit inputs (the fewer BOPs); pass --a-bits 8 to keep 8-bit inputs")
    return _plan(problem, choice, frontier, budget_bytes=budget_bytes, budget_text=budget_text,
                 bops_limit=bops_limit, bops_text=bops_text, method="dp" if solver == "dp" else "ilp-highs",
                 w_bits=sorted(set(w_bits)), a_bits=sorted(set(a_bits)), sensitivity_sha256=sensitivity_sha256)


# --- the plan -------------------------------------------------------------------------------

def _bits_json(problem: Problem, choice: Sequence[int]) -> dict[str, list[int | None]]:
    return {layer.name: list(bits) for layer, bits in zip(problem.report.layers, problem.layer_bits(choice))}


def _sample(frontier: Frontier, count: int) -> list[int]:
    """Indices of up to ``count`` frontier points evenly spread in log(size), endpoints included."""
    n = len(frontier)
    if n <= count:
        return list(range(n))
    log_size = np.log(frontier.size.astype(np.float64))
    targets = np.linspace(log_size[0], log_size[-1], count)
    right = np.clip(np.searchsorted(log_size, targets), 1, n - 1)
    nearer_left = (targets - log_size[right - 1]) <= (log_size[right] - targets)
    return sorted(set((right - nearer_left).tolist()))


def pareto_points(problem: Problem, frontier: Frontier, chosen: Sequence[int] | None = None,
                  count: int = PARETO_POINTS) -> list[dict]:
    """Frontier points for plan.pareto: weight_bytes, ratio, omega, bops, bits, chosen."""
    float_bits = problem.float_bytes * 8
    points = []
    chosen_key = None
    if chosen is not None:
        t = totals_of(problem, chosen)
        chosen_key = (t.size_bits, t.omega)
    seen_chosen = False
    for j in _sample(frontier, count):
        choice = frontier.choices(j)
        t = totals_of(problem, choice)
        is_chosen = chosen is not None and list(choice) == list(chosen)
        seen_chosen |= is_chosen
        points.append(_point(problem, t, choice, is_chosen, float_bits))
    if chosen is not None and not seen_chosen:
        t = totals_of(problem, chosen)
        point = _point(problem, t, chosen, True, float_bits)
        j = frontier.best_within(t.size_bits)
        point["on_frontier"] = j is not None and (int(frontier.size[j]), float(frontier.cost[j])) == chosen_key
        points.append(point)
    points.sort(key=lambda p: (p["weight_bytes"], p["omega"], not p["chosen"]))
    return points


def _point(problem: Problem, t: Totals, choice: Sequence[int], chosen: bool, float_bits: int) -> dict:
    return {"weight_bytes": t.size_bits / 8, "ratio": float_bits / t.size_bits, "omega": t.omega, "bops": t.bops,
            "bits": _bits_json(problem, choice), "chosen": chosen}


def _plan(problem: Problem, choice: list[int], frontier: Frontier, *, budget_bytes: int, budget_text: str,
          bops_limit: int | None, bops_text: str | None, method: str, w_bits: list[int], a_bits: list[int],
          sensitivity_sha256: str | None) -> Plan:
    report = problem.report
    bits = problem.layer_bits(choice)
    layers = [LayerPlan(name=layer.name, kind=layer.kind, params=layer.params, out_channels=layer.out_channels,
                        macs=layer.macs, w_bits=w, a_bits=a,
                        omega=choice_cost(layer, (w, a), problem.metric, problem.scale_method, problem.weight_range))
              for layer, (w, a) in zip(report.layers, bits)]
    t = totals_of(problem, choice)
    float_bytes, float_bops = problem.float_bytes, problem.float_bops
    max_bits = sum(int(item.size.max()) for item in problem.items)
    budget = {"text": budget_text, "bytes": budget_bytes, "ratio": float_bytes / budget_bytes,
              "bops": bops_limit, "bops_text": bops_text}
    if 8 * budget_bytes >= max_bits:
        budget["note"] = (f"the budget holds the largest allocation ({format_bytes(max_bits / 8)}); "
                          "the plan is simply the lowest-Omega one")
    totals = {"weight_bytes": t.size_bits / 8,
              "storage_bytes": sum(storage_bytes(lp.params, lp.w_bits) for lp in layers),
              "float_bytes": float_bytes, "ratio": float_bytes * 8 / t.size_bits, "omega": t.omega,
              "bops": t.bops, "float_bops": float_bops,
              "bops_ratio": float_bops / t.bops if t.bops > 0 else None}
    allocation = {
        "method": method, "metric": problem.metric, "weight_scale": problem.scale_method,
        "candidates": {"w_bits": w_bits, "a_bits": a_bits},
        "pinned": {n: list(b) for n, b in problem.pinned.items()}, "keep_float": problem.keep_float,
        "ties": problem.ties, "terms": problem.terms, "zero_curvature": problem.clamped,
        "sensitivity_sha256": sensitivity_sha256, "pareto_points": len(frontier),
        "pareto_note": ("the frontier is size vs Omega under the pins and ties; it ignores the BOPs limit"
                        if bops_limit is not None else "size vs Omega under the pins and ties"),
    }
    return Plan(model=report.model, fingerprint=report.fingerprint, layers=layers, budget=budget, totals=totals,
                allocation=allocation, pareto=pareto_points(problem, frontier, choice),
                weight_range=problem.weight_range)
