"""One fine-tuning recipe over several seeds: the spread a single run of it can land in.

    python benchmarks/bench_seeds.py --plan runs/r20/plan.json --seeds 0,1,2 --order single \\
        --epochs 12 --lr 3e-4 [--onnx] [--device cuda] [--out-dir bench_seeds_out]

ResNet20 (the shared checkpoint) on CIFAR-10 by default. For each seed the plan is fine-tuned
exactly as ``hawq-onnx finetune --seed K`` does (same data split, same defaults), and the
checkpoint and calibrated plan go to ``--out-dir/seedK/``. With ``--onnx`` each checkpoint is
also exported (``ort-cpu``, as ``hawq-onnx export --quantized``) and its top-1 measured under
ONNX Runtime on the test split. The summary gives each seed's drop from the float model, their
mean, sample standard deviation and range, and how many runs are inside ``--goal`` points.

``results.json`` is rewritten after every seed; a rerun with the same recipe, plan and test set
reuses the seeds already done, so more seeds can be added later or an interrupted run resumed.
One run of the paper row (12 epochs) takes about an hour on two CPU cores: judge a recipe change
by several seeds, not one (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.io.atomic import sha256_file, write_json
from hawq_onnx.io.plan import load_plan, save_plan
from hawq_onnx.onnx_export.float_onnx import save_onnx
from hawq_onnx.onnx_export.qdq import export_plan
from hawq_onnx.qat.checkpoint import save_quantized
from hawq_onnx.qat.finetune import finetune
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model, model_fingerprint
from hawq_onnx.validation.ort_eval import accuracy, model_io, open_session, predict


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' (inclusive) or a mix: '0-2,7'."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: give distinct integers, e.g. 0,1,2 or 0-4")
    return seeds


def _done_rows(path: Path, recipe: dict) -> dict[int, dict]:
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    return {r["seed"]: r for r in old.get("runs", [])} if old.get("recipe") == recipe else {}


def onnx_top1(args: argparse.Namespace, quantized: Path, out: Path, data) -> float:
    """Export the checkpoint as ``hawq-onnx export --quantized`` does and score it under ONNX Runtime."""
    exported = export_plan(args.model, args.weights, None, None, quantized, data=f"cifar10:{args.cifar}")
    save_onnx(exported.model, out)
    session = open_session(out, threads=args.threads or torch.get_num_threads())
    logits = predict(session, model_io(session, out), data.test.x)
    return accuracy(logits, data.test.y, data.num_classes).top1


def summarise(runs: list[dict], float_top1: float, key: str, goal: float) -> str:
    drops = [100 * (float_top1 - r[key]) for r in runs if r.get(key) is not None]
    if not drops:
        return ""
    sd = f"{statistics.stdev(drops):.2f}" if len(drops) > 1 else "n/a"
    inside = sum(d <= goal + 1e-9 for d in drops)
    return (f"{key}: drop mean {statistics.mean(drops):.2f}, sd {sd}, range {min(drops):.2f} .. {max(drops):.2f} "
            f"points; {inside}/{len(drops)} runs within {goal:g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar", default="../shared/data/cifar10")
    ap.add_argument("--weights", default="../shared/models/resnet20-12fca82f.th")
    ap.add_argument("--model", default="resnet20-cifar10")
    ap.add_argument("--plan", required=True, help="plan.json from allocate (bits only are used)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--order", default="single", choices=["hawq", "single"])
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default: finetune's")
    ap.add_argument("--step-lr", type=float, default=None,
                    help="quantized weights' peak lr in units of their step (finetune --step-lr)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--distill-weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--onnx", action="store_true", help="also export each run and score it under ONNX Runtime")
    ap.add_argument("--goal", type=float, default=0.5, help="points of top-1 a run may lose")
    ap.add_argument("--test-limit", type=int, default=None, help="smoke runs: first N test images only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default="bench_seeds_out")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    loaded = load_model(args.model, args.weights)
    plan = load_plan(args.plan, model_fingerprint(fold_copy(loaded.module, loaded.input_shape)))
    recipe = {"model": args.model, "plan_sha256": sha256_file(args.plan), "order": args.order,
              "epochs": args.epochs, "steps": args.steps, "lr": args.lr, "step_lr": args.step_lr,
              "batch_size": args.batch_size,
              "distill_weight": args.distill_weight, "temperature": args.temperature, "device": args.device,
              "test_limit": args.test_limit, "onnx": args.onnx}
    results_path = out / "results.json"
    done = _done_rows(results_path, recipe)
    runs: list[dict] = []
    float_top1 = None
    for seed in seeds:
        if seed in done:
            runs.append(done[seed])
            float_top1 = done[seed]["float_top1"]
            print(f"seed {seed}: reused from {results_path}", flush=True)
            continue
        # As `hawq-onnx finetune --seed K`: the seed also picks the calibration split.
        data = load_data(f"cifar10:{args.cifar}", loaded.spec, seed=seed)
        if args.test_limit:
            data = dataclasses.replace(data, test=data.test.take(args.test_limit))
        result = finetune(loaded, plan, data, order=args.order, epochs=args.epochs, steps=args.steps, lr=args.lr,
                          step_lr=args.step_lr,
                          batch_size=args.batch_size, distill_weight=args.distill_weight,
                          temperature=args.temperature, seed=seed, device=args.device, progress=True)
        folder = out / f"seed{seed}"
        quantized = save_quantized(result, folder / "quantized.pt")
        save_plan(result.plan, folder / "quantized.plan.json")
        row = {"seed": seed, "float_top1": result.float_accuracy, "fake_quant_top1": result.quant_accuracy,
               "onnx_top1": None, "steps": sum(h["steps"] for h in result.history),
               "finetune_seconds": result.seconds}
        if args.onnx:
            t = time.perf_counter()
            row["onnx_top1"] = onnx_top1(args, quantized, folder / "model.qdq.onnx", data)
            row["export_and_eval_seconds"] = time.perf_counter() - t
        float_top1 = result.float_accuracy
        runs.append(row)
        onnx = f", ONNX Runtime {100 * row['onnx_top1']:.2f} %" if row["onnx_top1"] is not None else ""
        print(f"seed {seed}: fake-quant {100 * row['fake_quant_top1']:.2f} %{onnx} (float "
              f"{100 * float_top1:.2f} %, {row['steps']} steps, {row['finetune_seconds']:.0f} s)", flush=True)
        write_json(results_path, {"recipe": recipe, "runs": sorted({**done, **{r['seed']: r for r in runs}}.values(),
                                                                   key=lambda r: r["seed"])})

    print(f"\n{args.model}, plan {args.plan}, {args.order} order, seeds {args.seeds}, float top-1 "
          f"{100 * float_top1:.2f} %")
    print("| seed | fake-quant top-1 | drop | ONNX Runtime top-1 | drop | fine-tune time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in runs:
        ort_cells = (f"{100 * r['onnx_top1']:.2f} % | {100 * (float_top1 - r['onnx_top1']):.2f}"
                     if r.get("onnx_top1") is not None else "- | -")
        print(f"| {r['seed']} | {100 * r['fake_quant_top1']:.2f} % | {100 * (float_top1 - r['fake_quant_top1']):.2f} | "
              f"{ort_cells} | {r['finetune_seconds']:.0f} s |")
    for key in ("fake_quant_top1", "onnx_top1"):
        line = summarise(runs, float_top1, key, args.goal)
        if line:
            print(line)
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
