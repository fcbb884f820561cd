"""The quantizer modules of fake quantization: the rounding with its gradients, and one quantizer
for weights (per output channel) and one for activations (per tensor), each owning its step size.

:mod:`hawq_onnx.qat.fake_quant` wraps layers with them (the module swap); see its docstring for
how the pieces fit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from hawq_onnx.core.grid import (
    activation_qparams,
    activation_qrange,
    fake_quantize_torch,
    fake_quantize_torch_with_mask,
    weight_qrange,
    weight_scale,
)
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import ActivationQuant
from hawq_onnx.qat.observers import DEFAULT_OBSERVER, Observer, make_observer

# A learned step size is kept above this so that it stays a valid ONNX scale.
MIN_SCALE = 1e-8
DEFAULT_WEIGHT_METHOD = "mse"


class FakeQuantSTE(torch.autograd.Function):
    """x_hat = (saturate(round(x / s) + z) - z) * s, with STE and LSQ gradients.

    d x_hat / d x = 1 where the value is not saturated, 0 where it is (STE);
    d x_hat / d s = round(x/s) - x/s inside, (qmin - z) or (qmax - z) when saturated (LSQ),
    times ``grad_factor`` (LSQ's 1/sqrt(N * qmax), N the elements of the quantized tensor, as
    the LSQ reference implementations count them) and summed to the scale's shape.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                qmin: int, qmax: int, grad_factor: float) -> torch.Tensor:
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return fake_quantize_torch(x, scale, zero_point, qmin, qmax)
        # The unsaturated mask is kept so that backward need not round again.
        x_hat, inside = fake_quantize_torch_with_mask(x, scale, zero_point, qmin, qmax)
        # x_hat is the next layer's input, which autograd keeps anyway: saving it costs no memory.
        ctx.save_for_backward(x, x_hat, inside, scale)
        ctx.grad_factor = grad_factor
        return x_hat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, x_hat, inside, scale = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            # d x_hat / d s = x_hat / s - (x / s) * inside: round(v) - v inside, (qmin - z) or
            # (qmax - z) where saturated; the division by s comes after the sum (s is constant
            # over each summed group), which saves a full pass over x.
            d = torch.where(inside, x_hat - x, x_hat)
            grad_scale = (grad * d).sum_to_size(scale.shape) * (ctx.grad_factor / scale)
        return grad_x, grad_scale, None, None, None, None


def _positive(scale: torch.Tensor) -> torch.Tensor:
    # Equal to the parameter while it is positive (so exported values match bit for bit).
    return scale.abs().clamp_min(MIN_SCALE)


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric weight quantizer (narrow or full signed range), learned or frozen step."""

    def __init__(self, bits: int, out_channels: int, weight_range: str = "narrow") -> None:
        super().__init__()
        self.bits = bits
        self.weight_range = weight_range
        self.qmin, self.qmax = weight_qrange(bits, weight_range)
        self.scale = nn.Parameter(torch.ones(out_channels), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(()))

    def init_scale(self, weight: torch.Tensor, method: str = DEFAULT_WEIGHT_METHOD) -> None:
        """Scales from the current weight: max|w| per channel, or MSE-optimal clipping."""
        s = weight_scale(weight.detach().float().cpu().numpy(), self.bits, method)
        self.set_scale(s)

    def set_scale(self, scale) -> None:
        s = torch.as_tensor(np.asarray(scale, np.float32))
        if s.shape != self.scale.shape:
            raise HawqError(f"{s.numel()} weight scales for {self.scale.numel()} channels")
        with torch.no_grad():
            self.scale.copy_(s)

    def effective_scale(self) -> torch.Tensor:
        return _positive(self.scale)

    def channel_scale(self, ndim: int) -> torch.Tensor:
        """The effective scale shaped (C, 1, ...) to broadcast over a weight of ``ndim`` dimensions."""
        return self.effective_scale().reshape((-1,) + (1,) * (ndim - 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.channel_scale(w.dim())
        grad_factor = 1.0 / math.sqrt(w.numel() * self.qmax)  # LSQ's 1/sqrt(N * qmax)
        return FakeQuantSTE.apply(w, s, self.zero_point, self.qmin, self.qmax, grad_factor)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, range={self.weight_range}, channels={self.scale.numel()}"


class ActivationFakeQuant(nn.Module):
    """Per-tensor unsigned activation quantizer.

    States: ``uncalibrated`` (refuses to run), ``observe`` (passes values through to an
    observer), ``quantize``. The zero point is fixed at calibration; the scale may be learned.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.qmin, self.qmax = activation_qrange(bits)
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(()))
        self.state = "uncalibrated"
        self.observer: Observer | None = None

    def start_observing(self, method: str = DEFAULT_OBSERVER) -> None:
        self.observer = make_observer(method, self.bits)
        self.state = "observe"

    def finish_observing(self) -> None:
        if self.observer is None:
            raise RuntimeError("finish_observing() without start_observing()")
        lo, hi = self.observer.range()
        self.observer = None
        self.set_qparams(*activation_qparams(lo, hi, self.bits))

    def set_qparams(self, scale: float, zero_point: int) -> None:
        with torch.no_grad():
            self.scale.fill_(float(np.float32(scale)))
            self.zero_point.fill_(int(zero_point))
        self.state = "quantize"

    def effective_scale(self) -> torch.Tensor:
        return _positive(self.scale)

    def qparams(self) -> ActivationQuant:
        if self.state != "quantize":
            raise RuntimeError("activation quantizer is not calibrated")
        return ActivationQuant(self.bits, float(self.effective_scale().detach().cpu()), int(self.zero_point.item()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state == "quantize":
            grad_factor = 1.0 / math.sqrt(x.numel() * self.qmax)  # LSQ's 1/sqrt(N * qmax), N with the batch
            return FakeQuantSTE.apply(x, self.effective_scale(), self.zero_point, self.qmin, self.qmax, grad_factor)
        if self.state == "observe" and self.observer is not None:
            if not torch.isfinite(x).all():
                raise HawqError("calibration met NaN or Inf activations: the weights have blown up (lower the learning rate) "
                                "or the inputs overflow")
            self.observer.observe(x.detach())
            return x
        raise RuntimeError("activation quantizer is not calibrated: run fake_quant.calibrate() first")

    def extra_repr(self) -> str:
        return f"bits={self.bits}, state={self.state}"
