"""Analysis forms: ops rewritten, during the Hessian analysis only, into forms that have a double backward.

The Hessian products need a double backward through everything after each layer, and PyTorch
lacks some: ``aten::hardsigmoid_backward`` (MobileNetV3's squeeze-excite gates) and the fused
attention kernels (``_scaled_dot_product_flash_attention_for_cpu_backward`` behind
``F.scaled_dot_product_attention``). While the per-batch graphs are built:

- attention runs on PyTorch's math backend (``sdpa_kernel(SDPBackend.MATH)``): matmul, softmax
  and masking, each with its double backward; the values differ from the fused kernel's by
  rounding only;
- hardsigmoid (and hardswish, should this torch lack its double backward: torch 2.4-2.13 have
  it) is replaced by a stand-in: a custom autograd Function that calls aten's own forward (the
  same values, bit for bit, by construction) and writes aten's backward formula in
  differentiable ops (the same first derivative, kinks included, to within one rounding), so
  that its derivative, the double backward, exists. The Hessian is the same piecewise object:
  these forms change nothing in the result, only make it computable. (``x * clamp(x + 3, 0, 6)
  / 6`` has the same values but not the same derivative at and next to the kinks: x + 3
  rounds to 6 for x just below 3, and clamp's derivative there is 1 where aten's is 0.)

An op is replaced only where this torch lacks its double backward (probed once on a tiny
tensor), so the exact native product is kept wherever it exists.

Why a torch function mode and not swapped modules or a patched ``torch.nn.functional``: the
mode sees every call, from ``nn.Hardsigmoid`` (which calls ``F.hardsigmoid``), from
``F.hardsigmoid`` however it was imported (``from torch.nn.functional import hardsigmoid``
binds the function before any patch could), and from ``torch._C._nn.hardsigmoid`` itself; it
touches neither the user's module nor any global, and ends with its ``with`` block. TorchScript
code bypasses it, as it bypasses any Python-level rewrite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

SDPA_MATH = "sdpa-math"


class _Hardsigmoid(torch.autograd.Function):
    """hardsigmoid with aten's forward and its backward in differentiable ops."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch._C._nn.hardsigmoid(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # aten: grad / 6 strictly inside (-3, 3), tested on x itself (x + 3 would round near the kinks)
        return torch.where((x > -3.0) & (x < 3.0), grad * (1.0 / 6.0), grad.new_zeros(()))


class _Hardswish(torch.autograd.Function):
    """hardswish with aten's forward and its backward in differentiable ops."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch._C._nn.hardswish(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        inside = torch.where(x < 3.0, grad * (x / 3.0 + 0.5), grad)
        return torch.where(x <= -3.0, grad.new_zeros(()), inside)


def hardsigmoid_form(x: torch.Tensor) -> torch.Tensor:
    return _Hardsigmoid.apply(x)


def hardswish_form(x: torch.Tensor) -> torch.Tensor:
    return _Hardswish.apply(x)


# name -> (the stand-in, the callables it replaces: functional and out-of-place builtin, in-place builtin)
STAND_INS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[Callable, ...], tuple[Callable, ...]]] = {
    "hardsigmoid": (hardsigmoid_form, (F.hardsigmoid, torch._C._nn.hardsigmoid), (torch._C._nn.hardsigmoid_,)),
    "hardswish": (hardswish_form, (F.hardswish, torch._C._nn.hardswish), (torch._C._nn.hardswish_,)),
}


@functools.cache
def lacks_double_backward(name: str) -> bool:
    """Whether this torch's ``name`` op has no double backward (a 4-element probe, once)."""
    op = STAND_INS[name][1][1]
    x = torch.tensor([-4.0, -1.0, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(op(x).pow(2).sum(), x, create_graph=True)
    try:
        torch.autograd.grad(g.sum(), x)
    except RuntimeError:
        return True
    return False


def _in_place(form: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    # The form saves its input for backward: compute it on a copy, so that writing x is allowed.
    return x.copy_(form(x.clone()))


class AnalysisForms(TorchFunctionMode):
    """Runs stand-ins in place of the ops without double backward and logs, in call order, the
    forms met on tensors that need gradients (``events``): a layer that ran before an event is
    one whose products may pass through that form."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self._out_of_place: dict[Any, tuple[str, Callable]] = {}
        self._in_place: dict[Any, tuple[str, Callable]] = {}
        for name, (form, functions, in_place) in STAND_INS.items():
            if lacks_double_backward(name):
                self._out_of_place.update({f: (name, form) for f in functions})
                self._in_place.update({f: (name, form) for f in in_place})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args[:3]):
                self.events.append(SDPA_MATH)
        elif func in self._out_of_place or func in self._in_place:
            name, form = self._out_of_place.get(func) or self._in_place[func]
            x = args[0] if args else kwargs["input"]
            if x.requires_grad:
                self.events.append(name)
            if func in self._in_place or kwargs.get("inplace", args[1] if len(args) > 1 else False):
                return _in_place(form, x)
            return form(x)
        return func(*args, **kwargs)

    def since(self, index: int) -> list[str]:
        """The distinct forms met from event ``index`` on, in first-met order."""
        return list(dict.fromkeys(self.events[index:]))


@contextmanager
def analysis_forms(forms: AnalysisForms) -> Iterator[AnalysisForms]:
    """While the analysis builds its graphs: attention on the math backend, stand-ins in place."""
    with sdpa_kernel(SDPBackend.MATH), forms:
        yield forms
