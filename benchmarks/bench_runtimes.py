"""ResNet20 on both CPU runtimes: our export profiles against ONNX Runtime's and NNCF's int8 (issue 27).

    python benchmarks/bench_runtimes.py [--weights ../shared/models/resnet20-12fca82f.th]
        [--data cifar10:../shared/data/cifar10] [--quantized quantized.pt] [--eval 2000]
        [--runs 30] [--threads 2] [--out-dir runs/bench_runtimes]

Models, all from the same BN-folded float ResNet20:
- ``float``; ``ort-int8`` (ONNX Runtime's ``quantize_static``: QDQ, U8S8 per channel, MinMax);
  ``nncf-int8`` (NNCF's ``quantize`` with its ONNX backend, 300 calibration samples) where nncf
  imports: it is a benchmark-only tool, not a dependency of hawq-onnx;
- ours, each plan exported for ``ort-vnni``, ``ort-avx2`` and ``openvino``: the fixed 13x weight
  pattern of bench_export.py with 8-bit and with 4-bit activations, and a 4/8-bit-weight plan
  (layer1, layer2, first and last layer 8-bit, layer3 4-bit; 8-bit activations: the file of the
  issue whose uint8 weights were slow on VNNI). Post-training calibrated (their top-1 is PTQ's at
  2 bits); with --quantized, that fine-tuned checkpoint's plan replaces the 13x patterns.

Measured: file bytes and the issue's size bound (weight bits / 8 + 4 bytes of scale per output
channel + 8 KB); top-1 on --eval test images under ONNX Runtime and under OpenVINO (f32
precision hint); latency under each runtime with ``hawq_onnx.validation.latency`` (interleaved
rounds; ONNX Runtime: one shared pool; OpenVINO: --threads per compiled model), speed-ups against
the float model under the same runtime. A file a runtime cannot load is reported as such.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_export  # noqa: E402  (the 13x pattern and its post-training plan)

from hawq_onnx.core import cpu_features  # noqa: E402
from hawq_onnx.core.grid import storage_bytes  # noqa: E402
from hawq_onnx.errors import HawqError  # noqa: E402
from hawq_onnx.io.atomic import write_json  # noqa: E402
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx  # noqa: E402
from hawq_onnx.onnx_export.qdq import quantize_onnx  # noqa: E402
from hawq_onnx.qat.checkpoint import restore_quantized  # noqa: E402
from hawq_onnx.validation import openvino_runtime  # noqa: E402
from hawq_onnx.validation.latency import measure_latency  # noqa: E402
from hawq_onnx.validation.ort_baseline import ort_int8  # noqa: E402
from hawq_onnx.validation.ort_eval import file_io  # noqa: E402

SHARED = bench_export.SHARED
TARGETS = ("ort-vnni", "ort-avx2", "openvino")
NNCF_SUBSET = 300


def bits_w48(name: str, a_bits: int) -> tuple[int, int]:
    if name in ("conv1", "linear") or name.startswith(("layer1", "layer2")):
        return 8, 8
    return 4, 8


def nncf_int8(float_path: Path, calib_x: np.ndarray, out: Path) -> Path | None:
    try:
        import nncf
    except ImportError:
        return None
    model = onnx.load(str(float_path))
    name = model.graph.input[0].name
    dataset = nncf.Dataset([calib_x[i:i + 1] for i in range(min(NNCF_SUBSET, len(calib_x)))], lambda x: {name: x})
    onnx.save(nncf.quantize(model, dataset, subset_size=NNCF_SUBSET), str(out))
    return out


def size_bound(plan) -> int:
    """The issue's bound: weight bits / 8, 4 bytes of scale per output channel, 8 KB."""
    return sum(storage_bytes(lp.params, lp.w_bits or 32) + 4 * lp.out_channels for lp in plan.layers) + 8192


