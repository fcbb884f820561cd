"""The fallback product: Hessian-vector products by central finite differences of gradients.

Used for a layer only when its exact product (a double backward, see
:mod:`hawq_onnx.sensitivity.products`) meets an op that has none and that no analysis form
(:mod:`hawq_onnx.sensitivity.analysis_forms`) replaces:

    H v ~ (g(w + eps v) - g(w - eps v)) / (2 eps),    g = dL/dW_i,

two forward and backward passes per batch instead of one double backward. The same difference
of the gradients w.r.t. the layer's output, with the output moved by eps u, u = f(z, W), gives
the input-activation samples u^T (d^2 L / do^2) u.

The step, and why in float64. A ReLU network's gradient is piecewise smooth: a step that
carries a unit across its kink adds (jump) / (2 eps) to the difference, which does not shrink
with eps; only the chance of a crossing does (it is proportional to eps). So the step must be as
small as rounding allows, and float32 allows none that works: on the digits CNN, float32 central
differences were off by 7-1700 % at every relative step from 1e-2 to 1e-8 (kinks above 1e-5,
rounding below). The differences are therefore taken on a float64 copy of the model, with
eps ||v|| = sqrt(mach_eps) ||w||, i.e. eps = 1.5e-8 ||w|| / ||v||: rounding then costs about
sqrt(mach_eps) = 1.5e-8 relative, truncation (eps^2) nothing, and kink crossings are rare.
Scaling by ||w|| / ||v|| makes the step the same fraction of the weights whatever their scale.
The input samples take the same relative step on the layer's input: eps = 1.5e-8 ||x|| / ||z||.
A base with no size of its own (an input of dead ReLUs is all zeros) is given one of 1e-3 per
element, or the step would be lost in rounding.

Measured on the digits CNN (one batch of 256 training samples, seed 0) against the exact
products (float32): H v off by 0.9-3.0e-6 relative in all 6 layers (4 Rademacher probes each),
input-activation samples by 0.5e-7-3e-6: the float32 exact product's own rounding. Relative steps
of 1e-6 to 1e-8 all agree so; 1e-5 already crosses kinks (18-1300 %).
With every layer on finite differences, the default analysis (seed 0) gave the same top
eigenvalues to 0.7-4.9e-7, traces to 1.2e-7-1.6e-6 and activation traces to 4-13e-7 relative,
in 7x the time of the exact one (101.7 s against 14.4 s): benchmarks/bench_finite_differences.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.sensitivity.estimators import _dot, rademacher

# The errors that say an op has no double backward: aten's "derivative for aten::X is not
# implemented" and autograd.Function's once_differentiable. Any other error stays an error.
NO_DOUBLE_BACKWARD = re.compile(r"derivative for \S+ is not implemented|marked with @once_differentiable")

Forward = Callable[[], torch.Tensor]  # runs the model on one batch and returns the loss


def lacks_double_backward(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and NO_DOUBLE_BACKWARD.search(str(exc)) is not None


DTYPE = torch.float64
RELATIVE_STEP = float(torch.finfo(DTYPE).eps) ** 0.5
FLOOR = 1e-3  # per element: below the size of any weight or activation that matters
LABEL = f"finite differences (central, float64, eps = {RELATIVE_STEP:.1e} ||w|| / ||v||)"


def double(x: Any) -> Any:
    """Inputs (or labels) in the float64 copy's precision; integer ones (token ids) as they are."""
    if isinstance(x, tuple):
        return tuple(double(v) for v in x)
    if isinstance(x, dict):
        return {k: double(v) for k, v in x.items()}
    return x.to(DTYPE) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def step(base: torch.Tensor) -> float:
    """eps ||v||: RELATIVE_STEP of ||base||, or of an element size of FLOOR where the base has
    none (an input of dead ReLUs is all zeros, and a step relative to 0 is lost in rounding)."""
    return RELATIVE_STEP * max(float(base.norm()), FLOOR * base.numel() ** 0.5)


