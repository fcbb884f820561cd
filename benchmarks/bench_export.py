"""ResNet20 at 13x: file bytes and ONNX Runtime CPU latency of the mixed-precision QDQ export.

    python benchmarks/bench_export.py [--weights ../shared/models/resnet20-12fca82f.th]
        [--data cifar10:../shared/data/cifar10] [--quantized quantized.pt | --plan plan.json]
        [--threads 2] [--runs 50] [--eval 10000] [--out-dir runs/bench_export]

Models, all from the same BN-folded float ResNet20:
- ``float``: ``export.float_onnx``;
- ``ort-int8``: ONNX Runtime's own ``quantize_static`` (QDQ, uint8 activations, int8 per-channel
  weights, MinMax on the calibration split), made before any global thread pool exists;
- ``hawq-a8`` / ``hawq-a4``: ``hawq-onnx export --target ort-cpu`` of a 13x plan (weights 2/4/8:
  first conv and linear 8-bit, layer3 + layer1.0.conv1 + layer2.0.conv1 2-bit, the rest 4-bit;
  activations 8-bit, or 4-bit inside with 8-bit first and last layer). Without --quantized or
  --plan the plan is this fixed pattern, post-training calibrated (observers on the calibration
  split, MSE weight scales): its accuracy is PTQ's at 2 bits, not HAWQ's fine-tuned figure.
  With --quantized (a finetune checkpoint) its weights and calibrated plan are used instead.

Latency: ``hawq_onnx.validation.latency.measure_latency`` (FACTS.md's protocol): one process-wide pool of
--threads threads shared by all sessions in a child process, warm-up, then runs interleaved
model by model, medians per batch size. The machine may be shared: ratios are side by side,
absolute times drift.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.core.layers import describe_layers
from hawq_onnx.core.onnx_inspect import inspect_onnx, tensor_bytes
from hawq_onnx.io.atomic import write_json
from hawq_onnx.io.plan import LayerPlan, Plan, load_plan
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
from hawq_onnx.onnx_export.qdq import quantize_onnx
from hawq_onnx.qat import fake_quant
from hawq_onnx.qat.region_grids import reference_model
from hawq_onnx.qat.checkpoint import restore_quantized
from hawq_onnx.qat.finetune import predict_scores
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model, model_fingerprint
from hawq_onnx.validation.kernel_census import is_integer_op
from hawq_onnx.validation.latency import measure_latency
from hawq_onnx.validation.ort_baseline import ort_int8
from hawq_onnx.validation.ort_eval import agreement, file_io, logit_error_steps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TWO_BIT = ("layer1.0.conv1", "layer2.0.conv1")


def bits_13x(name: str, a_bits: int) -> tuple[int, int]:
    if name in ("conv1", "linear"):
        return 8, 8
    if name.startswith("layer3") or name in TWO_BIT:
        return 2, a_bits
    return 4, a_bits


def ptq_plan(folded: torch.nn.Module, input_shape, a_bits: int, calib_x: np.ndarray, plan: Plan | None = None) -> Plan:
    if plan is None:
        infos = describe_layers(folded, input_shape)
        plan = Plan("resnet20-cifar10", model_fingerprint(folded),
                    [LayerPlan(i.name, i.kind, i.params, i.out_channels, i.macs, *bits_13x(i.name, a_bits))
                     for i in infos])
    qmodel = fake_quant.quantize_model(folded, plan)
    fake_quant.calibrate(qmodel, [torch.from_numpy(calib_x[i:i + 128]) for i in range(0, len(calib_x), 128)])
    return fake_quant.export_plan_scales(qmodel, plan)


def resnet20(weights: str, data: str):
    """The shared checkpoint, BN-folded, and its data: (loaded model, input shape, folded module, dataset)."""
    loaded = load_model("resnet20-cifar10", weights)
    folded = fold_copy(loaded.module, loaded.input_shape)
    return loaded, loaded.input_shape, folded, load_data(data, loaded.spec)


def weight_bytes(path: Path) -> int:
    """Bytes of the layers' weight tensors as stored (packed), found by `inspect` through DQ/Cast chains."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    return sum(tensor_bytes(inits[row.weight]) for row in inspect_onnx(model).layers if row.weight in inits)


