"""sensitivity.json: what ``analyze`` writes and ``allocate`` reads (data only, no math).

Per layer: the Hessian block's top eigenvalue and trace with their convergence figures, and
the weight perturbation ||Q(W) - W||^2 of every candidate bit width on the BN-folded weights,
so that allocation needs nothing but this file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hawq_onnx.artifacts import read_json, write_json
from hawq_onnx.errors import HawqError

FORMAT = "hawq-onnx-sensitivity"
VERSION = 1


@dataclass
class LayerSensitivity:
    name: str
    kind: str
    params: int
    out_channels: int
    macs: int
    top_eigenvalue: float
    eigen_iterations: int
    eigen_converged: bool
    trace: float
    trace_std_error: float
    trace_probes: int
    trace_converged: bool
    seconds: float
    # method ("maxabs", "mse") -> bits (str, JSON keys) -> ||Q(W) - W||^2 on the BN-folded weight
    perturbation: dict[str, dict[str, float]] = field(default_factory=dict)
    # The layer's INPUT activation (HAWQ-V2 also weighs activations by their Hessian trace):
    act_elements: int = 0            # elements of the input per sample
    act_trace: float = 0.0           # Hutchinson trace of the loss Hessian w.r.t. the input, per sample
    act_trace_std_error: float = 0.0
    act_perturbation: dict[str, float] = field(default_factory=dict)  # a_bits -> mean ||Q(x) - x||^2 per sample
    status: str = "ok"  # ok | zero (numerically zero block) | indefinite (negative top eigenvalue)

    @property
    def trace_per_param(self) -> float:
        return self.trace / self.params if self.params else 0.0


@dataclass
class SensitivityReport:
    model: str
    fingerprint: str
    data: str
    settings: dict[str, Any]
    layers: list[LayerSensitivity]
    seconds: float = 0.0
    float_weight_bytes: int = 0
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for layer, src in zip(out["layers"], self.layers):
            layer["trace_per_param"] = src.trace_per_param
        return out

    def layer(self, name: str) -> LayerSensitivity:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def save_sensitivity(report: SensitivityReport, path: str | Path) -> Path:
    return write_json(path, report.to_json())


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_sensitivity(path: str | Path) -> SensitivityReport:
    obj = read_json(path, "sensitivity")
    where = f"sensitivity file {path}"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise HawqError(f"{where} is not a hawq-onnx sensitivity file (run `hawq-onnx analyze`)")
    if obj.get("version") != VERSION:
        raise HawqError(f"{where} has version {obj.get('version')}, this hawq-onnx reads {VERSION}")
    try:
        layers = []
        for raw in obj["layers"]:
            raw = dict(raw)
            raw.pop("trace_per_param", None)
            layer = LayerSensitivity(**raw)
            for key in ("top_eigenvalue", "trace", "trace_std_error"):
                if not _finite(getattr(layer, key)):
                    raise HawqError(f"{where}: layer {layer.name} has a non-finite {key}")
            if not isinstance(layer.params, int) or layer.params <= 0:
                raise HawqError(f"{where}: layer {layer.name} has an invalid parameter count")
            layers.append(layer)
        report = SensitivityReport(model=obj["model"], fingerprint=obj["fingerprint"], data=obj["data"],
                                   settings=obj["settings"], layers=layers, seconds=obj.get("seconds", 0.0),
                                   float_weight_bytes=obj.get("float_weight_bytes", 0))
    except HawqError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise HawqError(f"{where} is malformed ({exc.__class__.__name__}: {exc})") from None
    if not report.layers:
        raise HawqError(f"{where} lists no layers")
    return report
