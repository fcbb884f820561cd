"""Hessian-aware allocation against uniform, reversed and random allocations, before and after fine-tuning.

    python benchmarks/bench_finetune.py --cifar ../shared/data/cifar10 \\
        --weights ../shared/models/resnet20-12fca82f.th [--budget 13x] [--epochs 25 | --steps N] \\
        [--data-fraction 1.0] [--order hawq] [--random 5] [--device cuda] [--out-dir bench_out]

ResNet20 (the shared checkpoint) on CIFAR-10: weights at ``--budget`` against float32 (first
and last layer 8-bit weights and inputs), 4-bit input activations everywhere else, weight bits
from {2, 4, 8}. Top-1 of the PyTorch fake-quant model on the test split after (a) post-training
calibration only and (b) fine-tuning, for:
- ``hessian``: the exact lowest-Omega allocation (HAWQ-V3, Tr(H)/n from ``hawq-onnx analyze``);
- ``reverse``: the same solver with the layers' curvatures reversed in rank (the least sensitive
  layer gets the most sensitive one's Tr(H)/n): bits go where the Hessian says they matter least;
- ``uniform``: the largest single weight width that fits the budget (2 bits at 13x);
- ``random``: ``--random`` allocations from random curvatures (log-uniform over the measured
  range), same solver, so each one fills the budget as the Hessian one does; the median is shown.
Every allocation is fine-tuned with the same schedule and seed. ``--test-limit`` (smoke runs
only) evaluates on the first N test images. Writes ``sensitivity.json`` (reused if present),
each plan and ``results.json`` into ``--out-dir``; ``results.json`` is rewritten after every
allocation, and a rerun with the same schedule reuses the rows of allocations whose bits are
unchanged (so an interrupted comparison, or one with more ``--random`` allocations, resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from hawq_onnx.allocation.solve import allocate
from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import write_json
from hawq_onnx.io.plan import Plan, save_plan
from hawq_onnx.io.sensitivity_report import Sensitivity, load_sensitivity, save_sensitivity
from hawq_onnx.qat.finetune import finetune
from hawq_onnx.sensitivity.hessian import analyze_model
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model

W_BITS = (2, 4, 8)
A_BITS = (4,)  # inside the network; the first and last layer are pinned to 8/8 by allocate


def _with_curvatures(report: Sensitivity, tpp: dict[str, float], act: dict[str, float]) -> Sensitivity:
    layers = [dataclasses.replace(l, trace=tpp[l.name] * l.params, top_eigenvalue=tpp[l.name],
                                  act_trace=act.get(l.name, l.act_trace)) for l in report.layers]
    return dataclasses.replace(report, layers=layers)


def reversed_report(report: Sensitivity) -> Sensitivity:
    """Curvatures reversed in rank over the layers the allocation is free to choose."""
    free = report.layers[1:-1]
    by_tpp = sorted(free, key=lambda l: l.trace_per_param)
    tpp = {l.name: l.trace_per_param for l in report.layers}
    tpp.update({a.name: b.trace_per_param for a, b in zip(by_tpp, reversed(by_tpp))})
    act_per = {l.name: l.act_trace / max(1, l.act_elements) for l in free}
    by_act = sorted(free, key=lambda l: act_per[l.name])
    act = {a.name: act_per[b.name] * a.act_elements for a, b in zip(by_act, reversed(by_act))}
    return _with_curvatures(report, tpp, act)


def random_report(report: Sensitivity, seed: int) -> Sensitivity:
    rng = np.random.default_rng(seed)
    measured = [l.trace_per_param for l in report.layers if l.trace_per_param > 0]
    lo, hi = np.log10(min(measured)), np.log10(max(measured))
    tpp = {l.name: float(10 ** rng.uniform(lo, hi)) for l in report.layers}
    return _with_curvatures(report, tpp, {})


def uniform_plan(report: Sensitivity, budget: str) -> Plan | None:
    for bits in sorted(W_BITS, reverse=True):
        try:
            return allocate(report, budget, w_bits=(bits,), a_bits=A_BITS)
        except HawqError:
            continue
    return None


def _finished_rows(path: Path, train: dict, test_images: int) -> dict[str, dict]:
    """Rows of an earlier run with the same schedule and test set, by allocation name."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("train") != train or earlier.get("test_images") != test_images:
        return {}
    return {r["allocation"]: r for r in earlier.get("rows", [])}


