"""Each layer's kernel time inside the running network, float against int8 (ONNX Runtime's profiler).

    python benchmarks/bench_layer_times.py [--model digits-cnn] [--weights W] [--data digits]
        [--batch-sizes 1,64] [--threads 2] [--runs 200] [--target ort-cpu] [--out-dir runs/bench_layer_times]

The float export, and the model with every layer at 8-bit weights and 8-bit inputs, then 4-bit
inputs (first and last layer 8/8), post-training calibrated on the calibration split, exported
for --target. Per batch size: each layer's median kernel time in each network
(``hawq_onnx.validation.layer_profile.layer_times``), the nodes that run no layer summed by
operator, the 4-bit inputs' Clips and requantizations (attributed to the layer they feed), and the
profiled run's median wall time. The groundwork of a latency budget: which
layers are faster as integer kernels, and what the rest of the graph adds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hawq_onnx.core import cpu_features
from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.core.layers import describe_layers
from hawq_onnx.io.atomic import write_json
from hawq_onnx.io.plan import LayerPlan, Plan
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
from hawq_onnx.onnx_export.qdq import quantize_onnx
from hawq_onnx.qat import fake_quant
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model, model_fingerprint
from hawq_onnx.validation.layer_profile import layer_times

ROOT = Path(__file__).resolve().parents[1]


def uniform_plan(folded, shape, name: str, a_bits: int, calib_x) -> Plan:
    infos = describe_layers(folded, shape)
    ends = {infos[0].name, infos[-1].name}
    plan = Plan(name, model_fingerprint(folded), [
        LayerPlan(i.name, i.kind, i.params, i.out_channels, i.macs, 8, 8 if i.name in ends else a_bits) for i in infos])
    qmodel = fake_quant.quantize_model(folded, plan)
    fake_quant.calibrate(qmodel, [torch.from_numpy(calib_x[i:i + 128]) for i in range(0, len(calib_x), 128)])
    return fake_quant.export_plan_scales(qmodel, plan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits-cnn")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--target", default="ort-cpu")
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "bench_layer_times"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model, args.weights)
    shape = loaded.input_shape
    folded = fold_copy(loaded.module, shape)
    calib = load_data(args.data, loaded.spec).calib.x
    paths = {"float": out / "float.onnx"}
    save_onnx(float_onnx(folded, shape), paths["float"])
    targets = set()
    for a in (8, 4):
        exported = quantize_onnx(folded, shape, uniform_plan(folded, shape, args.model, a, calib), calib,
                                 target=args.target)
        targets.add(exported.target)
        paths[f"w8a{a}"] = out / f"w8a{a}.onnx"
        save_onnx(exported.model, paths[f"w8a{a}"])

    print(f"\n{args.model}, {cpu_features.describe()}, {args.threads} threads, target {', '.join(sorted(targets))}, "
          f"ONNX Runtime (ORT_ENABLE_ALL, profiler on), medians over {args.runs} runs")
    results = {}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        times = {k: layer_times(p, batch_size=bs, threads=args.threads, runs=args.runs) for k, p in paths.items()}
        results[bs] = {k: t.to_json() for k, t in times.items()}
        print(f"\nbatch {bs}\n")
        print("| layer | " + " | ".join(f"{k} ms" for k in times) + " | w8a8 / float |")
        print("| --- | " + " | ".join("---:" for _ in times) + " | ---: |")
        for layer in times["float"].layers:
            row = [times[k].layers.get(layer) for k in times]
            ratio = row[1] / row[0] if row[0] and row[1] else float("nan")
            print(f"| {layer} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in row) + f" | {ratio:.2f} |")
        print("| all layers | " + " | ".join(f"{t.layers_ms:.4f}" for t in times.values()) + " | |")
        for k, t in times.items():
            other = ", ".join(f"{op} {ms:.4f}" for op, ms in sorted(t.other.items(), key=lambda kv: -kv[1]))
            inputs = f"; 4-bit input grids (Clips, requantizations) {sum(t.inputs.values()):.4f} ms" if t.inputs else ""
            print(f"\n{k}: other nodes {sum(t.other.values()):.4f} ms ({other}){inputs}; nodes {t.nodes_ms:.4f} ms; "
                  f"profiled run {t.run_ms:.4f} ms")
    write_json(out / "bench_layer_times.json", {"results": json.loads(json.dumps(results)), "argv": sys.argv[1:],
                                               "cpu": cpu_features.describe()})


if __name__ == "__main__":
    main()
