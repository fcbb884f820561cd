"""The per-layer rows of a validation: what each layer of the quantized file stores, how ONNX
Runtime runs it, and how sensitive the analysis found it; and the check that an analysis
describes the validated model at all."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hawq_onnx.core.onnx_inspect import Inspection, layer_name
from hawq_onnx.errors import OptionError
from hawq_onnx.io.sensitivity_report import Sensitivity
from hawq_onnx.validation.kernel_census import KernelCensus

log = logging.getLogger(__name__)


@dataclass
class LayerReport:
    """One layer of the quantized model: what it stores, how it runs, how sensitive it is."""

    layer: str                 # PyTorch module path where the weight is named <layer>.weight
    node: str
    op_type: str
    storage: str               # weight storage type in the file
    bits: int                  # effective weight bits
    act_bits: int | None       # input activation bits, None when the input is float
    bytes: int                 # weight bytes in the quantized file (scales and zero points included)
    float_bytes: int | None    # the same layer's weight bytes in the float file
    kernel: str                # the op ONNX Runtime runs
    mode: str                  # integer | emulated | float | weight-only | missing
    top_eigenvalue: float | None = None
    trace: float | None = None
    trace_per_param: float | None = None


def layer_reports(quant: Inspection, census: KernelCensus, float_ins: Inspection,
                   sensitivity: Sensitivity | None) -> list[LayerReport]:
    kernels = {layer.node: layer for layer in census.layers}
    float_bytes = {layer_name(r.weight, r.node): r.bytes for r in float_ins.layers}
    sens = {s.name: s for s in sensitivity.layers} if sensitivity is not None else {}
    rows = []
    for r in quant.layers:
        name = layer_name(r.weight, r.node)
        k = kernels.get(r.node)
        s = sens.get(name)
        rows.append(LayerReport(
            layer=name, node=r.node, op_type=r.op_type, storage=r.storage, bits=r.bits, act_bits=r.act_bits,
            bytes=r.bytes, float_bytes=float_bytes.get(name), kernel=k.kernel if k else "",
            mode=k.mode if k else "missing",
            top_eigenvalue=s.top_eigenvalue if s else None, trace=s.trace if s else None,
            trace_per_param=s.trace_per_param if s else None))
    if sens:
        onnx_names = {row.layer for row in rows}
        unmatched = [n for n in sens if n not in onnx_names]
        if unmatched:
            log.warning("%d sensitivity layer(s) have no weight <layer>.weight in the quantized model: %s",
                        len(unmatched), ", ".join(unmatched[:5]))
    return rows


def check_sensitivity_matches(sens: Sensitivity, float_ins: Inspection, float_path: str | Path) -> None:
    """The report must describe this model: every analysed layer a weight of the same size here."""
    params = {layer_name(r.weight, r.node): r.params for r in float_ins.layers}
    alien = [s.name for s in sens.layers if params.get(s.name) != s.params]
    if alien:
        raise OptionError(f"{{sensitivity}} was made for another model: {len(alien)} of its {len(sens.layers)} "
                          f"layers have no weight of the same size in {float_path} (e.g. {alien[0]})", "sensitivity")
