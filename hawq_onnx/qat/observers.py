"""Range observers: what an activation quantizer watches during calibration.

An observer sees the tensors flowing into a layer on the calibration split and proposes the
range [lo, hi] that the quantizer turns into (scale, zero point) with
``quantization.activation_qparams``. Observers hold no model state: they live only for the
duration of one calibration pass, then the quantizer keeps the numbers.

- ``minmax``: running min and max; with a momentum, an exponential moving average of each
  batch's min and max (torch.ao's MovingAverageMinMaxObserver), which forgets a rare outlier.
- ``percentile``: the p-th and (100-p)-th percentiles of a seeded sample of the values.
- ``mse``: the clipping of the sampled values' range that minimises the quantization error
  at the quantizer's bit width, searched on the same grid as the weight MSE scales.
"""

from __future__ import annotations

import numpy as np
import torch

from hawq_onnx.core.grid import (
    MSE_GRID,
    activation_qparams,
    activation_qrange,
    dequantize,
    quantize,
)

OBSERVERS = ("minmax", "ema", "percentile", "mse")
DEFAULT_OBSERVER = "mse"
EMA_MOMENTUM = 0.1
PERCENTILE = 99.99
SAMPLES_PER_BATCH = 1 << 15  # values kept per calibration batch by the sampling observers
MSE_SAMPLES = 1 << 16  # values the MSE search scores each candidate range on
SAMPLE_SEED = 0


class Observer:
    """Watches tensors; ``range()`` returns (lo, hi) as python floats."""

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running min/max; with ``momentum`` an exponential moving average of per-batch extremes."""

    def __init__(self, momentum: float | None = None) -> None:
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.lo: float | None = None
        self.hi: float | None = None

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        elif self.momentum is None:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        else:
            m = self.momentum
            self.lo, self.hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi

    def range(self) -> tuple[float, float]:
        if self.lo is None or self.hi is None:
            raise RuntimeError("observer saw no data")
        return self.lo, self.hi


class _SamplingObserver(Observer):
    """Keeps a seeded random sample of each batch's values (and the exact extremes)."""

    def __init__(self, samples_per_batch: int = SAMPLES_PER_BATCH, seed: int = SAMPLE_SEED) -> None:
        self.samples_per_batch = samples_per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.samples: list[np.ndarray] = []
        self.extremes = MinMaxObserver()

    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float().cpu()
        self.extremes.observe(flat)
        if flat.numel() > self.samples_per_batch:
            idx = torch.randint(0, flat.numel(), (self.samples_per_batch,), generator=self.generator)
            flat = flat[idx]
        self.samples.append(flat.numpy())

    def values(self) -> np.ndarray:
        if not self.samples:
            raise RuntimeError("observer saw no data")
        return np.concatenate(self.samples)


class PercentileObserver(_SamplingObserver):
    """lo, hi = the (100-p)-th and p-th percentiles: clips the rare extreme values."""

    def __init__(self, percentile: float = PERCENTILE, **kwargs) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(**kwargs)
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        v = self.values()
        lo, hi = np.percentile(v, [100.0 - self.percentile, self.percentile])
        return float(lo), float(hi)


class MSEObserver(_SamplingObserver):
    """The range, shrunk by a common ratio, whose quantization error on the sample is least."""

    def __init__(self, bits: int, grid: int = MSE_GRID, max_samples: int = MSE_SAMPLES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bits = bits
        self.grid = grid
        self.max_samples = max_samples

    def range(self) -> tuple[float, float]:
        v = self.values()
        if len(v) > self.max_samples:
            v = v[np.random.default_rng(SAMPLE_SEED).choice(len(v), self.max_samples, replace=False)]
        lo, hi = self.extremes.range()
        qmin, qmax = activation_qrange(self.bits)
        best, best_err = (lo, hi), np.inf
        for ratio in np.linspace(1.0, 0.2, self.grid):
            scale, zero_point = activation_qparams(lo * ratio, hi * ratio, self.bits)
            err = float(np.mean((dequantize(quantize(v, scale, zero_point, qmin, qmax), scale, zero_point) - v) ** 2))
            if err < best_err:
                best, best_err = (lo * ratio, hi * ratio), err
        return float(best[0]), float(best[1])


def make_observer(method: str, bits: int) -> Observer:
    if method == "minmax":
        return MinMaxObserver()
    if method == "ema":
        return MinMaxObserver(momentum=EMA_MOMENTUM)
    if method == "percentile":
        return PercentileObserver()
    if method == "mse":
        return MSEObserver(bits)
    raise ValueError(f"unknown observer {method!r} (one of {', '.join(OBSERVERS)})")
