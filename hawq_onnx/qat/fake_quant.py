"""Fake quantization in PyTorch: quantizer modules and the module swap that inserts them.

The pieces, torch.ao style:
- ``FakeQuantSTE``: the rounding. Its forward value is ``quantization.fake_quantize_torch``
  (ONNX QuantizeLinear then DequantizeLinear, bit for bit); its backward is the
  straight-through estimator for the input and the LSQ gradient for the step size.
- ``WeightFakeQuant`` (per output channel, symmetric, the plan's weight range) and
  ``ActivationFakeQuant`` (per tensor, unsigned; zero point 0 after ReLU, asymmetric
  elsewhere; ranges from an observer in ``observers.py``): each owns a step size that is
  learned (LSQ) or frozen.
- ``QuantLayer``: wraps one conv or linear of the model: input quantizer -> layer with a
  fake-quantized weight and, where the input is quantized, an int32-grid bias of scale
  s_w * s_a (what the ONNX exporter stores).
- ``quantize_model(model, plan)``: a copy of a BatchNorm-folded model with each planned layer
  wrapped. A calibrated plan (scales and ranges set) gives the model as trained;
  ``region_grids.reference_model`` adds the exporter's grids between layers; ``export_plan_scales`` writes learned scales back into the plan and
  ``strip_fake_quant`` returns the float model with the fine-tuned weights.

The model must already be BatchNorm-folded (``bn_fold.fold_batchnorm``): weights are quantized
after folding, so BatchNorm statistics are frozen from the first step (HAWQ-V3's choice).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq_onnx.core import model_inputs
from hawq_onnx.core.grid import (
    BIAS_QRANGE,
    activation_qparams,
    activation_qrange,
    fake_quantize_torch,
    fake_quantize_torch_with_mask,
    weight_qrange,
    weight_scale,
)
from hawq_onnx.core.layers import QUANTIZABLE
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.plan import ActivationQuant, Plan
from hawq_onnx.qat.observers import DEFAULT_OBSERVER, Observer, make_observer
from hawq_onnx.qat.weight_view import WeightView

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


class QuantLayer(nn.Module):
    """One planned conv/linear: input quantizer (a_bits) -> layer with fake-quantized weight (w_bits).

    ``enabled = False`` runs the wrapped layer in float (used by staged fine-tuning);
    ``quantize_input = False`` leaves only the input float, the bias still on its int32 grid
    (the exporter matches tensors on such a model, see ``hawq_onnx.qat.region_grids``).
    """

    def __init__(self, layer: nn.Module, w_bits: int | None, a_bits: int | None, name: str = "",
                 weight_range: str = "narrow") -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise TypeError(f"cannot wrap {type(layer).__name__}")
        self.layer = layer
        self.path = name  # the module path, for messages
        self.w_bits, self.a_bits = w_bits, a_bits
        self.weight_quant = (WeightFakeQuant(w_bits, layer.weight.shape[0], weight_range)
                             if w_bits is not None else None)
        self.input_quant = ActivationFakeQuant(a_bits) if a_bits is not None else None
        self.enabled = True
        self.quantize_input = True

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias on the int32 grid of scale s_w * s_a where weight and input are quantized."""
        b = self.layer.bias
        if b is None or self.weight_quant is None or self.input_quant is None or self.input_quant.state != "quantize":
            return b
        # The bias follows the step sizes but does not train them: the exporter derives its scale.
        s = (self.weight_quant.effective_scale() * self.input_quant.effective_scale()).detach()
        return FakeQuantSTE.apply(b, s, torch.zeros((), device=b.device), *BIAS_QRANGE, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.layer(x)
        if self.input_quant is not None and self.quantize_input:
            x = self.input_quant(x)
        w = self.layer.weight if self.weight_quant is None else self.weight_quant(self.layer.weight)
        b = self.quantized_bias()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, b)
        return self.layer._conv_forward(x, w, b)  # honours padding_mode, stride, groups

    def __getattr__(self, name: str):
        # A model's forward may read its layer's settings (stride, out_features): pass them on. One
        # that reads the weight itself (F.conv2d(x, self.conv.weight)) would bypass the quantizer.
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules") or {}
            if name.startswith("_") or "layer" not in modules:
                raise
        if name in ("weight", "bias"):
            tensor = getattr(modules["layer"], name)
            return None if tensor is None else WeightView(tensor, self.path or "a quantized layer", name)
        return getattr(modules["layer"], name)

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}, enabled={self.enabled}"


