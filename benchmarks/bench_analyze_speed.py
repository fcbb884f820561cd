"""Default `analyze` (decision stopping) against a naive per-layer loop with PyHessian's stopping
rule, and the plans each gives against a long 1 %-precision analysis (issue 24).

    python benchmarks/bench_analyze_speed.py --weights ../shared/models/resnet20-12fca82f.th \\
        --data ../shared/data/cifar10 [--reference runs/ref.json] [--seeds 0,1,2] [--naive-layers K]

The batch is the one `hawq-onnx analyze` takes by default (256 training images shuffled with
seed 0), the model BN-folded; the seeds vary the probes only, so every row sees one Hessian.

Rows, timed one after the other in this process (2 threads):
- naive: for each layer, Hutchinson's trace with PyHessian's own rule (its ``trace()`` defaults:
  stop when the running mean changes by less than 1e-3 relatively, at most 100 probes), every
  product a fresh forward, backward (create_graph) and double backward for that layer's weight;
  then the same for the Hessian w.r.t. the layer's input (the input-activation trace ours also
  computes where activation bits are a choice). ``--naive-layers K`` runs K layers spread over
  the network and scales the time by 20/K.
- ours, quantize's question: traces settled for the 13x plan with 4-bit activations (weight
  traces only, as the naive loop computes).
- ours, analyze's default question: settled for the 8x and 13x plans with 4- or 8-bit
  activations (weight and input-activation traces).
- the reference: precision stopping at 1 % (Hutch++ sketch 16), seed 0; ``--reference`` loads a
  sensitivity.json written by ``hawq-onnx analyze --stopping precision`` on the same batch.
Plans: ``allocate`` at each budget with the question's activation bits, layer for layer against
the reference's plan.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

import hawq_onnx as hq
from hawq_onnx.allocation.settling import PlanSettling
from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.core.layers import quantizable_modules
from hawq_onnx.io.sensitivity_report import Sensitivity
from hawq_onnx.options import AllocateOptions
from hawq_onnx.sensitivity.hessian import analyze_batches
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model


def naive_trace(model, weight, x, y, gen, tol=1e-3, max_iter=100) -> tuple[float, int]:
    """PyHessian's ``trace()`` for one layer: Rademacher probes until the running mean settles."""
    samples: list[float] = []
    trace = 0.0
    for _ in range(max_iter):
        v = (torch.randint(0, 2, weight.shape, generator=gen) * 2 - 1).to(weight.dtype)
        loss = F.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, weight, create_graph=True)
        (hv,) = torch.autograd.grad(g, weight, v)
        samples.append(float((v * hv).sum()))
        if abs(np.mean(samples) - trace) / (abs(trace) + 1e-6) < tol:
            break
        trace = float(np.mean(samples))
    return float(np.mean(samples)), len(samples)


def naive_input_trace(model, module, x, y, gen, tol=1e-3, max_iter=100) -> tuple[float, int]:
    """The same rule for the Hessian w.r.t. the layer's input (per sample: the loss is a batch mean)."""
    leaf: dict[str, torch.Tensor] = {}

    def swap(mod, inputs):
        leaf["a"] = inputs[0].detach().requires_grad_(True)
        return (leaf["a"],)

    handle = module.register_forward_pre_hook(swap)
    samples: list[float] = []
    trace = 0.0
    try:
        for _ in range(max_iter):
            loss = F.cross_entropy(model(x), y)
            (g,) = torch.autograd.grad(loss, leaf["a"], create_graph=True)
            z = (torch.randint(0, 2, g.shape, generator=gen) * 2 - 1).to(g.dtype)
            (hz,) = torch.autograd.grad(g, leaf["a"], z)
            samples.append(float((z * hz).sum()) * len(y))
            if abs(np.mean(samples) - trace) / (abs(trace) + 1e-6) < tol:
                break
            trace = float(np.mean(samples))
    finally:
        handle.remove()
    return float(np.mean(samples)), len(samples)


def plan_of(report: Sensitivity, budget: str, a_bits: tuple[int, ...]) -> list[tuple]:
    return [(p.name, p.w_bits, p.a_bits) for p in hq.allocate(report, budget, a_bits=a_bits).layers]


