"""sensitivity.json: what ``analyze`` writes and ``allocate`` reads (data only, no math).

Per layer: the Hessian block's top eigenvalue and trace with their convergence figures, and
the weight perturbation ||Q(W) - W||^2 of every candidate bit width on the BN-folded weights,
so that allocation needs nothing but this file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import read_json, write_json

FORMAT = "hawq-onnx-sensitivity"
VERSION = 1


def perturbation_key(method: str, weight_range: str = "narrow") -> str:
    """The key of a layer's weight perturbation table: ``mse``, ``mse-full``, ``maxabs``, ``maxabs-full``.

    Reports written before weight ranges existed have the narrow keys only.
    """
    return method if weight_range == "narrow" else f"{method}-{weight_range}"


@dataclass
class LayerSensitivity:
    name: str
    kind: str
    params: int
    out_channels: int
    macs: int
    top_eigenvalue: float | None  # None: not computed (decision-settled analyses skip it unless asked)
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
    act_trace_probes: int = 0
    act_perturbation: dict[str, float] = field(default_factory=dict)  # a_bits -> mean ||Q(x) - x||^2 per sample
    status: str = "ok"  # ok | zero (numerically zero block) | indefinite (negative top eigenvalue)
    # How the Hessian products were formed: "exact", "exact with analysis stand-ins: hardsigmoid,
    # sdpa-math" or "finite differences (...)"; written only where it is not "exact", so that
    # files of all-exact analyses read as before (and older files read as exact).
    hessian_product: str = "exact"

    @property
    def trace_per_param(self) -> float:
        return self.trace / self.params if self.params else 0.0


@dataclass
class Sensitivity:
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
            if src.hessian_product == "exact":
                del layer["hessian_product"]
        return out

    def layer(self, name: str) -> LayerSensitivity:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def save(self, path: str | Path) -> Path:
        """Write sensitivity.json atomically (what ``hawq-onnx analyze`` writes)."""
        return save_sensitivity(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "Sensitivity":
        """Read a sensitivity.json written by ``save`` or ``hawq-onnx analyze``."""
        return load_sensitivity(path)


def _without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def content_sha256(report: Sensitivity) -> str:
    """sha256 of the report's canonical JSON without its wall-clock timings (the ``seconds``
    fields): equal inputs and seed give equal digests, so a plan that records it is byte-identical
    across reruns while sensitivity.json keeps its timings."""
    text = json.dumps(_without_timings(report.to_json()), indent=2, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def save_sensitivity(report: Sensitivity, path: str | Path) -> Path:
    return write_json(path, report.to_json())


# Parameters, channels and MACs of one layer: far above any real model, and exact in int64 sums.
MAX_COUNT = 1 << 40


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x: Any, minimum: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and minimum <= x < MAX_COUNT


def _bits_table(table: Any) -> bool:
    """{"4": 0.12, ...}: bit widths as keys, finite non-negative numbers as values."""
    return isinstance(table, dict) and all(isinstance(k, str) and k.isdigit() and _finite(v) and v >= 0
                                           for k, v in table.items())


def _check_layer(layer: LayerSensitivity, where: str) -> None:
    if not isinstance(layer.name, str) or not layer.name:
        raise HawqError(f"{where}: a layer has no name (a non-empty string)")
    bad = [key for key, ok in (
        ("kind", isinstance(layer.kind, str)), ("status", isinstance(layer.status, str)),
        ("hessian_product", isinstance(layer.hessian_product, str)),
        ("params", _count(layer.params, 1)), ("out_channels", _count(layer.out_channels, 1)),
        ("macs", _count(layer.macs)), ("eigen_iterations", _count(layer.eigen_iterations)),
        ("trace_probes", _count(layer.trace_probes)), ("act_elements", _count(layer.act_elements)),
        ("act_trace_probes", _count(layer.act_trace_probes)),
        ("top_eigenvalue", layer.top_eigenvalue is None or _finite(layer.top_eigenvalue)),
        ("eigen_converged", isinstance(layer.eigen_converged, bool)),
        ("trace_converged", isinstance(layer.trace_converged, bool)),
        *((key, _finite(getattr(layer, key))) for key in ("trace", "trace_std_error", "seconds",
                                                           "act_trace", "act_trace_std_error")),
        ("perturbation", isinstance(layer.perturbation, dict) and all(
            isinstance(k, str) and _bits_table(v) for k, v in layer.perturbation.items())),
        ("act_perturbation", _bits_table(layer.act_perturbation)),
    ) if not ok]
    if bad:
        raise HawqError(f"{where}: layer {layer.name} has an invalid {bad[0]} ({getattr(layer, bad[0])!r:.60}); "
                        "rerun `hawq-onnx analyze`")


def load_sensitivity(path: str | Path) -> Sensitivity:
    obj = read_json(path, "sensitivity")
    where = f"sensitivity file {path}"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise HawqError(f"{where} is not a hawq-onnx sensitivity file (run `hawq-onnx analyze`)")
    if obj.get("version") != VERSION:
        raise HawqError(f"{where} has version {obj.get('version')}, this hawq-onnx reads {VERSION}")
    try:
        if not isinstance(obj["layers"], list) or not all(isinstance(raw, dict) for raw in obj["layers"]):
            raise TypeError("'layers' is not a list of objects")
        layers = []
        for raw in obj["layers"]:
            raw = dict(raw)
            raw.pop("trace_per_param", None)
            layer = LayerSensitivity(**raw)
            _check_layer(layer, where)
            layers.append(layer)
        report = Sensitivity(model=obj["model"], fingerprint=obj["fingerprint"], data=obj["data"],
                                   settings=obj["settings"], layers=layers, seconds=obj.get("seconds", 0.0),
                                   float_weight_bytes=obj.get("float_weight_bytes", 0))
        for key in ("model", "fingerprint", "data"):
            if not isinstance(getattr(report, key), str):
                raise TypeError(f"{key!r} is not a string")
        if not isinstance(report.settings, dict) or not _finite(report.seconds) \
                or not _count(report.float_weight_bytes, 0):
            raise TypeError("'settings', 'seconds' or 'float_weight_bytes' has the wrong type")
    except HawqError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise HawqError(f"{where} is malformed ({exc.__class__.__name__}: {exc}); rerun `hawq-onnx analyze`") from None
    if not report.layers:
        raise HawqError(f"{where} lists no layers")
    names = [layer.name for layer in report.layers]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise HawqError(f"{where} names layer {twice[0]} twice; rerun `hawq-onnx analyze`")
    return report
