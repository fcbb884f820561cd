"""Does the quantized file's export profile fit the runtime and CPU it is validated on?

The exporter records the profile in the file's metadata (``hawq_onnx.target``). A file written
for one runtime or instruction set runs elsewhere, but not as it should: ``ort-vnni`` files on
an x86 CPU without VNNI can saturate ONNX Runtime's int16 pair sums (exactness lost),
``ort-avx2`` files on a VNNI CPU take its slow U8U8 path (speed lost), and a file written for
OpenVINO leaves ONNX Runtime float clamps it does not fuse. Each mismatch is one sentence.
"""

from __future__ import annotations

import onnx

from hawq_onnx.core.cpu_features import int8_sums_exact
from hawq_onnx.passes.target_profiles import written_for


def _has_uint8_weights(model: onnx.ModelProto) -> bool:
    uint8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) > 1}
    return any(n.op_type == "DequantizeLinear" and n.input and n.input[0] in uint8 for n in model.graph.node)


def profile_mismatch(model: onnx.ModelProto, runtime: str, exact: bool | None = None) -> str | None:
    """Why the file's profile does not fit ``runtime`` ("ort"/"openvino") on this CPU, or None."""
    target = written_for(model)
    if target is None:
        return None
    exact = int8_sums_exact() if exact is None else exact
    if runtime == "ort":
        if target == "openvino":
            return ("it was exported for OpenVINO: ONNX Runtime does not fuse its 4-bit activations' float clamps "
                    "and runs its residual sums once on nested grids; export for an ONNX Runtime target to measure "
                    "ONNX Runtime")
        if target == "ort-vnni" and exact is False:
            return ("it was exported for CPUs with VNNI (int8 weights), and this x86 CPU has none: ONNX Runtime's "
                    "U8S8 kernels can saturate their int16 pair sums here; export for target 'ort-avx2' to run it "
                    "exactly on this CPU")
        if target == "ort-avx2" and exact is True and _has_uint8_weights(model):
            return ("it was exported for x86 CPUs without VNNI (uint8 weights), and this CPU has VNNI (or is not "
                    "x86), where those layers take ONNX Runtime's slow U8U8 path; export for target 'ort-vnni' to "
                    "measure the fast form")
    elif runtime == "openvino" and target in ("ort-vnni", "ort-avx2"):
        return ("it was exported for ONNX Runtime: OpenVINO runs its integer Clips and split residual sums in f32"
                + (" and its uint8 weights as f32 convolutions" if _has_uint8_weights(model) else "")
                + "; export for target 'openvino' to measure OpenVINO")
    return None
