"""Decision-based stopping: the interval test of PlanSettling, the refinement loop, and what the
files and the allocation say of it."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn as nn

import hawq_onnx as hq
from hawq_onnx.allocation.settling import PlanSettling, unsettled_warning
from hawq_onnx.allocation.solve import allocate
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity, load_sensitivity
from hawq_onnx.options import AllocateOptions, AnalyzeOptions
from hawq_onnx.sensitivity import decision
from hawq_onnx.sensitivity.estimators import DeflatedProbes, HutchinsonSamples, LayerState
from hawq_onnx.sensitivity.hessian import analyze

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FREE = AllocateOptions(w_bits=(4, 8), a_bits=(8,), pin_ends=False)
# ||Q(W) - W||^2 per weight bits: the same tables for every layer, so traces alone decide
TABLE = {"maxabs": {"2": 40.0, "4": 4.0, "8": 0.01}}


def _layer(name: str, trace: float, error: float = 0.0, probes: int = 8, params: int = 100, act_trace: float = 0.0,
           act_error: float = 0.0) -> LayerSensitivity:
    return LayerSensitivity(
        name=name, kind="Linear", params=params, out_channels=10, macs=params, top_eigenvalue=None,
        eigen_iterations=0, eigen_converged=False, trace=trace, trace_std_error=error, trace_probes=probes,
        trace_converged=True, seconds=0.0, perturbation=TABLE, act_elements=50, act_trace=act_trace,
        act_trace_std_error=act_error, act_trace_probes=probes, act_perturbation={"4": 1.0, "8": 0.01})


def _settling(layers, budgets=("6x",), options=FREE, **kwargs) -> PlanSettling:
    rule = PlanSettling(list(budgets), options, **kwargs)
    rule.start(layers)
    return rule


# Two layers of 100 weights (float 6,400 bits): 5x (1,280 bits) fits one at 8 bits and the other at 4.
BUDGET = "5x"


def test_precise_traces_are_settled():
    layers = [_layer("a", 10.0, 0.0), _layer("b", 1.0, 0.0)]
    assert _settling(layers, (BUDGET,)).unsettled(layers) == {}


def test_an_interval_that_reaches_the_other_layer_is_unsettled_and_a_narrow_one_is_not():
    wide = [_layer("a", 10.0, 0.1), _layer("b", 8.0, 2.0)]   # b's interval covers a's 10
    narrow = [_layer("a", 10.0, 0.1), _layer("b", 8.0, 0.2)]
    assert _settling(wide, (BUDGET,)).unsettled(wide) == {"b": "weight"}
    assert _settling(narrow, (BUDGET,)).unsettled(narrow) == {}
    # few probes widen the interval (Student t): the same error from 3 probes is unsettled
    few = [_layer("a", 10.0, 0.1), _layer("b", 8.0, 0.55, probes=3)]
    many = [_layer("a", 10.0, 0.1), _layer("b", 8.0, 0.55, probes=50)]
    assert _settling(few, (BUDGET,)).unsettled(few) == {"b": "weight"}
    assert _settling(many, (BUDGET,)).unsettled(many) == {}


def test_plans_within_a_tie_do_not_ask_for_more_probes():
    # b's interval crosses a's trace, so the plan flips inside it, but keeping it costs at most
    # a ten-thousandth of Omega: a tie. The same crossing with wide intervals is a real regret.
    narrow = [_layer("a", 1.0, 1e-4), _layer("b", 0.9999, 1e-4)]
    assert _settling(narrow, (BUDGET,), tie=1e-3).unsettled(narrow) == {}
    assert set(_settling(narrow, (BUDGET,), tie=0.0).unsettled(narrow)) == {"a", "b"}
    wide = [_layer("a", 1.0, 0.05), _layer("b", 0.9999, 0.05)]
    assert set(_settling(wide, (BUDGET,), tie=1e-3).unsettled(wide)) == {"a", "b"}


def test_activation_traces_count_only_where_activation_bits_are_a_choice():
    layers = [_layer("a", 10.0, 0.0, act_trace=5.0, act_error=0.0), _layer("b", 10.0, 0.0, act_trace=4.0,
                                                                           act_error=3.0)]
    # all weights 8-bit (4x): a BOPs limit that admits one layer at 8/8 and the other at 8/4
    with_a = AllocateOptions(w_bits=(8,), a_bits=(4, 8), pin_ends=False, bops="9600")
    rule = _settling(layers, ("4x",), with_a)
    assert rule.weighs_activations
    assert rule.unsettled(layers) == {"b": "activation"}
    only_8 = dataclasses.replace(with_a, a_bits=(8,))
    assert not PlanSettling(["4x"], only_8).weighs_activations


def test_fixed_layers_are_never_refined():
    layers = [_layer("a", 10.0, 9.0), _layer("b", 8.0, 0.1), _layer("c", 3.0, 9.0)]
    pinned = dataclasses.replace(FREE, pin_ends=True, w_bits=(2, 4, 8))
    rule = PlanSettling(["4x"], pinned)
    assert rule.start(layers) == {"a", "c"}
    left = rule.unsettled(layers)
    assert "a" not in left and "c" not in left


def test_a_budget_below_the_smallest_plan_is_an_error_when_asked_for_and_left_out_otherwise():
    layers = [_layer("a", 10.0), _layer("b", 1.0)]
    with pytest.raises(HawqError, match="below the smallest possible weight size"):
        _settling(layers, ("20x",))
    rule = _settling(layers, ("20x", BUDGET), required=False)
    assert rule.describe()["budgets"] == [BUDGET]
    assert rule.describe()["skipped_budgets"] == ["20x"]


def test_refine_grows_only_the_layers_the_rule_names():
    class Rule:
        needs_eigenvalues = weighs_activations = trades_activations = False

        def start(self, layers):
            return set()

        def unsettled(self, layers):
            return {layer.name: "weight" for layer in layers if layer.name == "b" and layer.trace_probes < 10}

        def describe(self):
            return {}

    class Products:
        rounds = 0

        def round(self, requests, gens, seconds):
            Products.rounds += 1
            return {n: 2.0 * z for n, z in requests.items()}  # H = 2 I: every sample is 2 x dim

    gen = torch.Generator().manual_seed(0)
    states = {n: LayerState(DeflatedProbes(torch.zeros(6, 0), 0.0, gen), HutchinsonSamples()) for n in "ab"}
    for state in states.values():
        for z in (state.weight.probe(), state.weight.probe()):
            state.weight.add(z, 2.0 * z)

    def records():
        return [dataclasses.replace(_layer(n, s.weight.samples.estimate()[0]), trace_probes=s.weight.samples.count)
                for n, s in states.items()]

    left, checks = decision.refine(Rule(), states, records, Products(), {}, {}, max_probes=200, act_max_probes=0)
    assert left == {} and checks > 1
    assert states["a"].weight.samples.count == 2
    assert 10 <= states["b"].weight.samples.count <= 13  # grows by about a quarter between checks
    assert states["b"].weight.samples.estimate() == (12.0, 0.0)
    # at the probe limit the layer is left unsettled, and refine says so
    states["b"].weight.samples.samples[:] = [12.0, 12.0]
    left, _ = decision.refine(Rule(), states, records, Products(), {}, {}, max_probes=4, act_max_probes=0)
    assert left == {"b": "weight"} and states["b"].weight.samples.count == 4
    # a layer still asked for after as many plain probes as a sketch costs gets the sketch, and
    # its deflated probes replace the plain ones: tr = tr(Q^T H Q) + E[z'^T H z'] = 2 x 2 + 2 x 4
    states["b"].weight.samples.samples[:] = [12.0] * 3
    decision.refine(Rule(), states, records, Products(), {}, {}, max_probes=200, act_max_probes=0, sketch=8)
    assert not states["b"].weight.sketched  # settled at 10 plain probes, before a 16-vector sketch's 32
    states["b"].weight.samples.samples[:] = [12.0] * 3
    decision.refine(Rule(), states, records, Products(), {}, {}, max_probes=200, act_max_probes=0, sketch=2)
    sketched = states["b"].weight
    assert sketched.sketched and sketched.q.shape == (6, 2) and sketched.samples.exact == pytest.approx(4.0)
    assert sketched.count >= 10  # the deflated probes alone count
    assert sketched.samples.estimate()[0] == pytest.approx(12.0, abs=1.0)  # 4 exact + about 2 x 4 sampled
    assert not states["a"].weight.sketched


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 12)
        self.fc3 = nn.Linear(12, 12)
        self.fc4 = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc4(torch.tanh(self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))))


def _batches():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    return [(x, torch.randint(0, 4, (64,), generator=g))]


def test_decision_stopping_gives_the_plan_of_exact_traces():
    torch.manual_seed(0)
    model, batches = Net().eval(), _batches()
    question = AllocateOptions(w_bits=(2, 4, 8), a_bits=(8,), pin_ends=False)
    rule = PlanSettling(["6x", "10x"], question)
    notes: dict = {}
    settled = analyze(model, batches, settle=rule, eigenvalues=False, sketch=0, notes=notes, first_probes=3)
    exact = analyze(model, batches, sketch=1000, trace_tol=1e-9, activations=False, eigenvalues=False)
    assert all(layer.trace_std_error == 0 for layer in exact)  # the sketch spans every block: exact traces
    assert notes["stopping"] == "decision" and notes["settled"] and notes["unsettled"] == {}
    assert notes["settled_for"]["budgets"] == ["6x", "10x"]
    assert all(layer.top_eigenvalue is None and layer.trace_probes >= 3 for layer in settled)
    assert all(layer.act_elements == 0 for layer in settled)  # one activation choice: not measured
    report = Sensitivity("m", "f", "d", {}, settled)
    reference = Sensitivity("m", "f", "d", {}, exact)
    for budget in ("6x", "10x"):
        ours = allocate(report, budget, w_bits=question.w_bits, a_bits=question.a_bits, pin_ends=False)
        truth = allocate(reference, budget, w_bits=question.w_bits, a_bits=question.a_bits, pin_ends=False)
        assert [(p.w_bits, p.a_bits) for p in ours.layers] == [(p.w_bits, p.a_bits) for p in truth.layers]


def _report(tmp_path, **settings) -> Sensitivity:
    layers = [_layer("a", 10.0, 0.1), _layer("b", 8.0, 0.1), _layer("c", 3.0, 0.1)]
    base = {"stopping": "decision", "settled": True, "unsettled": {},
            "settled_for": {"budgets": ["4.5x"], **{k: v for k, v in _question(AllocateOptions()).items()}}}
    return Sensitivity("m", "f", "d", {**base, **settings}, layers)


def _question(options):
    from hawq_onnx.allocation.settling import _question as question

    return question(options)


def test_allocate_warns_for_a_budget_or_allocation_the_analysis_was_not_settled_for(tmp_path, caplog):
    report = _report(tmp_path)
    assert unsettled_warning(report, "4.5x", AllocateOptions()) is None
    assert "not at 5x" in unsettled_warning(report, "5x", AllocateOptions())
    assert "a_bits differ" in unsettled_warning(report, "4.5x", AllocateOptions(a_bits=(4,)))
    left = _report(tmp_path, settled=False, unsettled={"b": "weight"})
    assert "probe limit" in unsettled_warning(left, "4.5x", AllocateOptions())
    precise = Sensitivity("m", "f", "d", {}, report.layers)
    assert unsettled_warning(precise, "5x", AllocateOptions()) is None
    with caplog.at_level(logging.WARNING, logger="hawq_onnx"):
        hq.allocate(report, "5x")
    assert any("not at 5x" in r.getMessage() for r in caplog.records)


def test_eigenvalue_metric_needs_eigenvalues(tmp_path):
    report = _report(tmp_path)
    with pytest.raises(OptionError, match="no top eigenvalues") as info:
        hq.allocate(report, "4.5x", metric="eigenvalue")
    assert info.value.params == ("metric", "eigenvalues")


def test_sensitivity_files_round_trip_without_eigenvalues(tmp_path):
    report = _report(tmp_path)
    path = report.save(tmp_path / "s.json")
    again = load_sensitivity(path)
    assert again.layers[0].top_eigenvalue is None and again.layers[0].act_trace_probes == 8
    assert again.to_json() == report.to_json()


def test_options_are_checked_before_any_work():
    with pytest.raises(OptionError, match="stopping"):
        hq.analyze("digits-cnn", stopping="fast")
    with pytest.raises(OptionError, match="settle_for"):
        hq.analyze("digits-cnn", settle_for=())
    with pytest.raises(HawqError, match="budget"):
        hq.analyze("digits-cnn", settle_for=("thirteen",))
    with pytest.raises(OptionError, match="settle_allocation must be a AllocateOptions"):
        hq.analyze("digits-cnn", settle_allocation={"a_bits": (4,)})
    assert AnalyzeOptions().stopping == "decision"
