"""The one definition of hawq-onnx's integer grid: ranges, scales, rounding, saturation.

The fake-quant modules (torch) and the ONNX passes (numpy) both call these functions, so the
deployed file and the PyTorch model cannot drift apart.

Semantics (HAWQ-V3 and ONNX QuantizeLinear):
- weights: symmetric, per output channel (axis 0), signed, zero point 0, on one of two ranges
  (the plan's ``weight_range``): ``narrow`` q in [-(2^(b-1)-1), 2^(b-1)-1] (8 bits: [-127, 127];
  4: [-7, 7]; 3: [-3, 3]; 2: [-1, 1]), or ``full``, which adds the one negative level the signed
  type has below 8 bits (4: [-8, 7]; 3: [-4, 3]; 2: [-2, 1], LSQ's grid); 8 bits stay narrow on
  both (one level in 255 is worth nothing there, and ONNX Runtime's own int8 weights are narrow).
  The scale is max|w| / (2^(b-1)-1) or MSE-optimal clipping on the narrow range for both: the
  extra level only takes the clipped negative tail, so the grid stays centred on zero (scales
  searched on the full range bias every channel: 34.7 % against 65.6 % post-training on ResNet20);
- activations: per tensor, unsigned q in [0, 2^b-1]; zero point 0 when the tensor is
  non-negative (after ReLU), asymmetric otherwise;
- q = saturate(round_half_to_even(x / scale) + zero_point), x_hat = (q - zero_point) * scale,
  computed in float32 as ONNX Runtime does;
- bias: int32 with scale s_w * s_a.
"""

from __future__ import annotations

import numpy as np
import torch

from hawq_onnx.options import ACTIVATION_BITS, WEIGHT_BITS, WEIGHT_RANGES  # the choice lists, defined once

# Bits each weight occupies in the file: 3-bit weights live in INT4 storage.
STORAGE_BITS = {2: 2, 3: 4, 4: 4, 8: 8}
FLOAT_BITS = 32
MSE_GRID = 80  # clipping ratios tried by the MSE scale search, from 1.0 down to 0.2
BIAS_QRANGE = (-(2 ** 31) + 1, 2 ** 31 - 1)  # int32, symmetric


def weight_qrange(bits: int, weight_range: str = "narrow") -> tuple[int, int]:
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be one of {WEIGHT_BITS}, got {bits}")
    if weight_range not in WEIGHT_RANGES:
        raise ValueError(f"weight range must be one of {WEIGHT_RANGES}, got {weight_range!r}")
    q = 2 ** (bits - 1) - 1
    return (-q - 1 if weight_range == "full" and bits < 8 else -q), q


def activation_qrange(bits: int) -> tuple[int, int]:
    if bits not in ACTIVATION_BITS:
        raise ValueError(f"activation bits must be one of {ACTIVATION_BITS}, got {bits}")
    return 0, 2 ** bits - 1


def _per_channel_absmax(w: np.ndarray) -> np.ndarray:
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float32)


def _positive(scale: np.ndarray) -> np.ndarray:
    # An all-zero channel quantizes to zeros whatever its scale; 1.0 keeps the division finite.
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def weight_scale_maxabs(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-output-channel scale that maps max|w| to the largest integer."""
    _, qmax = weight_qrange(bits)
    return _positive(_per_channel_absmax(w) / np.float32(qmax))


def weight_scale_mse(w: np.ndarray, bits: int, grid: int = MSE_GRID) -> np.ndarray:
    """Per-output-channel scale whose clipping minimises ||Q(w) - w||^2 on the narrow range (grid search)."""
    _, qmax = weight_qrange(bits)
    flat = w.reshape(w.shape[0], -1).astype(np.float32)
    absmax = _per_channel_absmax(w)
    best_scale = _positive(absmax / np.float32(qmax))
    best_err = np.full(w.shape[0], np.inf, dtype=np.float64)
    for ratio in np.linspace(1.0, 0.2, grid, dtype=np.float32):
        scale = _positive(absmax * ratio / np.float32(qmax))
        err = ((dequantize(quantize(flat, scale[:, None], 0, -qmax, qmax), scale[:, None], 0) - flat) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    return best_scale.astype(np.float32)


def weight_scale(w: np.ndarray, bits: int, method: str = "maxabs") -> np.ndarray:
    if method == "maxabs":
        return weight_scale_maxabs(w, bits)
    if method == "mse":
        return weight_scale_mse(w, bits)
    raise ValueError(f"unknown weight scale method {method!r} (maxabs or mse)")


def _broadcast_channel(scale: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(scale, np.float32).reshape((-1,) + (1,) * (ndim - 1))


def quantize(x: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), as int32."""
    q = np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32)) + np.asarray(zero_point, np.float32)
    return np.clip(q, qmin, qmax).astype(np.int32)