def ort_scores(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def top1(path: Path, x: np.ndarray, y: np.ndarray, threads: int) -> float:
    return float(np.mean(ort_scores(path, x, threads).argmax(1) == y))


def integer_census(path: Path, out_dir: Path) -> dict[str, int]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out_dir / f"{path.stem}.optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {"integer": sum(c for op, c in ops.items() if is_integer_op(op)),
            "float Conv/Gemm/MatMul": ops["Conv"] + ops["Gemm"] + ops["MatMul"] + ops["FusedConv"],
            **{op: c for op, c in sorted(ops.items()) if is_integer_op(op)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHARED / "models" / "resnet20-12fca82f.th"))
    ap.add_argument("--data", default=f"cifar10:{SHARED / 'data' / 'cifar10'}")
    ap.add_argument("--quantized", default=None, help="finetune checkpoint: its weights and calibrated plan")
    ap.add_argument("--plan", default=None, help="plan.json (calibrated, or calibrated here post-training)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--eval", type=int, default=10000, help="test images for top-1")
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "bench_export"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    loaded, shape, folded, data = resnet20(args.weights, args.data)
    x_test, y_test = data.test.x[:args.eval], data.test.y[:args.eval]

    paths = {"float": out_dir / "model.float.onnx", "ort-int8": out_dir / "model.int8.onnx"}
    save_onnx(float_onnx(folded, shape), paths["float"])
    # ORT's quantizer opens its own sessions: run it before any global thread pool exists.
    ort_int8(paths["float"], data.calib, paths["ort-int8"], file_io(paths["float"]))

    variants: dict[str, tuple[torch.nn.Module, Plan, str]] = {}
    if args.quantized:
        tuned, plan = restore_quantized(loaded, args.quantized)
        variants["hawq"] = (tuned, plan, f"fine-tuned checkpoint {args.quantized}")
    elif args.plan:
        plan = load_plan(args.plan, model_fingerprint(folded))
        if not plan.calibrated:
            plan = ptq_plan(folded, shape, 0, data.calib.x, plan)
        variants["hawq"] = (folded, plan, f"plan {args.plan}")
    else:
        for a in (8, 4):
            variants[f"hawq-a{a}"] = (folded, ptq_plan(folded, shape, a, data.calib.x),
                                      f"fixed 13x pattern, {a}-bit activations inside, post-training calibrated")
    exports = {}
    for label, (module, plan, source) in variants.items():
        start = time.perf_counter()
        exported = quantize_onnx(module, shape, plan, data.calib.x)
        seconds = time.perf_counter() - start
        paths[label] = out_dir / f"model.{label}.onnx"
        save_onnx(exported.model, paths[label])
        # The file against two PyTorch references: the plan alone, and the plan as exported (with
        # the grids the file adds between layers, hawq_onnx.qat.region_grids).
        refs = {name: predict_scores(reference_model(module, p), x_test, batch_size=500)
                for name, p in (("plan", plan), ("exported_plan", exported.plan))}
        logits = ort_scores(paths[label], x_test, args.threads)
        ratio = sum(lp.params * 32 for lp in plan.layers) / sum(lp.params * (lp.w_bits or 32) for lp in plan.layers)
        exports[label] = {"source": source, "export_s": round(seconds, 2), "bits": exported.bits_histogram(),
                          "nominal_ratio": round(ratio, 2), "opset": exported.opset,
                          "region_grids": len(exported.plan.region_grids),
                          "fake_quant_top1": float(np.mean(refs["exported_plan"].argmax(1) == y_test)),
                          "agreement": {name: {"top1": agreement(logits, ref), "p99_steps": logit_error_steps(logits, ref)}
                                        for name, ref in refs.items()}}

    float_weight_bytes = weight_bytes(paths["float"])
    rows = {}
    for label, path in paths.items():
        rows[label] = {"file_bytes": path.stat().st_size, "weight_bytes": weight_bytes(path),
                       "top1": top1(path, x_test, y_test, args.threads), "kernels": integer_census(path, out_dir)}
        rows[label]["weight_fraction"] = rows[label]["weight_bytes"] / float_weight_bytes

    latency = measure_latency({k: str(v) for k, v in paths.items()}, data.test.x[:64], batch_sizes=(1, 64),
                              threads=args.threads, runs=args.runs)
    for label in paths:
        rows[label]["latency_ms"] = {bs: latency.models[label][bs].median_ms for bs in (1, 64)}
        rows[label]["speedup_vs_float"] = {bs: latency.speedup(label, "float", bs) for bs in (1, 64)}
        rows[label]["speedup_vs_int8"] = {bs: latency.speedup(label, "ort-int8", bs) for bs in (1, 64)}

    print(f"\nResNet20, {len(x_test)} test images; {latency.protocol}\n")
    print("| model | file bytes | weight bytes (x float) | top-1 | integer kernels | float layers "
          "| ms b1 | ms b64 | vs float b1 / b64 | vs ort-int8 b1 / b64 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, r in rows.items():
        print(f"| {label} | {r['file_bytes']:,} | {r['weight_bytes']:,} (1/{1 / r['weight_fraction']:.1f}) "
              f"| {100 * r['top1']:.2f} % | {r['kernels']['integer']} | {r['kernels']['float Conv/Gemm/MatMul']} "
              f"| {r['latency_ms'][1]:.3f} | {r['latency_ms'][64]:.2f} "
              f"| {r['speedup_vs_float'][1]:.2f}x / {r['speedup_vs_float'][64]:.2f}x "
              f"| {r['speedup_vs_int8'][1]:.2f}x / {r['speedup_vs_int8'][64]:.2f}x |")
    for label, e in exports.items():
        print(f"\n{label}: {e['source']}; {e['bits']}; nominal weight compression {e['nominal_ratio']}x; "
              f"opset {e['opset']}; export {e['export_s']} s; "
              f"PyTorch fake-quant top-1 {100 * e['fake_quant_top1']:.2f} %")
        for name, a in e["agreement"].items():
            print(f"  ONNX Runtime against the fake-quant model of the {name.replace('_', ' ')}: same top-1 on "
                  f"{100 * a['top1']:.2f} %, 99th-percentile logit error {a['p99_steps']:.3g} steps"
                  + (f" ({e['region_grids']} region grids)" if name == "exported_plan" else ""))
    write_json(out_dir / "bench_export.json", {"rows": json.loads(json.dumps(rows, default=str)), "exports": exports,
                                              "latency": latency.to_json(), "argv": sys.argv[1:]})


if __name__ == "__main__":
    main()
