"""Precision allocation: each layer's (weight bits, input activation bits) under a size budget.

Allocation minimises sum Omega (the cost of :mod:`hawq_onnx.allocation.cost_model`) subject to
the weight size (nominal: params x bits / 8, the measure of HAWQ's compression ratios) and
optionally the BOPs (MACs x w_bits x a_bits), one choice per layer or per group of tied layers;
see :mod:`hawq_onnx.allocation.pareto` for the exact solvers.
The first and last layer (in the sensitivity file's order, which is the network's module order)
are pinned to 8/8 bits as in the papers unless told otherwise.

Budgets are parsed and figures formatted in :mod:`hawq_onnx.allocation.units`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from hawq_onnx.allocation.cost_model import (
    DEFAULT_A_BITS,
    DEFAULT_W_BITS,
    Problem,
    Totals,
    build_problem,
    choice_cost,
    totals_of,
)
from hawq_onnx.allocation.pareto import Frontier, pareto_frontier, solve_ilp
from hawq_onnx.allocation.units import (
    format_bits,
    format_bops,
    format_bytes,
    format_ratio,
    parse_bops,
    parse_budget,
)
from hawq_onnx.core.grid import storage_bytes
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.latency_table import LatencyTable
from hawq_onnx.io.plan import LayerPlan, Plan
from hawq_onnx.io.sensitivity_report import Sensitivity

log = logging.getLogger(__name__)

PARETO_POINTS = 60  # frontier points kept in the plan (evenly spread in log ratio), plus the chosen one


# --- solving ----------------------------------------------------------------------------------

def _fixed_note(problem: Problem) -> str:
    fixed = problem.pinned
    if not fixed:
        return ""
    shown = ", ".join(f"{n} {format_bits(b)}" for n, b in list(fixed.items())[:4])
    return f", fixed layers {shown}{', ...' if len(fixed) > 4 else ''}"


def check_feasible(problem: Problem, budget_bytes: int, budget_text: str, w_bits: Sequence[int],
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


def allocate(report: Sensitivity, budget: int | str, *, w_bits: Sequence[int] = DEFAULT_W_BITS,
             a_bits: Sequence[int] = DEFAULT_A_BITS, metric: str = "trace", scale_method: str = "maxabs",
             weight_range: str = "narrow", bops_limit: int | str | None = None,
             ties: Sequence[str | Sequence[str]] = (),
             pinned: Mapping[str, tuple[int, int]] | None = None, pin_ends: bool = True,
             keep_float: Sequence[str] = (), solver: str = "auto",
             sensitivity_sha256: str | None = None, latency_tables: Sequence[LatencyTable] = (),
             max_latency: str | None = None) -> Plan:
    """The lowest-Omega plan whose nominal weight bytes fit ``budget`` (and BOPs ``bops_limit``).

    ``budget``: bytes, or text for :func:`parse_budget` (``13x``, ``800KB``); ``bops_limit``:
    a count or text for :func:`parse_bops`. ``pinned`` maps layer names or glob patterns to
    (w_bits, a_bits); ``pin_ends`` adds 8/8 for the first and last layer unless they are pinned
    or kept float; ``keep_float`` layers keep float weights and inputs; each ``ties`` entry
    (``"a,b"`` or a list, globs allowed) shares one choice, and a tie with a fixed layer takes
    its bits. ``solver``: ``dp`` (exact frontier, size only), ``ilp`` (HiGHS), or ``auto``
    (``dp`` unless a BOPs or latency limit is given). ``max_latency`` (``0.8x`` of the float
    layers' time, or ``2ms``, ``800us``) holds under every one of ``latency_tables`` (one per
    batch size, say), and lets free layers stay float. Calibration fields stay empty.
    """
    if max_latency is not None and not latency_tables:
        raise OptionError("{max_latency} needs a latency table of the model on its runtime (measured by "
                          "hawq_onnx.api.latency_tables)", "max_latency")
    if max_latency is None:
        latency_tables = ()
    problem = build_problem(report, w_bits=w_bits, a_bits=a_bits, metric=metric, scale_method=scale_method,
                            weight_range=weight_range,
                            ties=ties, pinned=pinned, pin_ends=pin_ends, keep_float=keep_float,
                            latency_tables=latency_tables)
    # The limit is on the whole network; the layers get it less what runs no layer.
    totals_limits = [parse_latency(max_latency, t.float_ms, len(latency_tables)) for t in latency_tables] \
        if max_latency is not None else []
    latency_limits = [limit - t.rest_ms for t, limit in zip(latency_tables, totals_limits)]
    for k, (table, limit) in enumerate(zip(latency_tables, totals_limits)):
        fastest = sum(float(item.latency[k].min()) for item in problem.items) + table.rest_ms
        if fastest > limit:
            raise HawqError(f"latency limit {max_latency} ({limit:.4f} ms at batch {table.batch_size}) is below the "
                            f"fastest allocation's {fastest:.4f} ms (every free layer at its fastest precision"
                            f"{_fixed_note(problem)}; the float layers take {table.float_ms:.4f} ms)")
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
        raise OptionError(f"{{bops}} {bops_text} is above the float model's {format_bops(float_bops)} BOPs (32x32 "
                          f"bits), so it limits nothing; give at most {format_bops(float_bops)} or leave {{bops}} out",
                          "bops")
    check_feasible(problem, budget_bytes, budget_text, sorted(set(w_bits)), bops_limit, bops_text)
    if solver == "auto":
        solver = "dp" if bops_limit is None and not latency_limits else "ilp"
    if solver not in ("dp", "ilp"):
        raise ValueError(f"solver must be auto, dp or ilp, not {solver!r}")
    if solver == "dp" and (bops_limit is not None or latency_limits):
        raise ValueError("the frontier solver handles the size budget only; use solver='ilp' with a BOPs or "
                         "latency limit")

    frontier = pareto_frontier(problem.items)
    budget_bits = 8 * budget_bytes
    if solver == "dp":
        j = frontier.best_within(budget_bits)
        assert j is not None  # the smallest allocation fits (checked above) and is on the frontier
        choice = frontier.choices(j)
    else:
        found = solve_ilp(problem.items, budget_bits, bops_limit, latency_limits=latency_limits)
        if found is None:
            if latency_limits:  # size and time pull apart: the fastest allocations may be the largest
                raise HawqError(f"no allocation meets budget {budget_text} and latency limit {max_latency} at once "
                                "(the layers that are faster in float are too large for the budget); loosen one")
            # unreachable: every item's smallest option also has its fewest BOPs (both grow with the
            # bits), so when each limit admits the all-smallest allocation, both do at once
            raise RuntimeError("HiGHS found no allocation although the smallest one meets both limits")
        choice = found

    if "activation" not in problem.terms and len(set(a_bits)) > 1 and any(len(o) > 1 for o in problem.options):
        log.warning(f"the sensitivity file has no activation Hessian, so activation bits do not change Omega: free "
                    f"layers take {min(a_bits)}-bit inputs (the fewer BOPs); allow 8 in a_bits to keep 8-bit inputs")
    plan = _plan(problem, choice, frontier, budget_bytes=budget_bytes, budget_text=budget_text,
                 bops_limit=bops_limit, bops_text=bops_text, method="dp" if solver == "dp" else "ilp-highs",
                 w_bits=sorted(set(w_bits)), a_bits=sorted(set(a_bits)), sensitivity_sha256=sensitivity_sha256)
    if latency_limits:
        predicted = [float(sum(item.latency[k][j] for item, j in zip(problem.items, choice))) + t.rest_ms
                     for k, t in enumerate(latency_tables)]
        plan.budget["latency"] = {"text": max_latency, "tables": [
            {"batch_size": t.batch_size, "runtime": t.runtime, "target": t.target, "machine": t.machine,
             "threads": t.threads, "limit_ms": limit, "float_ms": t.float_ms, "predicted_ms": ms}
            for t, limit, ms in zip(latency_tables, totals_limits, predicted)],
            "note": "kernel times inside the network (the runtime's profiler): the layers, what the integer "
                    "network runs besides them, and each float layer's boundaries; a prediction validate measures"}
        plan.totals["latency_ms"] = {str(t.batch_size): ms for t, ms in zip(latency_tables, predicted)}
        plan.allocation["pareto_note"] = "size vs Omega under the pins and ties; it ignores the latency limit"
    return plan


def parse_latency(text: str, float_ms: float, tables: int) -> float:
    """``0.8x`` (of ``float_ms``), ``2ms`` or ``800us`` -> milliseconds."""
    t = str(text).strip().lower()
    try:
        if t.endswith("x"):
            value = float(t[:-1]) * float_ms
        elif t.endswith("ms"):
            value = float(t[:-2])
        elif t.endswith("us"):
            value = float(t[:-2]) / 1000.0
        else:
            raise ValueError
    except ValueError:
        raise OptionError(f"{{max_latency}} {text!r}: give a fraction of the float model's time (0.8x) or a time "
                          "(2ms, 800us)", "max_latency") from None
    if not (value > 0 and np.isfinite(value)):
        raise OptionError(f"{{max_latency}} {text!r} must be positive", "max_latency")
    if tables > 1 and not t.endswith("x"):
        raise OptionError(f"{{max_latency}} {text!r}: with latency tables at several batch sizes give a fraction "
                          "of the float time (0.8x)", "max_latency")
    return value


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