def dequantize(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale in float32."""
    return ((np.asarray(q, np.int32) - np.asarray(zero_point, np.int32)).astype(np.float32)
            * np.asarray(scale, np.float32))


def quantize_weight(w: np.ndarray, scale: np.ndarray, bits: int, weight_range: str = "narrow") -> np.ndarray:
    """Integer weights (int32 array) for per-channel scales along axis 0."""
    qmin, qmax = weight_qrange(bits, weight_range)
    return quantize(w, _broadcast_channel(scale, w.ndim), 0, qmin, qmax)


def fake_quantize_weight_np(w: np.ndarray, scale: np.ndarray, bits: int, weight_range: str = "narrow") -> np.ndarray:
    return dequantize(quantize_weight(w, scale, bits, weight_range), _broadcast_channel(scale, w.ndim), 0)


def weight_perturbation(w: np.ndarray, bits: int, method: str = "maxabs", weight_range: str = "narrow") -> float:
    """||Q(W) - W||^2, the quantization perturbation in HAWQ-V2's Omega."""
    return weight_perturbation_at(w, weight_scale(w, bits, method), bits, weight_range)


def weight_perturbation_at(w: np.ndarray, scale: np.ndarray, bits: int, weight_range: str = "narrow") -> float:
    """||Q(W) - W||^2 for given per-channel scales (they do not depend on the weight range)."""
    wq = fake_quantize_weight_np(w, scale, bits, weight_range)
    return float(((wq.astype(np.float64) - w.astype(np.float64)) ** 2).sum())


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """(scale, zero_point) for a tensor observed in [lo, hi]; zero point 0 when lo >= 0."""
    qmin, qmax = activation_qrange(bits)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = float(np.float32((hi - lo) / (qmax - qmin)))
    zero_point = 0 if lo == 0.0 else int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    return scale, zero_point


def bias_scale(weight_scale_per_channel: np.ndarray, input_scale: float) -> np.ndarray:
    return (np.asarray(weight_scale_per_channel, np.float32) * np.float32(input_scale)).astype(np.float32)


def quantize_bias(b: np.ndarray, weight_scale_per_channel: np.ndarray, input_scale: float) -> np.ndarray:
    s = bias_scale(weight_scale_per_channel, input_scale)
    return quantize(b, s, 0, *BIAS_QRANGE)


def weight_bytes(params: int, bits: int | None) -> float:
    """Nominal weight bytes (params x bits / 8), the measure HAWQ's compression ratios use."""
    return params * (FLOAT_BITS if bits is None else bits) / 8.0


def storage_bytes(params: int, bits: int | None) -> int:
    """Bytes the packed initializer occupies in the ONNX file."""
    b = FLOAT_BITS if bits is None else STORAGE_BITS[bits]
    return (params * b + 7) // 8


# --- torch twins (same arithmetic; used by the fake-quant modules) -------------------------

def fake_quantize_torch(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float,
                        qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize with torch.round (half to even, as ONNX). No gradient trick here:
    the straight-through estimator lives in fake_quant.py."""
    return fake_quantize_torch_with_mask(x, scale, zero_point, qmin, qmax, mask=False)[0]


def fake_quantize_torch_with_mask(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float,
                                  qmin: int, qmax: int, *, mask: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``fake_quantize_torch`` and, with ``mask``, where the value was not saturated (the STE's
    pass-through region), computed from the same unclamped integers."""
    q = torch.round(x / scale) + zero_point
    inside = (q >= qmin) & (q <= qmax) if mask else None
    return (q.clamp_(qmin, qmax) - zero_point) * scale, inside
