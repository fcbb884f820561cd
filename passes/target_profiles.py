"""Export targets as data: what each runtime needs to run the same plan as integer kernels.

One plan, one set of integers; a profile only decides how they are written down:

- ``ort-vnni``: ONNX Runtime on CPUs whose uint8 x int8 sums are exact (x86 with VNNI, ARM).
  Every 8-bit weight is int8 (U8S8), the form ONNX Runtime's VNNI kernels run fastest.
- ``ort-avx2``: ONNX Runtime on x86 without VNNI. The same, except that 8-bit weights whose
  products with a full-range uint8 input could saturate an int16 pair sum are stored uint8 with
  zero point 128 (U8U8, exact there; a slow path on VNNI CPUs).
- ``ort-cpu``: whichever of the two fits the CPU that exports (``resolve``); the file records
  the profile it was written for.
- ``openvino``: OpenVINO's CPU plugin. Its ONNX reader has no INT2, so 2-bit weights are stored
  as packed INT4 (same integers, 4 bits each); int8 weights; a residual Add shared by a
  sub-8-bit and an 8-bit consumer is computed once on a nested 8-bit grid (OpenVINO fuses the
  Add into the convolution, which can give only one integer output); a sub-8-bit activation
  is clamped in float before an 8-bit QuantizeLinear, which OpenVINO fuses into the producing
  convolution.
- ``compact``: plain ONNX sub-byte types (INT4/INT2 weights, uint4 activations) behind direct
  DequantizeLinear, for runtimes that take them.

Both ONNX Runtime profiles store 4- and 2-bit weights packed and widen them with a
``Cast(to=INT8)`` that the runtime folds at load.
"""

from __future__ import annotations

from dataclasses import dataclass

from hawq_onnx.core.cpu_features import int8_sums_exact
from hawq_onnx.options import TARGETS  # the choice list; a test checks it names every profile

AUTO = "ort-cpu"
METADATA_KEY = "hawq_onnx.target"  # the file's metadata entry naming the profile it was written for


@dataclass(frozen=True)
class TargetProfile:
    name: str
    runtime: str                       # onnxruntime | openvino | any
    summary: str                       # one line for reports
    split_shared_adds: bool            # residual Add computed once per grid its readers need
    sub_byte_activations: str          # native (uint4 Q/DQ) | integer-clip | float-clip
    integer_rewrites: bool             # requantization and zero padding on the integers
    widen_sub_byte_weights: bool       # packed INT4/INT2 -> Cast(to=INT8) -> DequantizeLinear
    two_bit_as_int4: bool              # the runtime reads no INT2
    unsigned_wide_input_weights: bool  # U8U8 where U8S8 could saturate without VNNI


_ORT = dict(runtime="onnxruntime", split_shared_adds=True, sub_byte_activations="integer-clip",
            integer_rewrites=True, widen_sub_byte_weights=True, two_bit_as_int4=False)

PROFILES: dict[str, TargetProfile] = {p.name: p for p in (
    TargetProfile("ort-vnni", summary="for ONNX Runtime on CPUs with VNNI (or ARM): 4- and 2-bit weights stored "
                  "packed and widened to int8 at load, int8 weights, every layer an integer kernel",
                  unsigned_wide_input_weights=False, **_ORT),
    TargetProfile("ort-avx2", summary="for ONNX Runtime on x86 CPUs without VNNI: as for VNNI, with the 8-bit "
                  "weights that could saturate an int16 pair sum stored uint8 (exact there)",
                  unsigned_wide_input_weights=True, **_ORT),
    TargetProfile("openvino", runtime="openvino",
                  summary="for OpenVINO on CPU: 4- and 2-bit weights stored packed as INT4 and widened to int8 "
                  "at load, sub-8-bit activations clamped in float before an 8-bit grid",
                  split_shared_adds=False, sub_byte_activations="float-clip", integer_rewrites=True,
                  widen_sub_byte_weights=True, two_bit_as_int4=True, unsigned_wide_input_weights=False),
    TargetProfile("compact", runtime="any",
                  summary="compact: plain QuantizeLinear/DequantizeLinear around every layer, sub-byte types as is",
                  split_shared_adds=False, sub_byte_activations="native", integer_rewrites=False,
                  widen_sub_byte_weights=False, two_bit_as_int4=False, unsigned_wide_input_weights=False),
)}


def written_for(model) -> str | None:
    """The profile an exported ONNX model (``onnx.ModelProto``) records it was written for, or None."""
    return {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)


def resolve(target: str) -> TargetProfile:
    """The profile for ``target``; ``ort-cpu`` picks by this CPU (unknown x86: ``ort-avx2``, exact everywhere)."""
    if target == AUTO:
        return PROFILES["ort-vnni" if int8_sums_exact() else "ort-avx2"]
    if target not in PROFILES:
        raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    return PROFILES[target]