def _write_results(path: Path, args: argparse.Namespace, train: dict, test_images: int, rows: list[dict]) -> None:
    write_json(path, {"args": vars(args), "train": train, "test_images": test_images,
                      "float_top1": rows[0]["float_top1"] if rows else None, "rows": rows,
                      "device": torch.cuda.get_device_name() if train["device"] == "cuda" else "cpu",
                      "threads": torch.get_num_threads()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar", default="../shared/data/cifar10")
    ap.add_argument("--weights", default="../shared/models/resnet20-12fca82f.th")
    ap.add_argument("--model", default="resnet20-cifar10")
    ap.add_argument("--budget", default="13x")
    ap.add_argument("--sensitivity", default=None,
                    help="existing sensitivity.json (default: out-dir's if there, else analyze)")
    ap.add_argument("--analysis-batches", type=int, default=1)
    ap.add_argument("--trace-tol", type=float, default=None, help="Hutchinson tolerance (default: the engine's)")
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default: finetune's")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data-fraction", type=float, default=1.0)
    ap.add_argument("--order", default="hawq", choices=["hawq", "single"])
    ap.add_argument("--allocations", default="hessian,reverse,uniform,random")
    ap.add_argument("--random", type=int, default=5, help="how many random allocations")
    ap.add_argument("--test-limit", type=int, default=None, help="smoke runs: first N test images only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="bench_finetune_out")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    loaded = load_model(args.model, args.weights)
    data = load_data(f"cifar10:{args.cifar}", loaded.spec, seed=args.seed)
    if args.test_limit:
        data = dataclasses.replace(data, test=data.test.take(args.test_limit))
    sens_path = Path(args.sensitivity) if args.sensitivity else out / "sensitivity.json"
    if sens_path.is_file():
        report = load_sensitivity(sens_path)
        print(f"sensitivity: reused {sens_path}")
    else:
        t = time.perf_counter()
        options = {} if args.trace_tol is None else {"trace_tol": args.trace_tol}
        report = analyze_model(loaded, data, batches=args.analysis_batches, seed=args.seed, device=args.device,
                               **options)
        save_sensitivity(report, sens_path)
        print(f"sensitivity: {time.perf_counter() - t:.0f} s -> {sens_path}")

    wanted = args.allocations.split(",")
    plans: dict[str, Plan] = {}
    if "hessian" in wanted:
        plans["hessian"] = allocate(report, args.budget, w_bits=W_BITS, a_bits=A_BITS)
    if "reverse" in wanted:
        plans["reverse"] = allocate(reversed_report(report), args.budget, w_bits=W_BITS, a_bits=A_BITS)
    if "uniform" in wanted:
        plan = uniform_plan(report, args.budget)
        if plan is not None:
            plans["uniform"] = plan
    if "random" in wanted:
        for k in range(args.random):
            plans[f"random{k}"] = allocate(random_report(report, args.seed + k), args.budget, w_bits=W_BITS,
                                           a_bits=A_BITS)

    train = {"order": args.order, "epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size,
             "data_fraction": args.data_fraction, "seed": args.seed, "device": args.device}
    if args.lr is not None:
        train["lr"] = args.lr
    results_path = out / "results.json"
    done = _finished_rows(results_path, train, len(data.test))
    rows = []
    for name, plan in plans.items():
        save_plan(plan, out / f"plan.{name}.json")
        bits = {lp.name: lp.w_bits for lp in plan.layers}
        if name in done and done[name]["w_bits"] == bits:
            rows.append(done[name])
            print(f"{name:>9}: reused from {results_path}", flush=True)
            continue
        ptq = finetune(loaded, plan, data, order="ptq", seed=args.seed, device=args.device)
        tuned = finetune(loaded, plan, data, progress=True, **train)
        row = {"allocation": name, "weight_bytes": plan.totals["weight_bytes"], "ratio": plan.totals["ratio"],
               "omega": plan.totals["omega"], "w_bits": bits, "float_top1": tuned.float_accuracy,
               "ptq_top1": ptq.quant_accuracy, "finetuned_top1": tuned.quant_accuracy,
               "finetune_seconds": tuned.seconds, "steps": sum(h["steps"] for h in tuned.history)}
        rows.append(row)
        print(f"{name:>9}: {row['ratio']:.2f}x, {int(row['weight_bytes']):,} B, bits "
              f"{''.join(str(b) for b in bits.values())}: PTQ {100 * row['ptq_top1']:.2f} %, fine-tuned "
              f"{100 * row['finetuned_top1']:.2f} % ({row['steps']} steps, {row['finetune_seconds']:.0f} s)",
              flush=True)
        _write_results(results_path, args, train, len(data.test), rows)

    randoms = [r for r in rows if r["allocation"].startswith("random")]
    summary = {r["allocation"]: r for r in rows if not r["allocation"].startswith("random")}
    if randoms:
        summary["random (median)"] = {
            "allocation": f"random (median of {len(randoms)})",
            "ratio": statistics.median(r["ratio"] for r in randoms),
            "ptq_top1": statistics.median(r["ptq_top1"] for r in randoms),
            "finetuned_top1": statistics.median(r["finetuned_top1"] for r in randoms),
            "finetune_seconds": statistics.median(r["finetune_seconds"] for r in randoms)}
    float_top1 = rows[0]["float_top1"] if rows else float("nan")
    print(f"\nResNet20, budget {args.budget}, 4-bit activations inside, {args.order} order, "
          f"{rows[0]['steps'] if rows else 0} steps, test images {len(data.test)}, "
          f"float top-1 {100 * float_top1:.2f} %")
    print("| allocation | ratio | PTQ top-1 | fine-tuned top-1 | drop | fine-tune time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, r in summary.items():
        print(f"| {key} | {r['ratio']:.2f}x | {100 * r['ptq_top1']:.2f} % | {100 * r['finetuned_top1']:.2f} % | "
              f"{100 * (float_top1 - r['finetuned_top1']):.2f} | {r['finetune_seconds']:.0f} s |")
    _write_results(results_path, args, train, len(data.test), rows)
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
