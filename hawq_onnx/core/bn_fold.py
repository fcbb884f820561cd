"""Fold BatchNorm into the convolution or linear layer that feeds it, in PyTorch.

hawq-onnx quantizes the folded weights (HAWQ-V3): sensitivity, allocation, fine-tuning and
export all see the same tensors, and torch's ONNX export (which folds BN itself, under the
original parameter names) then finds nothing left to fold. Folding freezes the running
statistics: fine-tuning after it trains the folded weights and biases directly, the "frozen
statistics" choice of HAWQ-V3 taken from the first step.

Pairs are found on the torch.fx graph (a BN whose input is a conv used by nothing else); a
model fx cannot trace falls back to matching tensors seen in one forward pass.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.layers import QUANTIZABLE
from hawq_onnx.core.model_inputs import InputShape

log = logging.getLogger(__name__)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), QUANTIZABLE) and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_traced(model: nn.Module, example: model_inputs.Batch) -> list[tuple[str, str]]:
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, QUANTIZABLE):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name: produced.__setitem__(id(o), name)))
        elif isinstance(m, _BN):
            handles.append(m.register_forward_pre_hook(
                lambda mod, i, name=name: pairs.append((produced[id(i[0])], name)) if id(i[0]) in produced else None))
    try:
        with torch.no_grad():
            model_inputs.call(model, example)
    finally:
        for h in handles:
            h.remove()
    return pairs


def fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    """W' = W * g / sqrt(var + eps) per output channel; b' = (b - mean) * g / sqrt(var + eps) + beta."""
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        layer.weight.mul_(factor.reshape((-1,) + (1,) * (layer.weight.dim() - 1)))
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(layer.weight.dtype))
        else:
            layer.bias.copy_(new_bias)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def fold_batchnorm(model: nn.Module, input_shape: InputShape) -> list[tuple[str, str]]:
    """Fold every conv/linear -> BN pair in place (eval mode); returns the folded pairs.

    The model's own code is untouched: each folded BN module is swapped for nn.Identity.
    """
    model.eval()
    param = next(model.parameters(), None)
    if param is None:  # no parameters, no BatchNorm to fold
        return []
    example = model_inputs.example(input_shape, 2, seed=0, dtype=param.dtype, device=param.device)
    try:
        pairs = _pairs_fx(model)
    except Exception as exc:  # dynamic control flow: fx cannot trace every model
        log.info("torch.fx could not trace the model (%s); pairing BatchNorm by a forward pass", exc.__class__.__name__)
        pairs = _pairs_traced(model, example)
    if not pairs:
        return []
    with torch.no_grad():
        before = model_inputs.scores(model_inputs.call(model, example))
    modules = dict(model.named_modules())
    for layer_name, bn_name in pairs:
        fold_pair(modules[layer_name], modules[bn_name])
        _replace(model, bn_name, nn.Identity())
    with torch.no_grad():
        after = model_inputs.scores(model_inputs.call(model, example))
    err = (after - before).abs().max().item()
    tol = 1e-3 * max(1.0, before.abs().max().item())
    if not err <= tol:
        raise RuntimeError(f"BatchNorm folding changed the model's output by {err:g}; this is a bug")
    return pairs


def fold_copy(module: nn.Module, input_shape: InputShape) -> nn.Module:
    """A BatchNorm-folded deepcopy in eval mode; ``module`` is untouched."""
    folded = copy.deepcopy(module)
    fold_batchnorm(folded, input_shape)
    return folded.eval()
