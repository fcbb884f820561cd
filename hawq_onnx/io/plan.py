"""plan.json: the contract between PyTorch and ONNX.

``allocate`` writes each layer's bits; ``finetune`` (or post-training calibration) adds the
weight scales and the input activation's quantization parameters. The exporter needs nothing
but this plan and the weights it names. Layers are named by their PyTorch module path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hawq_onnx.core.grid import ACTIVATION_BITS, WEIGHT_BITS, WEIGHT_RANGES
from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import read_json, write_json

FORMAT = "hawq-onnx-plan"
VERSION = 2
# Versions this hawq-onnx reads: 1 predates weight_range (its weights are all on the narrow range).
READABLE_VERSIONS = (1, 2)


@dataclass
class ActivationQuant:
    """Per-tensor quantization of a layer's input: q in [0, 2^bits - 1]."""

    bits: int
    scale: float
    zero_point: int


@dataclass
class RegionGrid:
    """A grid the exporter adds between layers (q in [0, 2^bits - 1]), named on both sides.

    ``node``: the torch.fx node of the fake-quant model whose output it rounds, for every user
    but the planned layers that quantize their own input (``hawq_onnx.qat.region_grids``);
    ``tensor``: the ONNX tensor it rounds in the exported file.
    """

    node: str
    tensor: str
    bits: int
    scale: float
    zero_point: int


@dataclass
class LayerPlan:
    name: str
    kind: str
    params: int
    out_channels: int
    macs: int
    w_bits: int | None            # None: the weight stays float
    a_bits: int | None            # None: the input activation stays float
    omega: float = 0.0            # Hessian-weighted perturbation of this choice
    weight_scale: list[float] | None = None   # per output channel; set by calibration/fine-tuning
    input_quant: ActivationQuant | None = None  # set by calibration/fine-tuning

    @property
    def calibrated(self) -> bool:
        return ((self.w_bits is None or self.weight_scale is not None)
                and (self.a_bits is None or self.input_quant is not None))