def quant_layers(qmodel: nn.Module) -> dict[str, QuantLayer]:
    """The wrapped layers by their original module path (``layer1.0.conv1``)."""
    return {name: m for name, m in qmodel.named_modules() if isinstance(m, QuantLayer)}


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def quantize_model(model: nn.Module, plan: Plan, *, weight_method: str = DEFAULT_WEIGHT_METHOD) -> nn.Module:
    """A deepcopy of the BN-folded ``model`` with every layer of ``plan`` wrapped in a QuantLayer.

    Layers with w_bits None keep a float weight; a_bits None leaves their input float; layers
    with neither are not wrapped. Where the plan has scales (``weight_scale``, ``input_quant``)
    they are used exactly, frozen; otherwise weight scales come from the weights
    (``weight_method``) and activation quantizers wait for :func:`calibrate`. The exporter's
    grids between layers (``plan.region_grids``) are not inserted here:
    ``region_grids.reference_model`` does that, giving what the exported file computes. The
    result is in eval mode with every step size frozen (``requires_grad=False``); ``model`` is untouched.
    """
    qmodel = copy.deepcopy(model)
    qmodel.eval()
    modules = dict(qmodel.named_modules())
    for lp in plan.layers:
        layer = modules.get(lp.name)
        if not isinstance(layer, QUANTIZABLE) or not lp.name:
            raise HawqError(f"plan layer {lp.name!r} is not a Conv1d, Conv2d or Linear of the model; "
                            "allocate a plan for this model")
        if layer.weight.shape[0] != lp.out_channels:
            raise HawqError(f"plan layer {lp.name} has {lp.out_channels} output channels, the model "
                            f"{layer.weight.shape[0]}; allocate a plan for this model")
        if lp.w_bits is None and lp.a_bits is None:
            continue
        wrapped = QuantLayer(layer, lp.w_bits, lp.a_bits, lp.name, plan.weight_range)
        if wrapped.weight_quant is not None:
            if lp.weight_scale is not None:
                wrapped.weight_quant.set_scale(lp.weight_scale)
            else:
                wrapped.weight_quant.init_scale(layer.weight, weight_method)
        if wrapped.input_quant is not None and lp.input_quant is not None:
            if lp.input_quant.bits != lp.a_bits:
                raise HawqError(f"plan layer {lp.name}: input_quant has {lp.input_quant.bits} bits but a_bits "
                                f"is {lp.a_bits}")
            wrapped.input_quant.set_qparams(lp.input_quant.scale, lp.input_quant.zero_point)
        _set_submodule(qmodel, lp.name, wrapped)
    return qmodel.to(next(model.parameters()).device)


