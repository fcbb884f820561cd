"""Precision allocation: exactness against brute force, budgets, pins, ties, BOPs, Pareto, CLI."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from hawq_onnx.allocation.pareto import Item, pareto_frontier, solve_ilp
from hawq_onnx.allocation.cost_model import build_problem, curvature
from hawq_onnx.allocation.solve import allocate
from hawq_onnx.allocation.units import (
    parse_bits,
    parse_bops,
    parse_budget,
    parse_pin,
)
from hawq_onnx.cli import cli
from hawq_onnx.core.grid import WEIGHT_BITS
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import load_plan, plan_from_json, save_plan
from hawq_onnx.io.sensitivity_report import (
    LayerSensitivity,
    Sensitivity,
    save_sensitivity,
)

RESNET20_PARAMS = [432] + [2304] * 6 + [4608] + [9216] * 5 + [18432] + [36864] * 5 + [640]


def make_layer(name: str, params: int, rng: np.random.Generator, *, act: bool, trace_per_param: float | None = None,
               bits=WEIGHT_BITS) -> LayerSensitivity:
    tpp = float(10 ** rng.uniform(-3, 0)) if trace_per_param is None else trace_per_param
    pert = {str(b): float(params * rng.uniform(0.5, 2.0) * 4.0 ** -b) for b in bits}
    layer = LayerSensitivity(
        name=name, kind="conv2d", params=params, out_channels=4, macs=int(params * rng.integers(1, 300)),
        top_eigenvalue=float(10 ** rng.uniform(-1, 1)), eigen_iterations=10, eigen_converged=True,
        trace=tpp * params, trace_std_error=0.0, trace_probes=10, trace_converged=True, seconds=0.0,
        perturbation={"maxabs": pert, "mse": {k: 0.6 * v for k, v in pert.items()}})
    if act:
        layer.act_elements = 64
        layer.act_trace = float(10 ** rng.uniform(-3, -1))
        layer.act_perturbation = {"4": float(rng.uniform(0.5, 2.0)), "8": float(rng.uniform(0.001, 0.01))}
    return layer


def make_report(params: list[int], seed: int = 0, *, act: bool = False, names: list[str] | None = None,
                traces: list[float | None] | None = None) -> Sensitivity:
    rng = np.random.default_rng(seed)
    names = names or [f"block{i}.conv" for i in range(len(params))]
    traces = traces or [None] * len(params)
    layers = [make_layer(n, p, rng, act=act, trace_per_param=t) for n, p, t in zip(names, params, traces)]
    return Sensitivity(model="toy", fingerprint="f" * 16, data="synthetic", settings={}, layers=layers)


def resnet20_report(act: bool = True) -> Sensitivity:
    names = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)] + ["linear"]
    return make_report(RESNET20_PARAMS, seed=20, act=act, names=names)


# --- brute force, written from the definitions and independent of allocation.py ------------

def brute_force(report, w_bits, a_bits, fixed: dict[int, tuple], ties: list[list[int]], budget_bits, bops_limit,
                metric="trace", method="maxabs"):
    """(min Omega, all feasible (size, Omega)) by enumerating every per-layer choice."""
    layers = report.layers
    cands = [(w, a) for w in w_bits for a in a_bits]
    extra = sorted(set(fixed.values()) - set(cands), key=str)
    opts = cands + extra
    tied_fixed = {}
    for group in ties:
        values = {fixed[i] for i in group if i in fixed}
        for i in group:
            if values:
                tied_fixed[i] = next(iter(values))
    combos = np.array(list(itertools.product(range(len(opts)), repeat=len(layers))))
    ok = np.ones(len(combos), bool)
    for i in range(len(layers)):
        want = fixed.get(i, tied_fixed.get(i))
        ok &= np.isin(combos[:, i], [opts.index(want)] if want else list(range(len(cands))))
    for group in ties:
        for i in group[1:]:
            ok &= combos[:, i] == combos[:, group[0]]
    size = np.zeros(len(combos), np.int64)
    bops = np.zeros(len(combos), np.int64)
    omega = np.zeros(len(combos))
    for i, layer in enumerate(layers):
        w = np.array([32 if o[0] is None else o[0] for o in opts])[combos[:, i]]
        a = np.array([32 if o[1] is None else o[1] for o in opts])[combos[:, i]]
        size += layer.params * w
        bops += layer.macs * w * a
        curv = max(layer.trace / layer.params if metric == "trace" else layer.top_eigenvalue, 0.0)
        om_w = np.array([0.0 if o[0] is None else curv * layer.perturbation[method][str(o[0])] for o in opts])
        om_a = np.array([layer.act_trace / layer.act_elements * layer.act_perturbation[str(o[1])]
                         if layer.act_elements and o[1] is not None else 0.0 for o in opts])
        omega += (om_w + om_a)[combos[:, i]]
    feasible = ok & (size <= budget_bits) & (bops <= (bops_limit if bops_limit is not None else np.inf))
    best = float(omega[feasible].min()) if feasible.any() else None
    return best, size[ok], omega[ok], bops[ok]


def random_instance(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 6))
    params = [int(p) for p in rng.integers(1, 300, n)]
    traces = [None] * n
    if rng.random() < 0.3:
        traces[int(rng.integers(n))] = float(rng.choice([0.0, -0.01]))  # clamped to 0
    report = make_report(params, seed, act=bool(rng.random() < 0.5), traces=traces)
    w_bits = tuple(sorted(rng.choice([2, 3, 4, 8], size=int(rng.integers(1, 4)), replace=False).tolist()))
    a_bits = (4, 8) if rng.random() < 0.7 else (int(rng.choice([4, 8])),)
    pin_ends = bool(rng.random() < 0.5)
    ties = []
    if rng.random() < 0.5:
        ties = [sorted(rng.choice(n, size=2, replace=False).tolist())]
    return report, w_bits, a_bits, pin_ends, ties


@pytest.mark.parametrize("seed", range(24))
def test_optimal_against_brute_force(seed):
    report, w_bits, a_bits, pin_ends, ties = random_instance(seed)
    n = len(report.layers)
    names = [layer.name for layer in report.layers]
    fixed = {0: (8, 8), n - 1: (8, 8)} if pin_ends else {}
    metric, method = ("eigenvalue" if seed % 3 == 0 else "trace"), ("mse" if seed % 4 == 1 else "maxabs")
    _, sizes, _, bopses = brute_force(report, w_bits, a_bits, fixed, ties, np.inf, None)
    rng = np.random.default_rng(1000 + seed)
    budgets = sorted({int(sizes.min()), int(sizes.max()), *rng.integers(sizes.min(), sizes.max() + 1, 3).tolist()})
    tie_names = [",".join(names[i] for i in t) for t in ties]
    for budget_bits in budgets:
        budget_bytes = max(budget_bits // 8, 1)
        for bops_limit in (None, int(rng.integers(bopses.min(), bopses.max() + 1))):
            best, *_ = brute_force(report, w_bits, a_bits, fixed, ties, 8 * budget_bytes, bops_limit, metric, method)
            solvers = ("dp", "ilp") if bops_limit is None else ("ilp",)
            for solver in solvers:
                kwargs = {"w_bits": w_bits, "a_bits": a_bits, "bops_limit": bops_limit, "ties": tie_names,
                          "pin_ends": pin_ends, "solver": solver, "metric": metric, "scale_method": method}
                if best is None:
                    with pytest.raises(HawqError, match="below the smallest|below the fewest|no allocation fits"):
                        allocate(report, budget_bytes, **kwargs)
                    continue
                plan = allocate(report, budget_bytes, **kwargs)
                assert plan.totals["omega"] == pytest.approx(best, rel=1e-9, abs=1e-15), (solver, budget_bits)
                assert plan.totals["weight_bytes"] <= budget_bytes
                if bops_limit is not None:
                    assert plan.totals["bops"] <= bops_limit
                assert sum(lp.omega for lp in plan.layers) == pytest.approx(best, rel=1e-9, abs=1e-15)
                bits = {lp.name: (lp.w_bits, lp.a_bits) for lp in plan.layers}
                for t in ties:
                    assert len({bits[names[i]] for i in t}) == 1
                if pin_ends and not any(0 in t or n - 1 in t for t in ties):
                    assert bits[names[0]] == bits[names[-1]] == (8, 8)


@pytest.mark.parametrize("seed", range(8))
def test_pareto_frontier_is_exact(seed):
    report, w_bits, a_bits, pin_ends, ties = random_instance(seed)
    n = len(report.layers)
    names = [layer.name for layer in report.layers]
    problem = build_problem(report, w_bits=w_bits, a_bits=a_bits, pin_ends=pin_ends,
                            ties=[[names[i] for i in t] for t in ties])
    frontier = pareto_frontier(problem.items)
    fixed = {0: (8, 8), n - 1: (8, 8)} if pin_ends else {}
    _, sizes, omegas, _ = brute_force(report, w_bits, a_bits, fixed, ties, np.inf, None)
    # non-dominated: sizes strictly up, Omega strictly down
    assert np.all(np.diff(frontier.size) > 0) and np.all(np.diff(frontier.cost) < 0)
    # at every achievable size, the frontier holds the brute-force optimum
    for s in np.unique(sizes):
        j = frontier.best_within(int(s))
        assert frontier.cost[j] == pytest.approx(omegas[sizes <= s].min(), rel=1e-9, abs=1e-15)
        # and the point rebuilds to an allocation of exactly that size and cost
        choice = frontier.choices(j)
        assert sum(int(it.size[c]) for it, c in zip(problem.items, choice)) == frontier.size[j]


def test_ilp_matches_brute_force_on_raw_items():
    rng = np.random.default_rng(7)
    for _ in range(10):
        items = [Item.of(rng.integers(1, 50, 3), rng.integers(1, 50, 3), rng.random(3)) for _ in range(5)]
        size_limit, bops_limit = int(rng.integers(40, 150)), int(rng.integers(40, 150))
        best = None
        for combo in itertools.product(range(3), repeat=5):
            s = sum(int(it.size[c]) for it, c in zip(items, combo))
            b = sum(int(it.bops[c]) for it, c in zip(items, combo))
            cost = sum(float(it.cost[c]) for it, c in zip(items, combo))
            if s <= size_limit and b <= bops_limit and (best is None or cost < best):
                best = cost
        got = solve_ilp(items, size_limit, bops_limit)
        if best is None:
            assert got is None
        else:
            assert sum(float(it.cost[c]) for it, c in zip(items, got)) == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_ilp_equals_frontier_on_resnet20_sized_problems(seed):
    # costs spanning six decades: HiGHS with its default scaling once stopped 1.3e-5 above the optimum
    report = make_report(RESNET20_PARAMS, seed=seed, act=bool(seed % 2))
    for budget in ("9x", "13x", "15x"):
        dp = allocate(report, budget)
        ilp = allocate(report, budget, solver="ilp")
        assert ilp.totals["omega"] == pytest.approx(dp.totals["omega"], rel=1e-12), budget
        # loose BOPs limit (the frontier's own BOPs): same optimum through the BOPs path
        assert allocate(report, budget, bops_limit=dp.totals["bops"]).totals["omega"] == \
            pytest.approx(dp.totals["omega"], rel=1e-12)


@pytest.mark.parametrize("text, expected", [
    ("13x", 2_000_000 // 13), ("13.11X", 152_555), (" 4x ", 500_000), ("1x", 2_000_000),
    ("800KB", 800_000), ("0.8MB", 800_000), ("0.8 mb", 800_000), ("819200", 819_200), ("1.2MiB", 1_258_291),
    ("100kib", 102_400), ("1e5", 100_000), ("99999.9B", 99_999), ("1.9999999GB", None),
])
def test_parse_budget(text, expected):
    # KB/MB/GB are powers of 1000, KiB/MiB powers of 1024; a ratio floors float_bytes / r
    if expected is None:
        with pytest.raises(HawqError, match="larger than the float32"):
            parse_budget(text, 2_000_000)
    else:
        assert parse_budget(text, 2_000_000) == expected


@pytest.mark.parametrize("text, message", [
    ("0.5x", "at least 1x"), ("2MB", "larger than the float32"), ("abc", "not understood"),
    ("13y", "not understood"), ("0x", "positive"), ("-5x", "not understood"), ("", "not understood"),
    ("inf", "not understood"), ("1e-9KB", "less than one byte"),
])
def test_parse_budget_rejects(text, message):
    with pytest.raises(HawqError, match=message):
        parse_budget(text, 1073344)


def test_parse_bops_bits_and_pins():
    assert parse_bops("0.3G", 10 ** 12) == 300_000_000
    assert parse_bops("300M", 10 ** 12) == parse_bops("3e8", 10 ** 12) == 300_000_000
    assert parse_bops("40x", 4000) == 100
    assert parse_bits("8,2,4,4", WEIGHT_BITS, "--w-bits") == (2, 4, 8)
    with pytest.raises(HawqError, match="'5' is not one of"):
        parse_bits("2,5", WEIGHT_BITS, "--w-bits")
    assert parse_pin("layer1.*=4/8") == ("layer1.*", (4, 8))
    for bad in ("conv1=4", "conv1=5/8", "conv1=4/6"):
        with pytest.raises(HawqError):
            parse_pin(bad)


def test_infeasible_budget_names_the_bounds():
    report = resnet20_report()
    # smallest: 2-bit inside, 8-bit first/last: (268336 - 1072) * 2 / 8 + 1072 = 67888 bytes (15.81x)
    with pytest.raises(HawqError) as err:
        allocate(report, "40x")
    msg = str(err.value)
    assert "\n" not in msg
    assert "budget 40x (26.8 KB)" in msg and "67.9 KB (15.81x" in msg and "268 KB (4.00x)" in msg
    assert allocate(report, "15.81x").totals["weight_bytes"] == 67888  # the lower bound it names works
    with pytest.raises(HawqError, match="below the smallest"):
        allocate(report, 67887)


def test_budget_above_largest_picks_best_and_notes_it():
    report = resnet20_report()
    plan = allocate(report, "4x")
    assert all(lp.w_bits == 8 and lp.a_bits == 8 for lp in plan.layers)
    assert "largest allocation" in plan.budget["note"]
    assert "note" not in allocate(report, "13x").budget


def test_resnet20_at_13x():
    report = resnet20_report()
    plan = allocate(report, "13x")
    assert plan.totals["weight_bytes"] <= 1073344 // 13 and plan.totals["ratio"] >= 13
    assert plan.layer("conv1").w_bits == plan.layer("linear").w_bits == 8
    assert plan.allocation["terms"] == ["weight", "activation"] and plan.allocation["method"] == "dp"
    assert plan.totals["storage_bytes"] == sum((lp.params * lp.w_bits + 7) // 8 for lp in plan.layers)
    assert plan.fingerprint == report.fingerprint and plan.model == report.model
    assert all(lp.weight_scale is None and lp.input_quant is None for lp in plan.layers)
    # the ILP agrees with the frontier
    assert allocate(report, "13x", solver="ilp").totals["omega"] == pytest.approx(plan.totals["omega"], rel=1e-12)


def test_pins_keep_float_and_no_pin_ends():
    report = resnet20_report()
    plan = allocate(report, "10x", pinned={"layer2.*": (4, 4)}, keep_float=["linear"])
    assert all(plan.layer(f"layer2.{b}.conv{c}").w_bits == 4 for b in range(3) for c in (1, 2))
    assert (plan.layer("linear").w_bits, plan.layer("linear").a_bits) == (None, None)
    assert plan.layer("linear").omega == 0.0 and (plan.layer("conv1").w_bits, plan.layer("conv1").a_bits) == (8, 8)
    assert plan.totals["weight_bytes"] >= 640 * 4  # the float layer counts at 32 bits
    free = allocate(report, "16x", pin_ends=False)  # only all-2-bit fits
    assert "conv1" not in free.allocation["pinned"]
    assert free.layer("conv1").w_bits == 2 and free.layer("linear").w_bits == 2
    with pytest.raises(HawqError, match="no layer matches 'layer9"):
        allocate(report, "13x", pinned={"layer9.*": (8, 8)})
    with pytest.raises(HawqError, match="both"):
        allocate(report, "13x", pinned={"linear": (8, 8)}, keep_float=["linear"])


def test_ties_are_honoured():
    report = resnet20_report()
    plan = allocate(report, "13x", ties=["layer3.*.conv1", "layer1.0.conv1,layer1.0.conv2"])
    assert len({(plan.layer(f"layer3.{b}.conv1").w_bits, plan.layer(f"layer3.{b}.conv1").a_bits)
                for b in range(3)}) == 1
    assert plan.layer("layer1.0.conv1").w_bits == plan.layer("layer1.0.conv2").w_bits
    assert plan.allocation["ties"] == [["layer1.0.conv1", "layer1.0.conv2"],
                                       ["layer3.0.conv1", "layer3.1.conv1", "layer3.2.conv1"]]
    assert plan.totals["omega"] >= allocate(report, "13x").totals["omega"]
    # a tie with a pinned layer takes its pin; two different pins in one tie are refused
    tied = allocate(report, "13x", ties=["conv1,layer1.0.conv1"])
    assert (tied.layer("layer1.0.conv1").w_bits, tied.layer("layer1.0.conv1").a_bits) == (8, 8)
    with pytest.raises(HawqError, match="different precisions"):
        allocate(report, "13x", ties=["conv1,linear"], pinned={"conv1": (4, 8)})


def test_bops_limit_is_honoured_and_infeasible_bops_explained():
    report = resnet20_report()
    loose = allocate(report, "13x")
    limit = int(loose.totals["bops"] * 0.8)
    plan = allocate(report, "13x", bops_limit=limit)
    assert plan.totals["bops"] <= limit < loose.totals["bops"]
    assert plan.totals["omega"] >= loose.totals["omega"] and plan.allocation["method"] == "ilp-highs"
    assert plan.budget["bops"] == limit
    with pytest.raises(HawqError, match="below the fewest possible BOPs"):
        allocate(report, "13x", bops_limit="1000x")
    # a limit given as a reduction against float 32x32 BOPs
    ratio = allocate(report, "13x", bops_limit="60x")
    assert ratio.totals["bops"] <= ratio.totals["float_bops"] / 60 and ratio.budget["bops_text"] == "60x"


def test_zero_curvature_is_free_and_ties_of_equal_cost_are_deterministic(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("hawq_onnx"), "propagate", True)  # the CLI turns it off
    report = make_report([100, 200, 300, 50], seed=3, traces=[0.0, -1e-3, 0.0, 0.0])
    plan = allocate(report, "8x", pin_ends=False)
    assert plan.totals["omega"] == 0.0
    # equal cost everywhere: the smallest size, then the fewest BOPs
    assert all((lp.w_bits, lp.a_bits) == (2, 4) for lp in plan.layers)
    assert plan.allocation["zero_curvature"] == [lp.name for lp in plan.layers]
    assert "non-positive Hessian" in caplog.text
    ilp = allocate(report, "8x", pin_ends=False, solver="ilp")
    assert [(lp.w_bits, lp.a_bits) for lp in ilp.layers] == [(2, 4)] * 4


def test_plan_pareto_points():
    report = resnet20_report()
    plan = allocate(report, "13x")
    points = plan.pareto
    assert 10 <= len(points) <= 61
    chosen = [p for p in points if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["omega"] == plan.totals["omega"]
    assert chosen[0]["bits"] == {lp.name: [lp.w_bits, lp.a_bits] for lp in plan.layers}
    sizes = [p["weight_bytes"] for p in points]
    omegas = [p["omega"] for p in points]
    assert sizes == sorted(sizes) and all(b < a for a, b in itertools.pairwise(omegas))
    assert points[0]["weight_bytes"] == 67888 and points[-1]["ratio"] == pytest.approx(4.0)
    for p in points:  # each point's bits rebuild its size
        assert p["weight_bytes"] == sum(lp.params * p["bits"][lp.name][0] for lp in plan.layers) / 8


def test_same_input_same_bytes(tmp_path):
    report = resnet20_report()
    save_sensitivity(report, tmp_path / "s.json")
    runner = CliRunner()
    outs = []
    for k in range(2):
        out = tmp_path / f"plan{k}.json"
        res = runner.invoke(cli, ["allocate", "--sensitivity", str(tmp_path / "s.json"), "--budget", "13x",
                                  "--tie", "layer3.*.conv2", "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_full_weight_range_prices_choices_with_its_own_perturbations(tmp_path):
    report = resnet20_report()
    narrow = allocate(report, "13x")
    assert narrow.weight_range == "narrow"
    with pytest.raises(HawqError, match="no mse-full weight perturbations.*rerun analyze"):
        allocate(report, "13x", scale_method="mse", weight_range="full")
    for layer in report.layers:  # the extra level can only lower ||Q(W) - W||^2
        layer.perturbation["mse-full"] = {b: 0.5 * v for b, v in layer.perturbation["mse"].items()}
    full = allocate(report, "13x", scale_method="mse", weight_range="full")
    mse = allocate(report, "13x", scale_method="mse")
    # Halving every weight term keeps the argmin here (no activation term changes), and each
    # layer's Omega loses exactly half its weight term.
    assert full.weight_range == "full" and [lp.w_bits for lp in full.layers] == [lp.w_bits for lp in mse.layers]
    for f, m in zip(full.layers, mse.layers):
        weight_term = curvature(report.layer(m.name)) * report.layer(m.name).perturbation["mse"][str(m.w_bits)]
        assert f.omega == pytest.approx(m.omega - 0.5 * weight_term, rel=1e-9)
    save_plan(full, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json").weight_range == "full"
    with pytest.raises(HawqError, match="weight range 'wide' is not one of narrow, full"):
        allocate(report, "13x", weight_range="wide")


def test_plans_before_weight_ranges_read_as_narrow_and_bad_ranges_are_refused(tmp_path):
    obj = allocate(resnet20_report(), "13x", weight_range="narrow").to_json()
    assert obj["version"] == 2 and obj["weight_range"] == "narrow"
    old = {k: v for k, v in obj.items() if k != "weight_range"} | {"version": 1}
    assert plan_from_json(old).weight_range == "narrow"
    with pytest.raises(HawqError, match="has weight_range 'wide', not one of narrow, full"):
        plan_from_json(obj | {"weight_range": "wide"})
    with pytest.raises(HawqError, match="has version 3, this hawq-onnx reads 1, 2"):
        plan_from_json(obj | {"version": 3})


def test_cli_end_to_end(tmp_path):
    sens = tmp_path / "sensitivity.json"
    save_sensitivity(resnet20_report(), sens)
    out, png = tmp_path / "out" / "plan.json", tmp_path / "pareto.png"
    res = CliRunner().invoke(cli, ["allocate", "--sensitivity", str(sens), "--budget", "13x", "--w-bits", "2,4,8",
                                   "--a-bits", "4,8", "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    plan = load_plan(out, fingerprint="f" * 16)
    assert plan.totals["ratio"] >= 13 and len(plan.layers) == 20
    assert plan.allocation["sensitivity_sha256"] and plan.pareto
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "layer3.2.conv2" in res.stdout and "13.0" in res.stdout and f"wrote {out}" in res.stdout
    assert json.loads(out.read_text())["budget"]["text"] == "13x"


@pytest.mark.parametrize("args, message", [
    (["--budget", "40x"], "below the smallest possible weight size"),
    (["--budget", "13x", "--w-bits", "2,5"], "'5' is not one of"),
    (["--budget", "13x", "--tie", "conv1,nope"], "no layer matches 'nope'"),
    (["--budget", "13x", "--pin", "nope=8/8"], "no layer matches 'nope'"),
    (["--budget", "13x", "--pin", "conv1=8"], "not LAYER=W/A"),
    (["--budget", "0.5x"], "at least 1x"),
    (["--budget", "13x", "--bops", "lots"], "BOPs limit 'lots' is not understood"),
    (["--budget", "13x", "--w-bits", "3"], "no 3-bit perturbation"),
    (["--budget", "13x", "--scale-method", "mse", "--w-bits", "2,4"], None),
    (["--budget", "13x", "--weight-range", "full"], None),  # max|w| scales: the narrow table serves
    (["--budget", "13x", "--weight-range", "full", "--scale-method", "mse"], "no mse-full weight perturbations"),
    (["--budget", "13x", "OUT=SENS"], "also an input"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    sens = tmp_path / "sensitivity.json"
    report = resnet20_report()
    for layer in report.layers:
        layer.perturbation = {m: {b: v for b, v in t.items() if b != "3"} for m, t in layer.perturbation.items()}
    save_sensitivity(report, sens)
    out = str(sens) if "OUT=SENS" in args else str(tmp_path / "plan.json")
    args = [a for a in args if a != "OUT=SENS"]
    res = CliRunner().invoke(cli, ["allocate", "--sensitivity", str(sens), *args, "--out", out])
    if message is None:
        assert res.exit_code == 0, res.output
        return
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "plan.json").exists()
