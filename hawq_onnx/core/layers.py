"""Which modules hawq-onnx quantizes, and what they cost (parameters, MACs at batch 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.model_inputs import InputShape
from hawq_onnx.errors import HawqError, OptionError

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    name: str          # PyTorch module path, the layer's identity everywhere (layer1.0.conv1)
    kind: str          # conv1d | conv2d | linear
    params: int        # weight elements (bias excluded: it is stored in int32/float)
    out_channels: int
    macs: int          # multiply-accumulates at batch 1


def _kind(m: nn.Module) -> str:
    return {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear"}[type(m)] if type(m) in (
        nn.Conv1d, nn.Conv2d, nn.Linear) else type(m).__name__.lower()


def quantizable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE) and n]


def run_once(model: nn.Module, input_shape: InputShape) -> torch.Tensor:
    """One forward pass on one sample of zeros (ones for integer inputs), its class scores, or a
    HawqError saying it fails."""
    param = next(model.parameters(), None)
    x = model_inputs.example(input_shape, 1, seed=None, dtype=param.dtype if param is not None else torch.float32,
                             device=param.device if param is not None else "cpu")
    try:
        with torch.no_grad():
            return model_inputs.scores(model_inputs.call(model, x))
    except HawqError:
        raise
    except Exception as exc:
        what = f"inputs {model_inputs.describe(input_shape)}" if not model_inputs.is_single(input_shape) \
            else f"an input of shape (1, {', '.join(map(str, input_shape))})"
        cause = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if model_inputs.is_single(input_shape):
            raise OptionError(f"the model does not run on {what} ({cause}); check {{input_shape}} and the "
                              "model's forward", "input_shape") from None
        raise HawqError(f"the model does not run on {what} ({cause}); a dict batch's entries are keyword inputs: "
                        "pass input_fn to say what the model takes") from None


def describe_layers(model: nn.Module, input_shape: InputShape) -> list[LayerInfo]:
    """Every quantizable layer in module order, with MACs from one batch-1 forward pass."""
    modules = quantizable_modules(model)
    if not modules:
        raise HawqError("the model has no quantizable layer (Conv1d, Conv2d or Linear): there is nothing to quantize")
    macs: dict[str, int] = {}

    def hook(name: str):
        def fn(mod: nn.Module, inputs, output):
            out_elems = output.numel()
            if isinstance(mod, nn.Linear):
                macs[name] = macs.get(name, 0) + out_elems * mod.in_features
            else:
                per_out = mod.weight[0].numel()  # (C_in / groups) * kernel
                macs[name] = macs.get(name, 0) + out_elems * per_out
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules]
    try:
        run_once(model, input_shape)
    finally:
        for h in handles:
            h.remove()
    return [LayerInfo(n, _kind(m), int(m.weight.numel()), int(m.weight.shape[0]), int(macs.get(n, 0)))
            for n, m in modules]