def differing(ours: list[tuple], ref: list[tuple]) -> str:
    diff = [f"{a[0]} {a[1]}/{a[2]} (ref {b[1]}/{b[2]})" for a, b in zip(ours, ref) if a != b]
    return "same" if not diff else f"{len(diff)} differ: " + ", ".join(diff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="../shared/models/resnet20-12fca82f.th")
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--reference", default=None, help="a 1 %%-precision sensitivity.json of the same batch")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--naive-layers", type=int, default=0, help="0: all; -1: no naive loop")
    ap.add_argument("--questions", default="quantize,default", help="which of ours: quantize, default")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    loaded = load_model("resnet20-cifar10", args.weights)
    dataset = load_data(f"cifar10:{args.data}", loaded.spec)
    data = list(dataset.train.batches(256, shuffle=True, seed=0, limit=1))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"ResNet20 (BN folded), 256 CIFAR-10 training images (analyze's default batch), {args.threads} threads, "
          f"torch {torch.__version__}")

    if args.reference:
        reference = Sensitivity.load(args.reference)
        print(f"reference: {args.reference} ({reference.settings.get('trace_tol')} precision, "
              f"{reference.seconds:.0f} s when it ran)")
    else:
        start = time.perf_counter()
        reference = analyze_batches(loaded, data, "cifar10", seed=0, sketch=16, trace_tol=0.01, max_probes=400)
        print(f"reference: 1 % precision, sketch 16, seed 0: {time.perf_counter() - start:.1f} s")

    questions = {
        "quantize": ("quantize's question (13x, a_bits 4)", ("13x",), AllocateOptions(a_bits=(4,))),
        "default": ("analyze's default (8x + 13x, a_bits 4,8)", ("8x", "13x"), AllocateOptions()),
    }
    for key in args.questions.split(","):
        label, budgets, question = questions[key]
        for seed in seeds:
            rule = PlanSettling(list(budgets), question)
            start = time.perf_counter()
            report = analyze_batches(loaded, data, "cifar10", seed=seed, settle=rule, eigenvalues=False)
            seconds = time.perf_counter() - start
            probes = sum(layer.trace_probes + layer.act_trace_probes for layer in report.layers) \
                + 2 * 16 * len(report.settings["sketched"])  # Hutch++ sketches of 16 vectors
            plans = "; ".join(f"{b}: {differing(plan_of(report, b, question.a_bits), plan_of(reference, b, question.a_bits))}"
                              for b in budgets)
            print(f"ours, {label}, seed {seed}: {seconds:.1f} s, {probes} products "
                  f"({len(report.settings['sketched'])} layers sketched), "
                  f"settled {report.settings['settled']}; plans against the reference: {plans}", flush=True)

    if args.naive_layers < 0:
        return
    model = copy.deepcopy(loaded.module)
    fold_batchnorm(model, loaded.spec.input_shape)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    (x, y), = data
    modules = quantizable_modules(model)
    picked = range(len(modules))
    if args.naive_layers and args.naive_layers < len(modules):
        picked = sorted({round(i * (len(modules) - 1) / (args.naive_layers - 1)) for i in range(args.naive_layers)})
    gen = torch.Generator().manual_seed(0)
    totals = {"weight": [0.0, 0], "input": [0.0, 0]}
    for i in picked:
        name, module = modules[i]
        module.weight.requires_grad_(True)
        start = time.perf_counter()
        value, n = naive_trace(model, module.weight, x, y, gen)
        seconds = time.perf_counter() - start
        module.weight.requires_grad_(False)
        start = time.perf_counter()
        act, m = naive_input_trace(model, module, x, y, gen)
        act_seconds = time.perf_counter() - start
        totals["weight"][0] += seconds
        totals["weight"][1] += n
        totals["input"][0] += act_seconds
        totals["input"][1] += m
        ref = reference.layer(name)
        print(f"  naive {name}: weight {n} probes, {seconds:.1f} s, trace {value:.4g} (reference {ref.trace:.4g}); "
              f"input {m} probes, {act_seconds:.1f} s, trace {act:.4g} (reference {ref.act_trace:.4g})", flush=True)
    scale = len(modules) / len(picked)
    for what, (seconds, count) in totals.items():
        print(f"naive loop, PyHessian's rule (tol 1e-3, at most 100 probes), {what} traces: {count} products, "
              f"{seconds:.1f} s" + (f" on {len(picked)} layers, {seconds * scale:.1f} s scaled to {len(modules)}"
                                    if scale != 1 else ""))
    seconds = sum(t for t, _ in totals.values())
    print(f"naive loop, weight and input traces: {seconds * scale:.1f} s")


if __name__ == "__main__":
    main()