def top1_openvino(path: Path, x: np.ndarray, y: np.ndarray, threads: int) -> float | str:
    try:
        session = openvino_runtime.open_session(path, threads)
    except HawqError as exc:
        return "INT2" if "INT2" in str(exc) else str(exc).split(": ", 1)[-1][:40]
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    return float(np.mean(logits.argmax(1) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(SHARED / "models" / "resnet20-12fca82f.th"))
    ap.add_argument("--data", default=f"cifar10:{SHARED / 'data' / 'cifar10'}")
    ap.add_argument("--quantized", default=None, help="finetune checkpoint: its plan replaces the 13x patterns")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--eval", type=int, default=2000, help="test images for top-1")
    ap.add_argument("--out-dir", default=str(bench_export.ROOT / "runs" / "bench_runtimes"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    loaded, shape, folded, data = bench_export.resnet20(args.weights, args.data)
    x, y = data.test.x[:args.eval], data.test.y[:args.eval]

    paths: dict[str, Path] = {"float": out / "float.onnx", "ort-int8": out / "ort-int8.onnx"}
    save_onnx(float_onnx(folded, shape), paths["float"])
    ort_int8(paths["float"], data.calib, paths["ort-int8"], file_io(paths["float"]))  # before any global pool
    if nncf_int8(paths["float"], data.calib.x, out / "nncf-int8.onnx") is not None:
        paths["nncf-int8"] = out / "nncf-int8.onnx"

    plans = {}
    if args.quantized:
        tuned, plan = restore_quantized(loaded, args.quantized)
        plans["tuned"] = (tuned, plan)
    else:
        for a in (8, 4):
            plans[f"13x-a{a}"] = (folded, bench_export.ptq_plan(folded, shape, a, data.calib.x))
    original = bench_export.bits_13x
    bench_export.bits_13x = bits_w48  # ptq_plan reads the pattern from there
    try:
        plans["w48-a8"] = (folded, bench_export.ptq_plan(folded, shape, 8, data.calib.x))
    finally:
        bench_export.bits_13x = original
    bounds = {}
    for label, (module, plan) in plans.items():
        for target in TARGETS:
            key = f"{label} {target}"
            paths[key] = out / f"{label}.{target}.onnx"
            save_onnx(quantize_onnx(module, shape, plan, data.calib.x, target=target).model, paths[key])
            bounds[key] = size_bound(plan)

    rows = {k: {"bytes": p.stat().st_size, "bound": bounds.get(k), "top1_ort": bench_export.top1(p, x, y, args.threads),
                "top1_openvino": top1_openvino(p, x, y, args.threads)} for k, p in paths.items()}
    pool = x[:64]
    loadable = {"ort": dict(paths), "openvino": {k: p for k, p in paths.items()
                                                 if not isinstance(rows[k]["top1_openvino"], str)}}
    latency = {}
    for runtime, models in loadable.items():
        latency[runtime] = measure_latency({k: str(v) for k, v in models.items()}, pool, batch_sizes=(1, 64),
                                           threads=args.threads, runs=args.runs, runtime=runtime)
        for k in models:
            rows[k][f"{runtime}_speedup"] = {b: latency[runtime].speedup(k, "float", b) for b in (1, 64)}
            rows[k][f"{runtime}_ms"] = {b: latency[runtime].models[k][b].median_ms for b in (1, 64)}

    print(f"\nResNet20, {len(x)} test images; {platform.processor() or platform.machine()}, "
          f"{cpu_features.describe()}; {args.threads} threads")
    for runtime, result in latency.items():
        print(f"- {runtime}: {result.protocol}")
    print("\n| model | bytes | of bound | top-1 ORT | top-1 OpenVINO | ORT b1 | ORT b64 | OpenVINO b1 | OpenVINO b64 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def pct(v) -> str:
        return f"{100 * v:.2f} %" if isinstance(v, float) else f"does not load ({v})"

    def speed(r, runtime, b) -> str:
        s = r.get(f"{runtime}_speedup")
        return "-" if s is None else f"{s[b]:.2f}x"

    for k, r in rows.items():
        of_bound = "-" if r["bound"] is None else f"{r['bytes'] / r['bound']:.3f}"
        print(f"| {k} | {r['bytes']:,} | {of_bound} | {pct(r['top1_ort'])} | {pct(r['top1_openvino'])} "
              f"| {speed(r, 'ort', 1)} | {speed(r, 'ort', 64)} | {speed(r, 'openvino', 1)} | {speed(r, 'openvino', 64)} |")
    write_json(out / "bench_runtimes.json", {"rows": json.loads(json.dumps(rows, default=str)),
                                            "latency": {k: v.to_json() for k, v in latency.items()},
                                            "cpu": cpu_features.describe(), "argv": sys.argv[1:]})


if __name__ == "__main__":
    main()
