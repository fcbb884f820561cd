"""Allocation on synthetic sensitivity files: chosen bits at a budget and solve times.

    python benchmarks/bench_allocate.py [--budget 13x] [--seed 0] [--repeats 5]

ResNet20's 20 layers (names, parameter counts and MACs from the zoo model, randomly initialised),
||Q(W) - W||^2 measured on those weights with hawq_onnx.core.grid, Hessian traces per parameter
drawn log-uniformly in [1e-3, 1] (seeded) and a synthetic input-activation term. Larger shapes
(ResNet56, ResNet50 on ImageNet) time the exact frontier and the HiGHS ILP.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from hawq_onnx.models.registry import ZOO

from hawq_onnx.allocation.cost_model import build_problem
from hawq_onnx.allocation.pareto import pareto_frontier
from hawq_onnx.allocation.solve import allocate
from hawq_onnx.core.grid import WEIGHT_BITS, weight_perturbation
from hawq_onnx.core.layers import describe_layers, quantizable_modules
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity


def zoo_report(name: str, seed: int) -> Sensitivity:
    torch.manual_seed(seed)
    spec = ZOO[name]
    model = spec.factory().eval()
    weights = {n: m.weight.detach().numpy() for n, m in quantizable_modules(model)}
    rng = np.random.default_rng(seed)
    layers = []
    for info in describe_layers(model, spec.input_shape):
        w = weights[info.name]
        tpp = float(10 ** rng.uniform(-3, 0))
        pert = {m: {str(b): weight_perturbation(w, b, m) for b in WEIGHT_BITS} for m in ("maxabs", "mse")}
        act_elements = 4096  # synthetic: per-sample input elements, mean squared 4/8-bit error 1e-3/4e-6
        layers.append(LayerSensitivity(
            name=info.name, kind=info.kind, params=info.params, out_channels=info.out_channels, macs=info.macs,
            top_eigenvalue=float(10 ** rng.uniform(-0.3, 1.3)), eigen_iterations=20, eigen_converged=True,
            trace=tpp * info.params, trace_std_error=0.05 * tpp * info.params, trace_probes=64,
            trace_converged=True, seconds=0.0, perturbation=pert, act_elements=act_elements,
            act_trace=float(10 ** rng.uniform(-4, -2)) * act_elements,
            act_perturbation={"4": 1e-3 * act_elements, "8": 4e-6 * act_elements}))
    return Sensitivity(model=name, fingerprint="synthetic", data="synthetic", settings={}, layers=layers)


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="13x")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)

    report = zoo_report("resnet20-cifar10", args.seed)
    plan, t_dp = timed(lambda: allocate(report, args.budget), args.repeats)
    ilp, t_ilp = timed(lambda: allocate(report, args.budget, solver="ilp"), args.repeats)
    bops_limit = int(0.8 * plan.totals["bops"])
    bops, t_bops = timed(lambda: allocate(report, args.budget, bops_limit=bops_limit), args.repeats)
    t = plan.totals
    print(f"ResNet20 synthetic at {args.budget}: {t['weight_bytes']:.0f} nominal bytes ({t['ratio']:.2f}x), "
          f"{t['storage_bytes']} stored, Omega {t['omega']:.6g}, BOPs {t['bops'] / 1e9:.3f}G; "
          f"frontier {plan.allocation['pareto_points']} points")
    for layer in plan.layers:
        print(f"  {layer.name:<16} {layer.params:>6}  w{layer.w_bits} a{layer.a_bits}  Omega {layer.omega:.3g}")
    print(f"solve (best of {args.repeats}, allocate() end to end incl. Pareto points): dp {1e3 * t_dp:.1f} ms, "
          f"ilp {1e3 * t_ilp:.1f} ms (Omega equal: {ilp.totals['omega'] == t['omega']}), "
          f"ilp with BOPs <= {bops_limit / 1e9:.3f}G {1e3 * t_bops:.1f} ms (Omega {bops.totals['omega']:.6g})")

    for name in ("resnet56-cifar10",):
        big = zoo_report(name, args.seed)
        problem = build_problem(big)
        frontier, t_front = timed(lambda problem=problem: pareto_frontier(problem.items), args.repeats)
        _, t_all = timed(lambda big=big: allocate(big, args.budget), args.repeats)
        print(f"{name}: {len(big.layers)} layers, frontier {len(frontier)} points in {1e3 * t_front:.1f} ms, "
              f"allocate {1e3 * t_all:.1f} ms")


if __name__ == "__main__":
    main()
