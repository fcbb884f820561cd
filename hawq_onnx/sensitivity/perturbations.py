"""What quantization does to each layer's weights and inputs: the ||Q(W) - W||^2 of every
candidate weight format (HAWQ-V2's Omega) and the mean per-sample ||Q(x) - x||^2 of the input at
4 and 8 activation bits, with the input's size and calls per forward pass. No Hessian here:
:mod:`hawq_onnx.sensitivity.hessian` weighs these by the traces."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from hawq_onnx.core import grid as quantization
from hawq_onnx.core import model_inputs
from hawq_onnx.io.sensitivity_report import perturbation_key
from hawq_onnx.sensitivity.products import Batch


# --- observers: activation ranges and quantization perturbations ------------------------------

@dataclass
class InputStats:
    calls: int                     # calls per forward pass
    elements: int                  # input elements per sample, all calls
    perturbation: dict[str, float]  # a_bits -> mean per-sample ||Q(x) - x||^2


def input_perturbation(model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[Batch],
                        device: torch.device) -> dict[str, InputStats]:
    """Per layer: calls, input elements per sample and the mean per-sample ||Q(x) - x||^2 per a_bits.

    Two no-grad passes: an observer of the input range (min/max), then Q with the per-tensor
    qparams of that range. A layer called several times counts all its inputs."""
    lo = {n: math.inf for n in modules}
    hi = {n: -math.inf for n in modules}
    elements = {n: 0 for n in modules}
    calls = {n: 0 for n in modules}
    squared = {n: {b: 0.0 for b in quantization.ACTIVATION_BITS} for n in modules}
    qparams: dict[str, dict[int, tuple[float, int]]] = {}
    first_batch = True

    def observe(name: str):
        def fn(mod, inputs):
            x = inputs[0].detach()
            lo[name], hi[name] = min(lo[name], float(x.min())), max(hi[name], float(x.max()))
            if first_batch:
                elements[name] += x[0].numel()
                calls[name] += 1
        return fn

    def perturb(name: str):
        def fn(mod, inputs):
            x = inputs[0].detach().float().cpu().numpy()
            for bits, (scale, zero_point) in qparams[name].items():
                qmin, qmax = quantization.activation_qrange(bits)
                xq = quantization.dequantize(quantization.quantize(x, scale, zero_point, qmin, qmax), scale, zero_point)
                squared[name][bits] += float(((xq.astype(np.float64) - x) ** 2).sum())
        return fn

    def run(hook) -> None:
        nonlocal first_batch
        handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
        try:
            with torch.no_grad():
                for x, _ in batches:
                    model_inputs.call(model, model_inputs.to_device(x, device))
                    first_batch = False
        finally:
            for h in handles:
                h.remove()

    run(observe)
    qparams.update({n: {b: quantization.activation_qparams(lo[n], hi[n], b) for b in quantization.ACTIVATION_BITS}
                    for n in modules if elements[n]})
    run(lambda n: perturb(n) if n in qparams else (lambda mod, inputs: None))
    total = sum(len(y) for _, y in batches)
    return {n: InputStats(calls[n], elements[n], {str(b): v / total for b, v in squared[n].items()} if n in qparams else {})
            for n in modules}


def weight_perturbations(weight: torch.Tensor) -> dict[str, dict[str, float]]:
    """||Q(W) - W||^2 for every candidate bit width, scale method and weight range (HAWQ-V2's Omega).

    Keyed ``perturbation_key(method, weight_range)``: ``maxabs``, ``mse``, ``maxabs-full``, ``mse-full``.
    """
    w = weight.detach().float().cpu().numpy()
    tables: dict[str, dict[str, float]] = {}
    for method in ("maxabs", "mse"):
        for b in quantization.WEIGHT_BITS:
            scale = quantization.weight_scale(w, b, method)  # one search serves both ranges
            for wr in quantization.WEIGHT_RANGES:
                tables.setdefault(perturbation_key(method, wr), {})[str(b)] = \
                    quantization.weight_perturbation_at(w, scale, b, wr)
    return tables