@torch.no_grad()
def calibrate(qmodel: nn.Module, batches, *, observer: str = DEFAULT_OBSERVER,
              weight_method: str = DEFAULT_WEIGHT_METHOD, layers: list[str] | None = None,
              device: str | torch.device | None = None) -> int:
    """Set the step sizes of ``layers`` (default: every wrapped layer) from data.

    Weight scales come from the current weights (``weight_method``); input ranges from an
    ``observer`` watching ``batches`` (an iterable of inputs or (input, label) pairs) pass
    through the model in eval mode. Other layers run as they are (quantized or not).
    Returns the number of samples seen.
    """
    wrapped = quant_layers(qmodel)
    names = list(wrapped) if layers is None else layers
    unknown = [n for n in names if n not in wrapped]
    if unknown:
        raise KeyError(f"not wrapped layers: {', '.join(unknown)}")
    was_training = qmodel.training
    qmodel.eval()
    enabled = {n: q.enabled for n, q in wrapped.items()}
    observing = []
    for name in names:
        q = wrapped[name]
        q.enabled = True
        if q.weight_quant is not None:
            q.weight_quant.init_scale(q.layer.weight, weight_method)
        if q.input_quant is not None:
            q.input_quant.start_observing(observer)
            observing.append(q.input_quant)
    seen = 0
    called: set[str] = set()
    hooks = [wrapped[n].register_forward_pre_hook(lambda m, i, n=n: called.add(n)) for n in names]
    try:
        for batch in batches:
            # (inputs, labels) as a split gives them, or the inputs alone (a tensor or a dict)
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if device is not None:
                x = model_inputs.to_device(x, device)
            model_inputs.call(qmodel, x)
            seen += model_inputs.count(x)
        if seen == 0:
            raise HawqError("calibration needs at least one sample; the calibration split is empty")
        uncalled = [n for n in names if n not in called]
        if uncalled:
            # Its quantizers would never run: the plan would claim a precision the model does not have.
            raise OptionError(f"the model's forward never calls layer {uncalled[0]}"
                              + (f" (nor {len(uncalled) - 1} more)" if len(uncalled) > 1 else "")
                              + f", so it cannot be quantized as planned: allocate with {{keep_float}} {uncalled[0]}",
                              "keep_float")
        for aq in observing:
            aq.finish_observing()
    finally:
        for h in hooks:
            h.remove()
        for aq in observing:
            if aq.state == "observe":
                aq.state, aq.observer = "uncalibrated", None
        for n, q in wrapped.items():
            q.enabled = enabled[n]
        qmodel.train(was_training)
    return seen


def set_scale_learning(qmodel: nn.Module, learn: bool) -> list[nn.Parameter]:
    """Make every step size learnable (LSQ) or frozen; returns the step-size parameters."""
    params = []
    for q in quant_layers(qmodel).values():
        for quantizer in (q.weight_quant, q.input_quant):
            if quantizer is not None:
                quantizer.scale.requires_grad_(learn)
                params.append(quantizer.scale)
    return params


def export_plan_scales(qmodel: nn.Module, plan: Plan) -> Plan:
    """A copy of ``plan`` with the model's step sizes (float32 values as python floats)."""
    wrapped = quant_layers(qmodel)
    layers = []
    for lp in plan.layers:
        q = wrapped.get(lp.name)
        if q is None:
            if lp.w_bits is not None or lp.a_bits is not None:
                raise HawqError(f"plan layer {lp.name} is not quantized in this model")
            layers.append(replace(lp))
            continue
        weight_scale = None
        if q.weight_quant is not None:
            weight_scale = [float(s) for s in q.weight_quant.effective_scale().detach().cpu().float().numpy()]
        input_quant = q.input_quant.qparams() if q.input_quant is not None else None
        layers.append(replace(lp, weight_scale=weight_scale, input_quant=input_quant))
    return replace(plan, layers=layers)


def float_state_dict(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """The folded float weights of a fake-quant model (what quantized.pt stores), on the CPU,
    keys as in the folded model."""
    return {k: v.detach().cpu() for k, v in strip_fake_quant(qmodel).state_dict().items()}


def strip_fake_quant(qmodel: nn.Module) -> nn.Module:
    """A copy of the folded float model with the (fine-tuned) weights: every QuantLayer unwrapped.

    Its state_dict keys are those of the folded model given to :func:`quantize_model`.
    """
    model = copy.deepcopy(qmodel)
    for name, q in quant_layers(model).items():
        _set_submodule(model, name, q.layer)
    return model