@contextmanager
def _weight_as(module: nn.Module, weight: torch.Tensor) -> Iterator[None]:
    # Swapped into this module only (not its Parameter's storage: the cached graphs saved it, and
    # a tied copy elsewhere must keep its value, as the exact product, through this layer, does).
    original = module._parameters["weight"]
    module._parameters["weight"] = weight
    try:
        yield
    finally:
        module._parameters["weight"] = original


def weight_hvp(module: nn.Module, forward: Forward, v: torch.Tensor) -> torch.Tensor:
    """H_W v for one batch: (g(w + eps v) - g(w - eps v)) / (2 eps), on the float64 copy."""
    w0 = module.weight.detach()
    v = v.to(w0.dtype)
    v_norm = float(v.norm())
    if v_norm == 0.0:
        return torch.zeros_like(v)
    eps = step(w0) / v_norm
    grads = []
    for sign in (1.0, -1.0):
        w = (w0 + (sign * eps) * v).requires_grad_(True)
        with _weight_as(module, w), torch.enable_grad():
            grads.append(torch.autograd.grad(forward(), w, allow_unused=True)[0])
    if grads[0] is None:
        return torch.zeros_like(v)
    return (grads[0] - grads[1]) / (2.0 * eps)


def input_quadratic(module: nn.Module, f: Callable, forward: Forward, gen: torch.Generator) -> float:
    """One sample z^T H_x z = sum over calls u^T (d^2 L / do^2) u, u = f(z, W), with the
    gradients w.r.t. the layer's outputs differenced as those outputs move by +-eps u (eps
    relative to the first call's input, which this layer's own move cannot reach)."""
    weight = module.weight.detach()
    probes: list[torch.Tensor] = []   # u per call, drawn on the first pass, reused on the second
    moved: list[torch.Tensor] = []
    state = {"call": 0, "eps": 0.0, "sign": 1.0}

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        c = state["call"]
        state["call"] += 1
        if len(probes) <= c:
            x = inputs[0].detach()
            z = rademacher(x.numel(), gen, x).view_as(x)
            probes.append(f(z, weight))
            if c == 0:
                state["eps"] = step(x) / float(z.norm())
        out = output + (state["sign"] * state["eps"]) * probes[c]
        if not out.requires_grad:  # nothing upstream needs a gradient: a fresh leaf is exact
            out.requires_grad_(True)
        moved.append(out)
        return out.clone()  # in-place ops downstream (ReLU(inplace)) must not rewrite `out`

    handle = module.register_forward_hook(hook)
    grads = []
    try:
        for sign in (1.0, -1.0):
            state.update(call=0, sign=sign)
            moved.clear()
            with torch.enable_grad():
                loss = forward()
                grads.append(torch.autograd.grad(loss, moved, allow_unused=True) if moved else ())
    finally:
        handle.remove()
    total = 0.0
    for u, gp, gm in zip(probes, *grads):
        if gp is not None and gm is not None:
            total += _dot(u.flatten(), ((gp - gm) / (2.0 * state["eps"])).flatten())
    return total


def batch_forward(model: nn.Module, x: model_inputs.Batch, y: torch.Tensor, loss_fn: Callable) -> Forward:
    """The loss of the float64 ``model`` on one batch, inputs and floating labels made float64."""
    x, y = double(x), double(y)
    return lambda: loss_fn(model_inputs.scores(model_inputs.call(model, x)), y)


# autograd's stand-in nodes for a backward that has no derivative: NotImplemented raises when
# reached; Error (once_differentiable) does not always: its edges skip the forward's inputs, so a
# double backward can silently find no path and return zero. Layers above one take the fallback.
_NO_DERIVATIVE_NODES = ("torch::autograd::Error", "torch::autograd::DelayedError")


def _reaches_error_node(roots: list) -> bool:
    seen: set = set()
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.name() in _NO_DERIVATIVE_NODES:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return False


def silent_layers(first_order: dict[str, list[torch.Tensor]]) -> set[str]:
    """The layers whose first-order graph (dL/do, per call) passes a once_differentiable backward."""
    grad_fns = {name: [g.grad_fn for g in grads] for name, grads in first_order.items()}
    if not _reaches_error_node([fn for fns in grad_fns.values() for fn in fns]):  # one walk in the usual case
        return set()
    return {name for name, fns in grad_fns.items() if _reaches_error_node(fns)}