@dataclass
class Plan:
    model: str
    fingerprint: str
    layers: list[LayerPlan]
    budget: dict[str, Any] = field(default_factory=dict)     # what the user asked for
    totals: dict[str, Any] = field(default_factory=dict)     # weight bytes, ratio, omega, bops
    allocation: dict[str, Any] = field(default_factory=dict)  # method, candidates, sensitivity sha
    pareto: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # data, samples, method; after fine-tuning
    region_grids: list[RegionGrid] = field(default_factory=list)  # set by the exporter
    weight_range: str = "narrow"  # quantization.WEIGHT_RANGES: the integer range of every sub-8-bit weight
    format: str = FORMAT
    version: int = VERSION

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def calibrated(self) -> bool:
        return all(layer.calibrated for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write plan.json atomically (what ``hawq-onnx allocate`` writes)."""
        return save_plan(self, path)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> "Plan":
        """Read a plan.json; with ``fingerprint``, check it was made for that (BN-folded) model."""
        return load_plan(path, fingerprint)


def exported_plan_path(onnx_path: str | Path) -> Path:
    """model.qdq.onnx -> model.qdq.plan.json, beside it: where an export writes the plan it
    exported (the name ``quantize`` uses)."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".plan.json")


def save_plan(plan: Plan, path: str | Path) -> Path:
    return write_json(path, plan.to_json())


# Parameters, channels and MACs of one layer: far above any real model, and exact in int64 sums.
MAX_COUNT = 1 << 40
# A scale must stay a positive, finite number in float32, which the ONNX file stores.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_scale(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and 0 < x <= _FLOAT32_MAX and np.float32(x) > 0)


def _check_layer(layer: LayerPlan, where: str) -> None:
    if not isinstance(layer.name, str) or not layer.name:
        raise HawqError(f"{where}: a layer has no name (a non-empty string)")
    for key, minimum in (("params", 1), ("out_channels", 1), ("macs", 0)):
        value = getattr(layer, key)
        if not _is_int(value) or not minimum <= value < MAX_COUNT:
            raise HawqError(f"{where}: layer {layer.name} has an invalid {key} ({value!r:.40})")
    if not isinstance(layer.kind, str):
        raise HawqError(f"{where}: layer {layer.name} has an invalid kind ({layer.kind!r:.40})")
    if not (isinstance(layer.omega, (int, float)) and not isinstance(layer.omega, bool) and math.isfinite(layer.omega)):
        raise HawqError(f"{where}: layer {layer.name} has an invalid omega ({layer.omega!r:.40})")
    if layer.w_bits is not None and not (_is_int(layer.w_bits) and layer.w_bits in WEIGHT_BITS):
        raise HawqError(f"{where}: layer {layer.name} has w_bits {layer.w_bits!r:.20}, not one of {WEIGHT_BITS} or null")
    if layer.a_bits is not None and not (_is_int(layer.a_bits) and layer.a_bits in ACTIVATION_BITS):
        raise HawqError(f"{where}: layer {layer.name} has a_bits {layer.a_bits!r:.20}, not one of {ACTIVATION_BITS} or null")
    if layer.weight_scale is not None:
        if not isinstance(layer.weight_scale, list):
            raise HawqError(f"{where}: layer {layer.name} has weight scales that are not a list of numbers")
        if len(layer.weight_scale) != layer.out_channels:
            raise HawqError(f"{where}: layer {layer.name} has {len(layer.weight_scale)} weight scales "
                            f"for {layer.out_channels} channels")
        if not all(_is_scale(s) for s in layer.weight_scale):
            raise HawqError(f"{where}: layer {layer.name} has a weight scale that is not a positive number "
                            "in float32; calibrate again with `hawq-onnx finetune`")
    q = layer.input_quant
    if q is not None:
        if not (_is_int(q.bits) and q.bits in ACTIVATION_BITS):
            raise HawqError(f"{where}: layer {layer.name} has input_quant bits {q.bits!r:.20}, not one of {ACTIVATION_BITS}")
        if layer.a_bits is not None and q.bits != layer.a_bits:
            raise HawqError(f"{where}: layer {layer.name} has input_quant bits {q.bits} but a_bits {layer.a_bits}")
        if not _is_scale(q.scale):
            raise HawqError(f"{where}: layer {layer.name} has an input scale that is not a positive number "
                            "in float32; calibrate again with `hawq-onnx finetune`")
        if not (_is_int(q.zero_point) and 0 <= q.zero_point < 2 ** q.bits):
            raise HawqError(f"{where}: layer {layer.name} has an input zero point outside [0, 2^{q.bits})")


def _check_region_grid(grid: RegionGrid, where: str) -> None:
    if not (isinstance(grid.node, str) and grid.node and isinstance(grid.tensor, str)):
        raise HawqError(f"{where}: a region grid has no node name (a non-empty string)")
    if not (_is_int(grid.bits) and grid.bits in ACTIVATION_BITS):
        raise HawqError(f"{where}: region grid {grid.node} has bits {grid.bits!r:.20}, not one of {ACTIVATION_BITS}")
    if not _is_scale(grid.scale):
        raise HawqError(f"{where}: region grid {grid.node} has a scale that is not a positive number in float32")
    if not (_is_int(grid.zero_point) and 0 <= grid.zero_point < 2 ** grid.bits):
        raise HawqError(f"{where}: region grid {grid.node} has a zero point outside [0, 2^{grid.bits})")


def load_plan(path: str | Path, fingerprint: str | None = None) -> Plan:
    """Read and validate a plan; with ``fingerprint``, check it belongs to that model."""
    return plan_from_json(read_json(path, "plan"), f"plan {path}", fingerprint)


def plan_from_json(obj: Any, where: str = "plan", fingerprint: str | None = None) -> Plan:
    """Validate a plan held in memory (``Plan.to_json()`` output, e.g. inside quantized.pt)."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise HawqError(f"{where} is not a hawq-onnx plan (run `hawq-onnx allocate`)")
    if obj.get("version") not in READABLE_VERSIONS:
        raise HawqError(f"{where} has version {obj.get('version')!r:.20}, this hawq-onnx reads "
                        f"{', '.join(map(str, READABLE_VERSIONS))}")
    weight_range = obj.get("weight_range", "narrow")
    if weight_range not in WEIGHT_RANGES:
        raise HawqError(f"{where} has weight_range {weight_range!r:.20}, not one of {', '.join(WEIGHT_RANGES)}")
    try:
        layers = []
        if not isinstance(obj["layers"], list) or not all(isinstance(raw, dict) for raw in obj["layers"]):
            raise TypeError("'layers' is not a list of objects")
        for raw in obj["layers"]:
            raw = dict(raw)
            iq = raw.pop("input_quant", None)
            if iq is not None and not isinstance(iq, dict):
                raise TypeError("input_quant is not an object")
            layer = LayerPlan(**raw, input_quant=ActivationQuant(**iq) if iq is not None else None)
            _check_layer(layer, where)
            layers.append(layer)
        fields = {k: obj[k] for k in ("budget", "totals", "allocation", "pareto", "calibration") if k in obj}
        grids = obj.get("region_grids", [])
        if not isinstance(grids, list) or not all(isinstance(raw, dict) for raw in grids):
            raise TypeError("'region_grids' is not a list of objects")
        region_grids = [RegionGrid(**raw) for raw in grids]
        for grid in region_grids:
            _check_region_grid(grid, where)
        plan = Plan(model=obj["model"], fingerprint=obj["fingerprint"], layers=layers, region_grids=region_grids,
                    weight_range=weight_range, **fields)
        for key, kind in (("model", str), ("fingerprint", str), ("budget", dict), ("totals", dict),
                          ("allocation", dict), ("pareto", list)):
            if not isinstance(getattr(plan, key), kind):
                raise TypeError(f"{key!r} is not a {kind.__name__}")
        if plan.calibration is not None and not isinstance(plan.calibration, dict):
            raise TypeError("'calibration' is not an object or null")
    except HawqError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise HawqError(f"{where} is malformed ({exc.__class__.__name__}: {exc}); make it again with "
                        "`hawq-onnx allocate` (or finetune)") from None
    if not plan.layers:
        raise HawqError(f"{where} lists no layers")
    names = [layer.name for layer in plan.layers]
    if len(set(names)) != len(names):
        raise HawqError(f"{where} names a layer twice; make it again with `hawq-onnx allocate`")
    if fingerprint is not None and plan.fingerprint != fingerprint:
        raise HawqError(f"{where} was made for another model (fingerprint {plan.fingerprint}, "
                        f"this model {fingerprint}); allocate a plan for this model")
    return plan
