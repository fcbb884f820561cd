"""Per-layer Hessian sensitivity of ResNet20: hawq-onnx's engine against a naive per-layer loop.

    python benchmarks/bench_sensitivity.py [--weights ../shared/models/resnet20-12fca82f.th]
        [--data ../shared/data/cifar10] [--batch-size 256] [--eig-tol 1e-3] [--trace-tol 1e-2]
        [--naive-probes 20] [--naive-layers K] [--threads 2] [--device cpu] [--activations]

One batch: the first 256 CIFAR-10 test images; the BN-folded model, as `hawq-onnx analyze` sees it.

Ours: `hawq_onnx.sensitivity.hessian.analyze` (first-order graph built once and reused by every product,
Hutch++ sketch, power iteration from its Ritz vector, deflated Hutchinson stopped on the standard
error <= trace_tol x |trace|).

Naive, the way the HAWQ / PyHessian code is used per layer: every Hessian-vector product
recomputes forward, backward (create_graph) and double backward for that one layer's weight.
- eigenvalue: power iteration from a random start, same eig_tol, run in full;
- trace: plain Hutchinson. Run for --naive-probes probes per layer, which measures the per-probe
  spread; the time the naive loop would need to meet OUR stopping rule (standard error <=
  trace_tol x |trace|) is extrapolated as probes_needed x its measured time per probe. The
  PyHessian rule (stop when the running mean changes by < trace_tol) is also replayed on the same
  samples, with the standard error it would have reported.
--naive-layers K times the naive loop on K layers spread over the network and scales the naive
totals by 20/K (said so in the output); the default runs all layers.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.core.layers import quantizable_modules
from hawq_onnx.sensitivity.hessian import analyze
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model

ROOT = Path(__file__).resolve().parents[1]


def naive_hvp(model, weight, x, y, v):
    """Forward, backward with create_graph and double backward, for one layer's weight."""
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, weight, create_graph=True)
    (hv,) = torch.autograd.grad(g, weight, v)
    return hv


def naive_eigenvalue(model, weight, x, y, tol, max_iter, gen):
    v = torch.randn(weight.shape, generator=gen)
    v /= v.norm()
    eigenvalue, previous = 0.0, None
    for it in range(1, max_iter + 1):
        hv = naive_hvp(model, weight, x, y, v)
        eigenvalue = float((v * hv).sum())
        if previous is not None and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
            return eigenvalue, it
        previous = eigenvalue
        v = hv / hv.norm()
    return eigenvalue, max_iter


def naive_trace_samples(model, weight, x, y, probes, gen):
    out = []
    for _ in range(probes):
        z = (torch.randint(0, 2, weight.shape, generator=gen) * 2 - 1).to(weight.dtype)
        out.append(float((z * naive_hvp(model, weight, x, y, z)).sum()))
    return np.asarray(out)


