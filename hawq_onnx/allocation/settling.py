"""Decision-based stopping of the sensitivity analysis: stop refining a trace once more precision
cannot change the plan.

The allocation sees the traces only through Omega, which is linear in each of them:

    Omega_i(w, a) = Tr(H_i) / n_i * dW_i(w)  +  Tr(H_x,i) / m_i * dA_i(a)

so each item's cost per option is a fixed combination of unit costs (dW, dA) weighted by the
current estimates, and a check re-solves the exact problem without re-reading any table.

The rule (one-at-a-time interval test). For every free layer and every estimate the plan weighs
(its weight trace; its input trace too where the activation bits are a choice), move the
estimate to either end of its confidence interval, estimate +- t x standard error with Student's
t on (probes - 1) degrees of freedom, every other estimate at its point value, and re-solve at
every settled-for budget. The estimate is *unsettled* when, at a moved value, the plan costs more
than ``tie`` x Omega above the plan that value makes best: keeping the plan could cost more than
a tie. Plans closer than a tie are equally good for the cost model, and no finite precision
would tell them apart. (Pricing the two plans at the point estimates instead calls a pair tied
whenever the point estimates happen to balance, however uncertain they are: on ResNet20 that
settled a pair that a 1 %-precision analysis tells apart.)

The m intervals are each at 1 - (1 - confidence) / m (Bonferroni), so that all hold at once with
``confidence``: with 95 % intervals each, one of ResNet20's 36 estimates lies outside its own in
most analyses, and near a decision boundary that is a wrong plan. Curvatures are taken as
positive (a lower end stops at 1/1000 of the estimate).

What the test does not see: two estimates that each move the plan only jointly. BENCHMARKS.md
(session 13) has its plans against a 1 %-precision analysis on ResNet20; a user who wants the
traces themselves uses ``stopping="precision"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from hawq_onnx.allocation.cost_model import build_problem, choice_cost, has_activation_term
from hawq_onnx.allocation.pareto import Item, pareto_frontier, solve_ilp
from hawq_onnx.allocation.solve import check_feasible
from hawq_onnx.allocation.units import parse_bops, parse_budget
from hawq_onnx.errors import HawqError
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity
from hawq_onnx.options import AllocateOptions

WEIGHT, ACTIVATION = "weight", "activation"


class PlanSettling:
    """Which layers' traces must be refined before the plans at ``budgets`` are settled.

    ``budgets``: size budgets as ``allocate`` takes them (``13x``, ``800KB``, bytes); ``options``:
    the rest of the allocation question. ``required``: a budget below the smallest possible size
    is an error (``quantize``); otherwise it is left out (``analyze``'s default budgets), and
    :meth:`describe` says so."""

    def __init__(self, budgets: Sequence[str | int], options: AllocateOptions = AllocateOptions(), *,
                 confidence: float = 0.95, tie: float = 1e-3, required: bool = True) -> None:
        if not budgets:
            raise HawqError("settling needs at least one budget")
        if not 0.5 <= confidence < 1:
            raise HawqError(f"the settling confidence must be in [0.5, 1), got {confidence}")
        if not (math.isfinite(tie) and tie >= 0):
            raise HawqError(f"the settling tie must be a non-negative number, got {tie}")
        self.budgets = [b if isinstance(b, str) else int(b) for b in budgets]
        self.options, self.confidence, self.tie, self.required = options, confidence, tie, required
        self._limits: list[tuple[str | int, int]] = []  # (budget as given, bits)
        self._skipped: list[str] = []
        self._bops: int | None = None

    # -- what the analysis must measure ---------------------------------------------------------

    @property
    def needs_eigenvalues(self) -> bool:
        return self.options.metric == "eigenvalue"

    @property
    def weighs_activations(self) -> bool:
        """Activation traces enter the plan only where the activation bits are a choice."""
        return self.options.metric == "trace" and len(set(self.options.a_bits)) > 1

    @property
    def trades_activations(self) -> bool:
        """Their values matter only under a BOPs limit: without one, activation bits cost no size,
        so every layer with a positive input trace takes the most bits, whatever the trace."""
        return self.weighs_activations and self.options.bops is not None

    # -- the problem's structure, once -------------------------------------------------------------

    def start(self, layers: Sequence[LayerSensitivity]) -> set[str]:
        """Resolve the problem (pins, ties, sizes) and the budgets; fails before any product when
        a required budget cannot be met. Returns the layers whose choice is fixed (pinned, kept
        float, or tied to such): no precision of theirs can change a plan."""
        o = self.options
        # placeholder curvatures: the structure does not depend on them (and 0 would warn of clamping)
        report = _report([dataclasses.replace(layer, trace=float(layer.params), top_eigenvalue=1.0,
                                              act_trace=float(layer.act_elements)) for layer in layers])
        problem = build_problem(report, w_bits=o.w_bits, a_bits=o.a_bits, metric=o.metric,
                                scale_method=o.scale_method, weight_range=o.weight_range, ties=o.ties,
                                pinned=o.pins, pin_ends=o.pin_ends, keep_float=o.keep_float)
        if o.bops is not None:
            self._bops = parse_bops(o.bops, problem.float_bops)
        self._limits, self._skipped = [], []
        for budget in self.budgets:
            text = budget if isinstance(budget, str) else f"{budget} bytes"
            size = parse_budget(budget, problem.float_bytes) if isinstance(budget, str) else budget
            try:
                check_feasible(problem, size, text, sorted(set(o.w_bits)), self._bops, o.bops)
            except HawqError:
                if self.required:
                    raise
                self._skipped.append(text)
                continue
            self._limits.append((budget, 8 * size))
        self._groups, self._sizes, self._bopses = problem.groups, [i.size for i in problem.items], \
            [i.bops for i in problem.items]
        names = [layer.name for layer in layers]
        # unit costs: per item, per member layer, the option costs at curvature 1 (weight) and 1 (input)
        self._unit: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
        for group, opts in zip(problem.groups, problem.options):
            members = []
            for i in group:
                layer = layers[i]
                w_unit = dataclasses.replace(layer, trace=float(layer.params), act_trace=0.0, top_eigenvalue=1.0)
                a_unit = dataclasses.replace(layer, trace=0.0, act_trace=float(layer.act_elements),
                                             top_eigenvalue=0.0)
                wc = np.array([choice_cost(w_unit, (w, None), o.metric, o.scale_method, o.weight_range)
                               for w, _ in opts])
                ac = np.array([choice_cost(a_unit, (None, a), o.metric, o.scale_method, o.weight_range)
                               if has_activation_term(layer) else 0.0 for _, a in opts])
                members.append((i, wc, ac))
            self._unit.append(members)
        return {names[i] for group, size in zip(self._groups, self._sizes) if size.size == 1 for i in group}

    # -- the check ---------------------------------------------------------------------------------

    def _items(self, weight: np.ndarray, act: np.ndarray) -> list[Item]:
        items = []
        for members, size, bops in zip(self._unit, self._sizes, self._bopses):
            cost = sum(weight[i] * wc + act[i] * ac for i, wc, ac in members)
            items.append(Item(size, bops, np.asarray(cost, np.float64)))
        return items

    def _plans(self, items: list[Item]) -> list[tuple[int, ...]]:
        if self._bops is not None:
            return [tuple(solve_ilp(items, bits, self._bops) or ()) for _, bits in self._limits]
        frontier = pareto_frontier(items)
        return [tuple(frontier.choices(frontier.best_within(bits))) for _, bits in self._limits]

    @staticmethod
    def _omega(items: list[Item], plan: tuple[int, ...]) -> float:
        return float(sum(item.cost[j] for item, j in zip(items, plan)))

    def unsettled(self, layers: Sequence[LayerSensitivity]) -> dict[str, str]:
        """Layer name -> the estimate (``weight`` or ``activation``) to refine; empty when settled."""
        if not self._limits or self.needs_eigenvalues:
            return {}  # no budget to settle for; eigenvalues are not sampled
        weight = np.array([max(layer.trace_per_param, 0.0) for layer in layers])
        act = np.array([max(layer.act_trace, 0.0) / layer.act_elements if layer.act_elements else 0.0
                        for layer in layers])
        plans = self._plans(self._items(weight, act))
        free = {i for members, size in zip(self._unit, self._sizes) if size.size > 1 for i, _, _ in members}
        estimates = []
        for i in sorted(free):
            layer = layers[i]
            estimates.append((i, WEIGHT, weight, layer.trace_std_error / layer.params, layer.trace_probes))
            if self.trades_activations and layer.act_elements:
                estimates.append((i, ACTIVATION, act, layer.act_trace_std_error / layer.act_elements,
                                  layer.act_trace_probes))
        # Bonferroni: every interval at 1 - alpha / m, so that all m hold together with ``confidence``
        level = 1 - (1 - self.confidence) / max(len(estimates), 1)
        out: dict[str, str] = {}
        for i, part, values, error, probes in estimates:
            if layers[i].name not in out and self._moves_plan(i, values, error, probes, level, plans, weight, act):
                out[layers[i].name] = part
        return out

    def _moves_plan(self, i: int, values: np.ndarray, error: float, probes: int, level: float,
                    plans: list[tuple[int, ...]], weight: np.ndarray, act: np.ndarray) -> bool:
        if error == 0:
            return False
        if probes < 2 or not math.isfinite(error):
            return True
        half = float(stats.t.ppf(0.5 + level / 2, probes - 1)) * error
        point = values[i]
        # Curvatures are taken as positive: at exactly 0 a layer's options tie and the smaller
        # wins, a change of plan that reflects no trade-off (and no input trace would settle).
        for moved in (max(point - half, 1e-3 * point), point + half):
            values[i] = moved
            try:
                moved_items = self._items(weight, act)
                changed = self._plans(moved_items)
            finally:
                values[i] = point
            for plan, other in zip(plans, changed):
                if other == plan:
                    continue
                # the regret of keeping the plan, were the trace this value
                best = self._omega(moved_items, other)
                if self._omega(moved_items, plan) - best > self.tie * best:
                    return True
        return False

    def describe(self) -> dict[str, Any]:
        """What sensitivity.json records of the question the traces were settled for."""
        out: dict[str, Any] = {
            "budgets": [b if isinstance(b, str) else f"{b} bytes" for b, _ in self._limits],
            **_question(self.options), "confidence": self.confidence, "tie": self.tie,
            "rule": "each estimate moved to either end of its Student-t interval (Bonferroni over all estimates) "
                    "changes no plan by more than a tie",
        }
        if self._skipped:
            out["skipped_budgets"] = self._skipped
        return out


def _report(layers: Sequence[LayerSensitivity]) -> Sensitivity:
    return Sensitivity(model="", fingerprint="", data="", settings={}, layers=list(layers))


def _question(options: AllocateOptions) -> dict[str, Any]:
    return {"w_bits": sorted(set(options.w_bits)), "a_bits": sorted(set(options.a_bits)), "metric": options.metric,
            "scale_method": options.scale_method, "weight_range": options.weight_range, "bops": options.bops,
            "ties": list(options.ties), "pins": {k: list(v) for k, v in options.pins.items()},
            "pin_ends": options.pin_ends, "keep_float": list(options.keep_float)}


def unsettled_warning(report: Sensitivity, budget: str | int, options: AllocateOptions) -> str | None:
    """Why a plan at ``budget`` with ``options`` may change with more precise traces: the
    analysis settled its traces for another question (None when it settled for this one, or
    refined every trace to a fixed precision)."""
    settled = report.settings.get("settled_for")
    if report.settings.get("stopping") != "decision" or not isinstance(settled, dict):
        return None
    float_bytes = 4 * sum(layer.params for layer in report.layers)

    def size(b: Any) -> int | None:
        try:
            return parse_budget(b, float_bytes) if isinstance(b, str) and not b.endswith(" bytes") else int(str(b).split()[0])
        except (HawqError, ValueError):
            return None

    asked = size(budget)
    budgets = [size(b) for b in settled.get("budgets", [])]
    differs = [key for key, value in _question(options).items() if settled.get(key) != value]
    if asked in budgets and not differs and report.settings.get("settled", False):
        return None
    shown = ", ".join(map(str, settled.get("budgets", []))) or "no budget"
    if asked not in budgets:
        why = f"the analysis settled its traces for the plans at {shown}, not at {budget}"
    elif differs:
        why = f"the analysis settled its traces for another allocation ({', '.join(differs)} differ)"
    else:
        left = ", ".join(sorted(report.settings.get("unsettled", {}))) or "some layers"
        why = f"the analysis reached its probe limit before the plan was settled ({left})"
    return (f"{why}: more precise traces may change this plan; analyse again settled for this budget and "
            "allocation, or with precision stopping")
