"""Iterative freezing of oscillating low-bit weights during fine-tuning (Nagel et al., ICML 2022).

With the straight-through estimator, a latent weight that sits on a rounding threshold flips
between the two neighbouring integers from one step to the next, and its final integer is
whichever side the last step left it on. On ResNet20 at 13x, 11-17 % of each 2-bit layer's
fine-tuned weights end within 1 % of a step of a threshold (2 % if uniform), and moving them
by up to 2 % of a step costs 0.6-1.1 points of top-1 (BENCHMARKS.md, session 9).

Per tracked weight: an exponential moving average ``frequency`` of oscillations (an integer
change opposite in sign to the weight's previous change) and one of the integer itself. Once
the frequency passes the threshold, the weight is frozen at its rounded average integer for
the rest of fine-tuning. The threshold decays (cosine) from ``start`` to ``end`` over each
stage, so that more weights freeze as the learning rate falls.

Preserves: weights above ``max_bits`` (not tracked), the quantizer's forward and its
gradients: a frozen weight's latent value is pinned to ``integer * scale`` after every
optimizer step, so the fake-quant model, quantized.pt and the exporter see an ordinary
weight that rounds to the frozen integer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from hawq_onnx.errors import HawqError
from hawq_onnx.fake_quant import QuantLayer

DEFAULT_MOMENTUM = 0.01   # the paper's; its averages span about 100 steps
DEFAULT_MAX_BITS = 4      # the paper tracks 3- and 4-bit weights, never 8-bit ones


@dataclass(frozen=True)
class FreezeSchedule:
    """Oscillation-frequency threshold over a stage, cosine from ``start`` to ``end``."""

    start: float
    end: float
    momentum: float = DEFAULT_MOMENTUM
    max_bits: int = DEFAULT_MAX_BITS

    def __post_init__(self) -> None:
        if not (0 < self.end <= self.start <= 1):
            raise HawqError(f"oscillation freezing thresholds must satisfy 0 < end <= start <= 1, "
                            f"got start {self.start}, end {self.end}")
        if not 0 < self.momentum < 1:
            raise HawqError(f"oscillation tracking momentum must be in (0, 1), got {self.momentum}")

    def threshold(self, progress: float) -> float:
        """The threshold at ``progress`` (0 at the stage's first step, 1 at its last)."""
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def to_json(self) -> dict:
        return asdict(self)


def parse_freeze_schedule(text: str | None) -> FreezeSchedule | None:
    """``START:END`` (thresholds, e.g. ``0.1:0.01``), one value for a constant threshold, or ``off``."""
    if text is None or text.strip().lower() in ("", "off", "none"):
        return None
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) for v in values):
        raise HawqError(f"--freeze-oscillations {text!r}: give START:END thresholds (0.1:0.01), one threshold, or off")
    return FreezeSchedule(values[0], values[-1])


class _Tracker:
    """One weight tensor's oscillation state, in the integer domain."""

    def __init__(self, x_int: torch.Tensor) -> None:
        self.previous = x_int.clone()
        self.direction = torch.zeros_like(x_int)   # sign of the last integer change, 0 before any
        self.frequency = torch.zeros_like(x_int)
        self.mean_int = x_int.clone()
        self.frozen = torch.zeros_like(x_int, dtype=torch.bool)
        self.frozen_int = torch.zeros_like(x_int)

    def update(self, x_int: torch.Tensor, momentum: float, threshold: float) -> None:
        x_int = torch.where(self.frozen, self.frozen_int, x_int)
        change = torch.sign(x_int - self.previous)
        oscillated = (change * self.direction) == -1
        self.frequency.mul_(1 - momentum).add_(oscillated.to(x_int.dtype), alpha=momentum)
        self.direction = torch.where(change != 0, change, self.direction)
        self.previous = x_int
        newly = (self.frequency > threshold) & ~self.frozen
        if newly.any():
            self.frozen |= newly
            self.frozen_int = torch.where(newly, torch.round(self.mean_int), self.frozen_int)
        self.mean_int.mul_(1 - momentum).add_(x_int, alpha=momentum)


class OscillationFreezer:
    """Tracks the enabled layers of at most ``max_bits`` and freezes their oscillating weights.

    Call ``step(progress)`` after every optimizer step (weights and step sizes both updated).
    """

    def __init__(self, layers: dict[str, QuantLayer], schedule: FreezeSchedule) -> None:
        self.schedule = schedule
        self.layers = {name: q for name, q in layers.items()
                       if q.weight_quant is not None and q.w_bits is not None and q.w_bits <= schedule.max_bits}
        self.trackers: dict[str, _Tracker] = {}

    @torch.no_grad()
    def step(self, progress: float) -> None:
        threshold = self.schedule.threshold(progress)
        for name, q in self.layers.items():
            if not q.enabled:
                continue
            w, quantizer = q.layer.weight, q.weight_quant
            s = quantizer.effective_scale().reshape((-1,) + (1,) * (w.dim() - 1))
            # The integers the forward computes: same division, round half to even, saturation.
            x_int = torch.clamp(torch.round(w / s), quantizer.qmin, quantizer.qmax)
            tracker = self.trackers.get(name)
            if tracker is None:
                self.trackers[name] = _Tracker(x_int)
                continue
            tracker.update(x_int, self.schedule.momentum, threshold)
            if tracker.frozen.any():
                w.copy_(torch.where(tracker.frozen, tracker.frozen_int * s, w))

    def frozen_share(self) -> float:
        """Frozen weights over the weights tracked so far."""
        total = sum(t.frozen.numel() for t in self.trackers.values())
        return sum(int(t.frozen.sum()) for t in self.trackers.values()) / total if total else 0.0

    def summary(self) -> dict[str, float]:
        """Per tracked layer: the share of its weights frozen."""
        return {name: float(t.frozen.float().mean()) for name, t in self.trackers.items()}
