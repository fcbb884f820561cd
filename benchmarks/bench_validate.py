"""Validate float against ONNX Runtime's int8 on the digits CNN (and ResNet20 where ../shared has it),
and compare latency protocols: the shared global pool that `validate` uses, per-session pools
interleaved in one process, and each model alone in its own process.

    python benchmarks/bench_validate.py [--out runs/bench_validate] [--runs 200] [--resnet20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model
from hawq_onnx.validation.latency import measure_latency
from hawq_onnx.validation.ort_baseline import ort_int8
from hawq_onnx.validation.ort_eval import file_io
from hawq_onnx.validation.validate import validate

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _export(ref: str, weights: str | None, data: str, out: Path) -> tuple[Path, Path, str]:
    loaded = load_model(ref, weights)
    fold_batchnorm(loaded.module, loaded.spec.input_shape)
    f, q = out / f"{ref}.float.onnx", out / f"{ref}.ort-int8.onnx"
    save_onnx(float_onnx(loaded.module, loaded.spec.input_shape), f)
    ort_int8(f, load_data(data, loaded.spec).calib, q, file_io(f))
    return f, q, data


PER_SESSION = r"""
import json, sys, time, numpy as np, onnxruntime as ort
paths, bs, threads, runs, warmup = json.loads(sys.argv[1])
x = np.load(sys.argv[2])[:bs]
sess = []
for p in paths:
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    sess.append(ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]))
name = sess[0].get_inputs()[0].name
for _ in range(warmup):
    for s in sess: s.run(None, {name: x})
t = [[] for _ in sess]
for _ in range(runs):
    for i, s in enumerate(sess):
        a = time.perf_counter_ns(); s.run(None, {name: x}); t[i].append((time.perf_counter_ns() - a) / 1e6)
print(json.dumps([float(np.median(v)) for v in t]))
"""


def _per_session(paths: list[Path], x_file: Path, bs: int, threads: int, runs: int, warmup: int) -> list[float]:
    arg = json.dumps([[str(p) for p in paths], bs, threads, runs, warmup])
    out = subprocess.run([sys.executable, "-c", PER_SESSION, arg, str(x_file)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def protocols(f: Path, q: Path, x: np.ndarray, out: Path, threads: int, runs: int, warmup: int) -> None:
    x_file = out / "x.npy"
    np.save(x_file, x[:64])
    for bs in (1, 64):
        shared = measure_latency({"float": f, "quant": q}, x, batch_sizes=(bs,), threads=threads, runs=runs,
                                 warmup=warmup)
        g = [shared.models[k][bs].median_ms for k in ("float", "quant")]
        p = _per_session([f, q], x_file, bs, threads, runs, warmup)
        alone = [_per_session([m], x_file, bs, threads, runs, warmup)[0] for m in (f, q)]
        print(f"  batch {bs:>2}: median ms float / int8 (speed-up)")
        for name, (a, b) in (("global pool, interleaved (validate)", g), ("per-session pools, interleaved", p),
                             ("each alone in its own process", alone)):
            print(f"    {name:<38} {a:8.3f} / {b:8.3f}  ({a / b:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_validate")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resnet20", action="store_true", help="also ResNet20 on CIFAR-10 from ../shared")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [("digits-cnn", None, "digits", "digits-cnn")]
    if args.resnet20:
        cases.append(("resnet20-cifar10", str(SHARED / "models" / "resnet20-12fca82f.th"),
                      f"cifar10:{SHARED / 'data' / 'cifar10'}", "resnet20-cifar10"))
    for ref, weights, data, model in cases:
        f, q, data = _export(ref, weights, data, out)
        start = time.perf_counter()
        r = validate(f, q, data, model_ref=model, threads=args.threads, runs=args.runs, warmup=args.warmup)
        took = time.perf_counter() - start
        fl, qu = r.float, r.quantized
        print(f"{ref}: {r.samples} test samples, validate took {took:.1f} s")
        print(f"  top-1 float {100 * fl.accuracy.top1:.2f} %, ort-int8 {100 * qu.accuracy.top1:.2f} % "
              f"(drop {qu.drop_points:+.2f} pts, agreement {100 * qu.agreement:.2f} %)")
        print(f"  file bytes {fl.file_bytes:,} -> {qu.file_bytes:,} ({qu.size_ratio:.3f}x); "
              f"integer kernels {qu.census.integer_kernels} ({qu.census.count('integer')}/{len(qu.census.layers)} layers)")
        for bs in r.latency.batch_sizes:
            print(f"  batch {bs}: float {fl.latency[bs].median_ms:.3f} ms (p90 {fl.latency[bs].p90_ms:.3f}), "
                  f"int8 {qu.latency[bs].median_ms:.3f} ms (p90 {qu.latency[bs].p90_ms:.3f}): "
                  f"speed-up {qu.speedup[bs]:.2f}x")
        print("  latency protocols:")
        protocols(f, q, load_data(data, load_model(ref, weights).spec).test.x, out, args.threads, args.runs,
                  args.warmup)


if __name__ == "__main__":
    main()