def pyhessian_stop(samples: np.ndarray, tol: float) -> int:
    """Probes after which PyHessian's rule (running mean changed by < tol) would have stopped."""
    for n in range(2, len(samples) + 1):
        prev, cur = samples[:n - 1].mean(), samples[:n].mean()
        if abs(cur - prev) / (abs(prev) + 1e-6) < tol:
            return n
    return len(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(ROOT.parent / "shared/models/resnet20-12fca82f.th"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eig-tol", type=float, default=1e-3)
    ap.add_argument("--trace-tol", type=float, default=1e-2)
    ap.add_argument("--sketch", type=int, default=16)
    ap.add_argument("--naive-probes", type=int, default=20)
    ap.add_argument("--naive-layers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--activations", action="store_true", help="also time the input-activation traces")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model("resnet20-cifar10", args.weights)
    model = loaded.module
    fold_batchnorm(model, loaded.spec.input_shape)
    test = load_data(f"cifar10:{args.data}", loaded.spec).test
    x, y = next(test.batches(args.batch_size))
    device = torch.device(args.device)
    model.to(device)
    x, y = x.to(device), y.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"ResNet20 (BN folded), first {len(y)} CIFAR-10 test images, {args.device}, "
          f"{torch.get_num_threads()} threads, eig_tol {args.eig_tol:g}, trace_tol {args.trace_tol:g}")

    sync()
    start = time.perf_counter()
    # Eigenvalues and traces only, like the naive loop (--activations adds the input-activation traces).
    ours = analyze(model, [(x, y)], eig_tol=args.eig_tol, trace_tol=args.trace_tol, sketch=args.sketch,
                   activations=args.activations, seed=args.seed, device=args.device, progress=True)
    sync()
    ours_seconds = time.perf_counter() - start

    modules = quantizable_modules(model)
    picked = range(len(modules))
    if args.naive_layers and args.naive_layers < len(modules):
        picked = sorted({round(i * (len(modules) - 1) / max(args.naive_layers - 1, 1)) for i in range(args.naive_layers)})
    scale = len(modules) / len(picked)
    gen = torch.Generator().manual_seed(args.seed)
    naive: dict[str, dict] = {}
    for i in picked:
        name, module = modules[i]
        w = module.weight
        sync()
        t0 = time.perf_counter()
        eig, its = naive_eigenvalue(model, w, x, y, args.eig_tol, 100, gen)
        sync()
        t1 = time.perf_counter()
        samples = naive_trace_samples(model, w, x, y, args.naive_probes, gen)
        sync()
        t2 = time.perf_counter()
        per_probe = (t2 - t1) / len(samples)
        mean, sd = samples.mean(), samples.std(ddof=1)
        needed = max(8, math.ceil((sd / (args.trace_tol * abs(mean))) ** 2))
        stop = pyhessian_stop(samples, args.trace_tol)
        naive[name] = dict(eig=eig, its=its, eig_s=t1 - t0, trace=mean, se=sd / math.sqrt(len(samples)),
                           needed=needed, trace_s_needed=needed * per_probe, pyh_probes=stop,
                           pyh_se=samples[:stop].std(ddof=1) / math.sqrt(stop) / abs(samples[:stop].mean()),
                           pyh_s=stop * per_probe)
        print(f"  naive {name}: eigenvalue {eig:.4g} in {its} products ({t1 - t0:.1f} s), "
              f"{per_probe:.2f} s per probe", flush=True)

    print()
    print(f"{'layer':<16} {'params':>6} {'eig ours':>9} {'eig naive':>9} {'rel':>7} {'it':>3}/{'it':<3}"
          f" {'trace ours':>10} {'se%':>5} {'pr':>4} {'trace naive':>11} {'se%':>5} {'need':>6} {'PyH pr':>6} {'se%':>5}")
    worst = 0.0
    for r in ours:
        n = naive.get(r.name)
        if n is None:
            continue
        rel = abs(r.top_eigenvalue - n["eig"]) / abs(n["eig"])
        worst = max(worst, rel)
        print(f"{r.name:<16} {r.params:>6} {r.top_eigenvalue:>9.4g} {n['eig']:>9.4g} {rel:>7.2%} {r.eigen_iterations:>3}/"
              f"{n['its']:<3} {r.trace:>10.4g} {100 * r.trace_std_error / abs(r.trace):>5.2f} {r.trace_probes:>4} "
              f"{n['trace']:>11.4g} {100 * n['se'] / abs(n['trace']):>5.1f} {n['needed']:>6} {n['pyh_probes']:>6} "
              f"{100 * n['pyh_se']:>5.1f}")
    eig_s = scale * sum(n["eig_s"] for n in naive.values())
    trace_needed_s = scale * sum(n["trace_s_needed"] for n in naive.values())
    pyh_s = scale * sum(n["pyh_s"] for n in naive.values())
    note = f" (naive timed on {len(picked)} layers, x{scale:.2f})" if scale != 1 else ""
    converged = sum(r.eigen_converged and r.trace_converged for r in ours)
    print()
    print(f"ours: {ours_seconds:.1f} s for all {len(ours)} layers (eigenvalues, traces with standard error <= "
          f"{args.trace_tol:g}{', activation traces' if args.activations else ''}); {converged}/{len(ours)} converged")
    print(f"naive eigenvalues (measured): {eig_s:.1f} s{note}; worst eigenvalue difference {worst:.2%}")
    print(f"naive traces to the same standard error (extrapolated): {trace_needed_s:.0f} s")
    print(f"naive full report at equal precision: {eig_s + trace_needed_s:.0f} s -> speedup "
          f"{(eig_s + trace_needed_s) / ours_seconds:.1f}x")
    print(f"naive with PyHessian's running-mean rule instead: {eig_s + pyh_s:.0f} s -> ratio "
          f"{(eig_s + pyh_s) / ours_seconds:.2f}x, its traces' standard errors "
          f"{min(n['pyh_se'] for n in naive.values()):.0%}-{max(n['pyh_se'] for n in naive.values()):.0%}")


if __name__ == "__main__":
    main()
