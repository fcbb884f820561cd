"""Fake quantization in PyTorch: the module swap that inserts the quantizers (``quantizers.py``).

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
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq_onnx.core import model_inputs
from hawq_onnx.core.grid import BIAS_QRANGE
from hawq_onnx.core.layers import QUANTIZABLE
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.plan import Plan
from hawq_onnx.qat.observers import DEFAULT_OBSERVER
from hawq_onnx.qat.quantizers import (
    DEFAULT_WEIGHT_METHOD,
    ActivationFakeQuant,
    FakeQuantSTE,
    WeightFakeQuant,
)
from hawq_onnx.qat.weight_view import WeightView


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
