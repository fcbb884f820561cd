"""Why a quantized model runs slower than its float model, where the graph can tell.

Integer kernels save arithmetic but add fixed work: converting tensors between float and
integers, requantizing between kernels, clipping sub-8-bit activations to their range. On a small
model or a short run that fixed work outweighs the saving. These causes are read from ONNX
Runtime's optimized graph (:mod:`hawq_onnx.validation.kernel_census`) and the file's layers, not
guessed from the timings.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hawq_onnx.core.onnx_inspect import Inspection
from hawq_onnx.validation.kernel_census import KernelCensus

# Below this a float run is so short that per-kernel fixed costs are a visible share of it.
SHORT_RUN_MS = 1.0


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool | None:
    """Whether this CPU has VNNI dot-product instructions (None: cannot tell, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


def slowdown_reasons(census: KernelCensus, float_census: KernelCensus, inspection: Inspection,
                     float_median_ms: float, batch_size: int) -> list[str]:
    """Plain-language causes, most decisive first; a fallback line when none is visible."""
    reasons = []
    layers = len(census.layers)
    emulated, in_float = census.count("emulated"), census.count("float")
    if emulated:
        reasons.append(f"{emulated} of {layers} layers run emulated: ONNX Runtime expands their low-bit weights to "
                       "float on every run and then runs the float operator, more work than the float model does")
    if in_float:
        reasons.append(f"{in_float} of {layers} layers run in float, with conversions to and from integers "
                       "around them")
    qdq = census.quantize_nodes + census.dequantize_nodes
    if qdq:
        reasons.append(f"{census.quantize_nodes} QuantizeLinear and {census.dequantize_nodes} DequantizeLinear "
                       "nodes are left in the optimized graph: each converts a whole tensor between float and "
                       "integers on every run")
    clips = census.op_counts.get("Clip", 0) - float_census.op_counts.get("Clip", 0)
    if clips > 0:
        reasons.append(f"{clips} extra Clip nodes hold activations below 8 bits to their range: ONNX Runtime has "
                       "no kernels for fewer than 8 bits, so each is one more pass over its tensor")
    uint8 = [r.layer for r in inspection.layers if r.storage == "uint8"]
    if uint8:
        vnni = cpu_has_vnni()
        where = ("this CPU has VNNI, where such weights are slower than int8 ones" if vnni else
                 "on CPUs with VNNI such weights are slower than int8 ones" if vnni is None else
                 "this CPU has no VNNI, where they avoid wrong results at little cost")
        reasons.append(f"{len(uint8)} layer(s) ({', '.join(uint8[:4])}{', ...' if len(uint8) > 4 else ''}) store "
                       f"8-bit weights as uint8 (zero point 128, so that CPUs without VNNI cannot overflow); {where}")
    if float_median_ms < SHORT_RUN_MS:
        macs = sum(r.macs or 0 for r in inspection.layers)
        kernels = sum(census.op_counts.values())
        float_kernels = sum(float_census.op_counts.values())
        reasons.append(f"the float model needs only {float_median_ms:.3f} ms a run at batch {batch_size} "
                       f"({macs / 1e6:.2f} M multiply-adds per sample): the quantized graph runs {kernels} kernels "
                       f"against the float's {float_kernels}, and at this size the fixed cost of each kernel call "
                       "and of requantizing between integer kernels outweighs the arithmetic saved")
    if not reasons:
        reasons.append("nothing in the optimized graph explains it (every layer runs as an integer kernel, no "
                       "conversions are left); see the speed-up's spread for whether it is noise")
    return reasons
