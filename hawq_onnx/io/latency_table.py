"""Per-layer latency on a runtime, per precision: what a latency budget is allocated against.

HAWQ-V3 measures each layer's latency at each bit width on the target hardware once and sums
them under a latency budget. Here a layer's entry holds milliseconds for:

- ``float``: the layer left float among integer neighbours: its integer time plus what the
  network's time changed by when only this layer was float (its float kernel, and the
  QuantizeLinear/DequantizeLinear and layout conversions at its boundaries);
- ``w8a8`` / ``w8a4``: the integer kernel with 8-bit weights, reading 8-bit or 4-bit inputs (the
  4-bit grid adds the Clip that holds its 16 levels);
- ``wsa8`` / ``wsa4``: the same with 2-4-bit weights, which the runtimes widen to int8 at load
  (they differ from ``w8`` only where the target stores wide-input 8-bit weights as uint8).

Each entry is the layer's kernel time inside a whole network (the float export, or every layer at
those bits), at one batch size (``hawq_onnx.validation.layer_latency``); a 4-bit entry includes
the integer Clip and requantization that feed the layer. What runs no layer (conversions
between float and integer neighbours, residual adds, pooling) is not in a layer's entry, so a
plan's predicted latency is a guide that ``validate`` measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import read_json, write_json
from hawq_onnx.io.json_fields import get

FORMAT = "hawq-onnx-latency-table"
VERSION = 1
KEYS = ("float", "w8a8", "w8a4", "wsa8", "wsa4")


def choice_key(w_bits: int | None, a_bits: int | None) -> str:
    """The entry that times a layer at (w_bits, a_bits); float weights or inputs: ``float``."""
    if w_bits is None or a_bits is None:
        return "float"
    return f"{'w8' if w_bits >= 8 else 'ws'}a{8 if a_bits >= 8 else 4}"


@dataclass
class LatencyTable:
    runtime: str          # e.g. "ONNX Runtime 1.32.0 CPU"
    target: str           # the export profile the kernels were built as (ort-vnni, openvino, ...)
    machine: str          # the CPU, as hawq_onnx.core.cpu_features describes it
    threads: int
    batch_size: int
    layers: dict[str, dict[str, float]] = field(default_factory=dict)   # layer -> key -> ms
    float_total_ms: float = 0.0   # every node of the float network: what "0.8x" is a fraction of
    rest_ms: float = 0.0          # the integer network's nodes that run no layer (adds, pooling, conversions)

    def ms(self, layer: str, w_bits: int | None, a_bits: int | None) -> float:
        entry = self.layers.get(layer)
        if entry is None:
            raise HawqError(f"the latency table has no layer {layer!r} (it times {len(self.layers)} layers of "
                            "another model?)")
        key = choice_key(w_bits, a_bits)
        if key not in entry:
            raise HawqError(f"the latency table has no {key} time for layer {layer!r}")
        return float(entry[key])

    @property
    def float_ms(self) -> float:
        """The float network: the reference a latency budget like ``0.5x`` is a fraction of."""
        return self.float_total_ms or sum(float(e["float"]) for e in self.layers.values())

    def describe(self) -> str:
        return f"{self.runtime}, {self.target}, {self.threads} thread(s), batch {self.batch_size}, {self.machine}"

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "runtime": self.runtime, "target": self.target,
                "machine": self.machine, "threads": self.threads, "batch_size": self.batch_size,
                "layers": self.layers, "float_total_ms": self.float_total_ms, "rest_ms": self.rest_ms}

    @classmethod
    def from_json(cls, obj: Any, where: str = "latency table") -> "LatencyTable":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
            raise HawqError(f"{where} is not a hawq-onnx latency table (format {FORMAT}, version {VERSION})")
        try:
            layers = get(obj, "layers", "dict")
            table = {str(n): {str(k): float(v) for k, v in get(layers, n, "dict").items()} for n in layers}
            for name, entry in table.items():
                if "float" not in entry or any(not (v >= 0) for v in entry.values()):
                    raise ValueError(f"layer {name!r} needs a float time and non-negative times")
            return cls(get(obj, "runtime", "str"), get(obj, "target", "str"), get(obj, "machine", "str"),
                       get(obj, "threads", "int"), get(obj, "batch_size", "int"), table,
                       get(obj, "float_total_ms", "number"), get(obj, "rest_ms", "number"))
        except (ValueError, TypeError, HawqError) as exc:
            raise HawqError(f"{where} is malformed ({str(exc).splitlines()[0][:200]})") from None

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        return cls.from_json(read_json(path, "latency table"), f"latency table {path}")
