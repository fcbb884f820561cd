"""Refining traces until the decision they feed is settled (decision-based stopping).

The analysis first takes a few probes of every layer (the lockstep rounds of
:mod:`hawq_onnx.sensitivity.hessian`); then, while a :class:`DecisionRule` names layers whose
estimates could still change the plan, only those layers get more probes, about a quarter more
between two checks, up to their probe limits. The rule itself (the allocation question and the
interval test) lives with the allocation: :class:`hawq_onnx.allocation.settling.PlanSettling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from hawq_onnx.io.sensitivity_report import LayerSensitivity
from hawq_onnx.sensitivity.estimators import INPUT_PROBE, Eigen, LayerState, Trace
from hawq_onnx.sensitivity.products import _Products

# Between two checks every layer still asked for grows its sample count by about this fraction
# (at least one probe): a check costs a few exact solves, a product a double backward.
GROWTH = 0.25


class DecisionRule(Protocol):
    """What the analysis asks of the decision its traces feed."""

    @property
    def needs_eigenvalues(self) -> bool: ...

    @property
    def weighs_activations(self) -> bool: ...

    @property
    def trades_activations(self) -> bool: ...

    def start(self, layers: Sequence[LayerSensitivity]) -> set[str]:
        """Check the question; returns the layers whose estimates cannot change the decision."""

    def unsettled(self, layers: Sequence[LayerSensitivity]) -> dict[str, str]: ...

    def describe(self) -> dict[str, Any]: ...


def refine(rule: DecisionRule, states: dict[str, LayerState], records: Callable[[], list[LayerSensitivity]],
           products: _Products, gens: dict[str, torch.Generator], seconds: dict[str, float], *, max_probes: int,
           act_max_probes: int, sketch: int = 0, on_round: Callable[[int], None] = lambda n: None
           ) -> tuple[dict[str, str], int]:
    """More probes for the layers ``rule`` names until it names none or they reach their limits.

    ``records()`` gives the current per-layer estimates. A weight trace still asked for once it
    has :func:`sketch_after` plain probes gets a Hutch++ sketch of ``sketch`` vectors first (when
    ``sketch`` > 0), and its deflated probes replace the plain ones: a layer that needs that
    many is near a decision boundary, where the sketch's variance reduction (10-100x per probe
    on ResNet20) pays for its 2 x sketch products.
    Returns the estimates left unsettled (at their limits) and the checks made."""
    checks = 0
    while True:
        wanted = rule.unsettled(records())
        checks += 1
        asked = {n: part for n, part in wanted.items() if _room(states[n], part, max_probes, act_max_probes)}
        if not asked:
            return wanted, checks
        programs = {n: _more(states[n], part, sketch, max_probes, act_max_probes) for n, part in asked.items()}
        pending = {}
        for n, program in programs.items():
            try:
                pending[n] = next(program)
            except StopIteration:
                pass
        while pending:
            replies = products.round(pending, gens, seconds)
            on_round(len(pending))
            for n, reply in replies.items():
                try:
                    pending[n] = programs[n].send(reply)
                except StopIteration:
                    del pending[n]


# Deflated probes taken at once after a sketch: the interval's t quantile uses their count, and
# below 4 a small sample's variance is too often far too small.
FIRST_AFTER_SKETCH = 4


def sketch_after(sketch: int) -> int:
    """Plain probes after which a layer still asked for gets the sketch: as many as the sketch's
    2 x sketch products (rent until the rent paid equals the price, then buy: never more than
    twice the cheaper of the two). Sketching after 8 probes cost ResNet20 twice the time (8
    layers sketched, most of which a few more plain probes settled)."""
    return 2 * sketch


def _more(state: LayerState, part: str, sketch: int, max_probes: int, act_max_probes: int):
    """One layer's next batch of products: about a quarter more probes (a sketch first where due)."""
    if part == "weight":
        probes = state.weight
        more = max(1, math.ceil(GROWTH * probes.count))
        if sketch > 0 and not probes.sketched and probes.count >= sketch_after(sketch):
            yield from probes.add_sketch(sketch)
            more = FIRST_AFTER_SKETCH
        yield from probes.run(min(more, max_probes - probes.count))
    else:
        samples = state.inputs
        for _ in range(min(max(1, math.ceil(GROWTH * samples.count)), act_max_probes - samples.count)):
            samples.samples.append((yield INPUT_PROBE))


def _room(state: LayerState, part: str, max_probes: int, act_max_probes: int) -> bool:
    if part == "weight":
        return not state.weight.exact and state.weight.count < max_probes
    return state.inputs.count < act_max_probes


def settle_results(rule: DecisionRule, results: dict[str, tuple[Eigen | None, Trace, Trace, LayerState]],
                   record: Callable[[str, Eigen | None, Trace, Trace], LayerSensitivity], products: _Products,
                   gens: dict[str, torch.Generator], seconds: dict[str, float], bar: Any, count: int, *,
                   max_probes: int, act_max_probes: int, sketch: int) -> tuple[dict[str, str], int]:
    """Refine the estimates the rule names, from the analysis's first-round ``results`` (in
    network order; ``record`` makes a layer's report line); leaves ``results`` with the final
    traces and advances the progress ``bar``."""
    states = {n: r[3] for n, r in results.items()}

    def records() -> list[LayerSensitivity]:
        return [record(n, results[n][0], states[n].weight.result(True), states[n].inputs.result(True))
                for n in results]

    def on_round(products_done: int) -> None:
        nonlocal count
        count += products_done
        bar.set_postfix(products=count)

    left, checks = refine(rule, states, records, products, gens, seconds, max_probes=max_probes,
                          act_max_probes=act_max_probes, sketch=sketch, on_round=on_round)
    for n, (eigen, _, act, state) in results.items():
        inputs = state.inputs.result(left.get(n) != "activation") if act.probes else act
        results[n] = (eigen, state.weight.result(left.get(n) != "weight"), inputs, state)
        bar.update(1)
    return left, checks
