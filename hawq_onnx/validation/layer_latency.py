"""HAWQ-V3's latency table, measured inside the network on the runtime the model is exported for
(ONNX Runtime's profiler, or OpenVINO's ``PERF_COUNT`` for the ``openvino`` target).

The model is exported whole, once in float and once per input width with every layer at 8-bit
weights (and, where the target stores wide-input 8-bit weights as uint8, once more at 4-bit
weights), post-training calibrated on ``calib_x``; each export runs under its runtime's profiler
(:func:`hawq_onnx.validation.layer_profile.layer_times`,
:func:`hawq_onnx.validation.openvino_runtime.layer_times`). A layer's entry is its kernel
time in that network, plus, for 4-bit inputs, the integer Clip and requantization that make its
input's grid. Timed in isolation the same layers mislead (BENCHMARKS.md, session 14).

Tables are cached per machine (``$HAWQ_ONNX_CACHE`` or ``~/.cache/hawq-onnx``), keyed by the
model's fingerprint, the target, the runtime and its version, the CPU, the threads and the batch size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from hawq_onnx.core import cpu_features, model_inputs
from hawq_onnx.core.layers import LayerInfo, describe_layers
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.latency_table import LatencyTable, choice_key
from hawq_onnx.io.plan import LayerPlan, Plan
from hawq_onnx.validation.layer_profile import layer_times

log = logging.getLogger(__name__)

CACHE_ENV = "HAWQ_ONNX_CACHE"
RUNS = 100
CALIBRATION_SAMPLES = 256


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hawq-onnx") / "latency"


def _uniform_plan(module: nn.Module, infos: Sequence[LayerInfo], fingerprint: str, w_bits: int, a_bits: int,
                  calib_x, float_layer: str | None = None) -> Plan:
    """Every layer at (w_bits, a_bits) but ``float_layer``, post-training calibrated: a network to
    time, not to ship."""
    from hawq_onnx.qat import fake_quant

    plan = Plan("latency-table", fingerprint,
                [LayerPlan(i.name, i.kind, i.params, i.out_channels, i.macs,
                           *((None, None) if i.name == float_layer else (w_bits, a_bits))) for i in infos])
    qmodel = fake_quant.quantize_model(module, plan)
    n = model_inputs.count(calib_x)
    fake_quant.calibrate(qmodel, [model_inputs.as_torch(model_inputs.take(calib_x, slice(i, i + 64)))
                                  for i in range(0, n, 64)])
    return fake_quant.export_plan_scales(qmodel, plan)


def _cache_path(fingerprint: str, target: str, runtime: str, threads: int, batch_size: int,
                entries: Sequence[str]) -> Path:
    blob = json.dumps({"model": fingerprint, "target": target, "runtime": runtime, "threads": threads,
                       "batch": batch_size, "entries": list(entries), "cpu": cpu_features.fingerprint()},
                      sort_keys=True)
    return cache_dir() / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"


def latency_tables(module: nn.Module, input_shape: model_inputs.InputShape, calib_x: model_inputs.Arrays, *,
                   target: str = "ort-cpu", batch_sizes: Sequence[int] = (1, 64), threads: int = 2,
                   w_bits: Sequence[int] = (2, 4, 8), a_bits: Sequence[int] = (4, 8), runs: int = RUNS,
                   use_cache: bool = True) -> list[LatencyTable]:
    """One latency table per batch size for the BN-folded ``module`` exported for ``target``."""
    from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
    from hawq_onnx.onnx_export.qdq import quantize_onnx
    from hawq_onnx.passes.target_profiles import resolve
    from hawq_onnx.sources.model import model_fingerprint
    profile = resolve(target)
    if profile.runtime == "openvino":
        from hawq_onnx.validation.openvino_runtime import describe, layer_times as profile_layers
        runtime_name = describe()
    elif profile.runtime == "onnxruntime":
        profile_layers, runtime_name = layer_times, f"ONNX Runtime {_ort_version()} CPU"
    else:
        raise OptionError(f"{{target}} {target!r} is for no particular runtime: latency tables need an ONNX "
                          "Runtime or OpenVINO target", "target")
    if not batch_sizes or any(b < 1 for b in batch_sizes) or threads < 1 or runs < 1:
        raise OptionError(f"{{latency_batch_sizes}} must be positive and {{threads}}, {{runs}} at least 1 (got "
                          f"{list(batch_sizes)}, {threads}, {runs})", "latency_batch_sizes", "threads", "runs")
    # 8/8 always: the first and last layer are pinned there whatever the candidates.
    entries = list(dict.fromkeys(["float"] + [choice_key(w, a) for w in sorted({*w_bits, 8})
                                              for a in sorted({*a_bits, 8})]))
    variants = {e: (8 if e.startswith("w8") else 4, 8 if e.endswith("a8") else 4) for e in entries if e != "float"}
    if not profile.unsigned_wide_input_weights:  # sub-byte weights run as int8: the same kernels
        variants = {e: bits for e, bits in variants.items() if e.startswith("w8")}
    fingerprint = model_fingerprint(module)
    paths = {bs: _cache_path(fingerprint, profile.name, runtime_name, threads, bs, entries) for bs in batch_sizes}
    cached: dict[int, LatencyTable] = {}
    for bs, path in paths.items():
        if use_cache and path.is_file():
            try:
                cached[bs] = LatencyTable.load(path)
            except HawqError:
                log.warning("the latency table cache %s does not read; measuring again", path)
    missing = [bs for bs in batch_sizes if bs not in cached]
    if missing:
        calib = model_inputs.take(calib_x, slice(0, CALIBRATION_SAMPLES))
        with tempfile.TemporaryDirectory(prefix="hawq-latency-table-") as tmp:
            infos = describe_layers(module, input_shape)
            float_model = float_onnx(module, input_shape)  # exported once, quantized as every network below
            files = {"float": Path(tmp) / "float.onnx"}
            save_onnx(float_model, files["float"])

            def export(name: str, plan: Plan) -> None:
                files[name] = Path(tmp) / f"{len(files)}.onnx"
                save_onnx(quantize_onnx(module, input_shape, plan, calib, target=profile.name,
                                        float_model=float_model).model, files[name])

            for entry, (w, a) in variants.items():
                export(entry, _uniform_plan(module, infos, fingerprint, w, a, calib))
            # One network per layer with only that layer float: what keeping it float costs in
            # place, its boundaries' conversions included.
            for info in infos:
                export(f"float:{info.name}", _uniform_plan(module, infos, fingerprint, 8, 8, calib, float_layer=info.name))
            for bs in missing:
                times = {e: profile_layers(p, batch_size=bs, threads=threads, runs=runs) for e, p in files.items()}
                layers = {}
                base = times["w8a8"]
                for layer in times["float"].layers:
                    entry_ms = {}
                    for e in entries:
                        if e == "float":
                            continue
                        source = e if e in times else "w8" + e[2:]  # ws = w8 where the kernels are the same
                        t = times[source]
                        if layer not in t.layers:
                            raise HawqError(f"layer {layer} was not found in the {source} network's profile")
                        entry_ms[e] = t.layers[layer] + t.inputs.get(layer, 0.0)
                    alone = times[f"float:{layer}"]
                    entry_ms["float"] = max(0.0, entry_ms["w8a8"] + alone.nodes_ms - base.nodes_ms)
                    layers[layer] = entry_ms
                table = LatencyTable(runtime=runtime_name, target=profile.name,
                                     machine=cpu_features.describe(), threads=threads, batch_size=bs, layers=layers,
                                     float_total_ms=times["float"].nodes_ms,
                                     rest_ms=base.nodes_ms - base.layers_ms - sum(base.inputs.values()))
                cached[bs] = table
                if use_cache:
                    try:
                        table.save(paths[bs])
                    except OSError as exc:
                        log.warning("could not cache the latency table (%s)", exc)
    return [cached[bs] for bs in batch_sizes]


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
