"""The product engine: Hessian-block products H_i v from per-batch first-order graphs.

Each batch's forward and first-order backward are built once (create_graph=True) and reused by
every product of every layer; see "How the products are formed" in
:mod:`hawq_onnx.sensitivity.hessian`. The graphs are built under the analysis forms
(:mod:`hawq_onnx.sensitivity.analysis_forms`); a layer whose double backward still meets an op
without one takes finite differences (:mod:`hawq_onnx.sensitivity.finite_differences`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError
from hawq_onnx.sensitivity import finite_differences as fd
from hawq_onnx.sensitivity.analysis_forms import AnalysisForms, analysis_forms
from hawq_onnx.sensitivity.estimators import INPUT_PROBE, _dot, rademacher

Batch = tuple[model_inputs.Batch, torch.Tensor]  # (inputs, labels)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- the engine: block products from per-batch first-order graphs ---------------------------

def _bias_free(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f(x, W): the layer without its bias, linear in x and in W."""
    if isinstance(module, nn.Linear):
        return F.linear
    return lambda x, w: module._conv_forward(x, w, None)


@dataclass
class _Call:
    x: torch.Tensor       # the layer's input (a private copy: later in-place ops cannot touch it)
    o: torch.Tensor       # the layer's output, a node of the batch graph
    grad_o: torch.Tensor  # dL/do, built with create_graph=True


class _BatchGraph:
    """One batch's forward and first-order backward, kept for double backward."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], x: model_inputs.Batch, y: torch.Tensor,
                 loss_fn: LossFn, weight: float, shared: Sequence[str], forms: AnalysisForms) -> None:
        self.weight = weight
        captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in modules}
        first_event: dict[str, int] = {}
        forms.events.clear()

        def hook(name: str):
            def fn(mod: nn.Module, inputs, output):
                if not output.requires_grad:  # nothing upstream needs a gradient: a fresh leaf is exact
                    output = output.detach().requires_grad_(True)
                captured[name].append((inputs[0].detach().clone(), output))
                first_event.setdefault(name, len(forms.events))
                return output.clone()  # in-place ops downstream (ReLU(inplace)) must not rewrite `output`
            return fn

        handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
        try:
            with torch.enable_grad(), analysis_forms(forms):
                loss = loss_fn(model_inputs.scores(model_inputs.call(model, x)), y)
        finally:
            for h in handles:
                h.remove()
        # the forms met after a layer ran: those its products may pass through
        self.stand_ins = {name: forms.since(i) for name, i in first_event.items()}
        self.loss = float(loss.detach())
        if not math.isfinite(self.loss):
            raise HawqError(f"the loss is not finite ({self.loss}) on an analysis batch; check the weights and data")
        outputs = [o for calls in captured.values() for _, o in calls]
        shared_weights = [modules[name].weight for name in shared]
        with torch.enable_grad(), analysis_forms(forms):
            grads = torch.autograd.grad(loss, outputs + shared_weights, create_graph=True, allow_unused=True)
        it = iter(grads)
        self.calls = {name: [_Call(x_in, o, g) for (x_in, o), g in zip(calls, it) if g is not None]
                      for name, calls in captured.items()}
        # A layer called more than once feeds its own later input: its output is no longer linear
        # in W, so its block is taken by double backward w.r.t. W itself.
        self.weight_grads = {name: (w, g) for name, w, g in zip(shared, shared_weights, it)}

    def first_order(self) -> dict[str, list[torch.Tensor]]:
        """Per layer, the first-order gradients its products differentiate again."""
        out = {name: [c.grad_o for c in calls] for name, calls in self.calls.items()}
        out.update({name: [g] for name, (_, g) in self.weight_grads.items() if g is not None})
        return out

    def _output_hessian(self, calls: list[_Call], u: list[torch.Tensor]) -> list[torch.Tensor]:
        hu = torch.autograd.grad([c.grad_o for c in calls], [c.o for c in calls], u,
                                 retain_graph=True, allow_unused=True)
        return [torch.zeros_like(c.o) if h is None else h for c, h in zip(calls, hu)]

    def weight_hvp(self, name: str, f, weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H_W v = J^T (d2L/do2) J v for this batch."""
        if name in self.weight_grads:
            w, g = self.weight_grads[name]
            hv = None if g is None else torch.autograd.grad(g, w, v, retain_graph=True, allow_unused=True)[0]
            return torch.zeros_like(v) if hv is None else hv
        calls = self.calls[name]
        if not calls:
            return torch.zeros_like(v)
        hu = self._output_hessian(calls, [f(c.x, v) for c in calls])
        with torch.enable_grad():
            w = torch.zeros_like(weight, requires_grad=True)
            out = sum((f(c.x, w) * h).sum() for c, h in zip(calls, hu))
            return torch.autograd.grad(out, w)[0]

    def input_quadratic(self, name: str, f, weight: torch.Tensor, gen: torch.Generator) -> float:
        """One Hutchinson sample z^T H_x z with z Rademacher over this batch's layer inputs."""
        calls = self.calls[name]
        if not calls:
            return 0.0
        u = [f(rademacher(c.x.numel(), gen, c.x).view_as(c.x), weight) for c in calls]
        hu = self._output_hessian(calls, u)
        return sum(_dot(a.flatten(), b.flatten()) for a, b in zip(u, hu))


class _Products:
    """Hessian-block products summed over batches, weighted by batch size."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[Batch],
                 loss_fn: LossFn, device: torch.device, cache: bool, shared: Sequence[str]) -> None:
        self.model, self.modules, self.loss_fn, self.device, self.shared = model, modules, loss_fn, device, shared
        self.batches = batches
        total = sum(len(y) for _, y in batches)
        self.weights = [len(y) / total for _, y in batches]
        self.forms = AnalysisForms()
        self.stand_ins: dict[str, dict[str, None]] = {name: {} for name in modules}  # ordered sets
        self.fallback: set[str] = set()  # layers whose products are finite differences
        self._scanned = False
        self._double: dict[str, nn.Module] | None = None  # the float64 copy's layers, made at the first fallback
        self.cache: list[_BatchGraph] | None = list(self._build()) if cache else None
        self.f = {name: _bias_free(m) for name, m in modules.items()}

    def _build(self) -> Iterable[_BatchGraph]:
        for (x, y), w in zip(self.batches, self.weights):
            graph = _BatchGraph(self.model, self.modules, model_inputs.to_device(x, self.device), y.to(self.device),
                                self.loss_fn, w, self.shared, self.forms)
            for name, forms in graph.stand_ins.items():
                self.stand_ins[name].update(dict.fromkeys(forms))
            if not self._scanned:  # once: the graph's ops are the same on every batch
                self.fallback |= fd.silent_layers(graph.first_order())
                self._scanned = True
            yield graph

    def product(self, name: str) -> str:
        """How this layer's products were formed, as the report says it."""
        if name in self.fallback:
            return fd.LABEL
        forms = list(self.stand_ins[name])
        return "exact with analysis stand-ins: " + ", ".join(forms) if forms else "exact"

    def graphs(self) -> Iterable[_BatchGraph]:
        return self.cache if self.cache is not None else self._build()

    def round(self, requests: dict[str, Any], gens: dict[str, torch.Generator],
              seconds: dict[str, float]) -> dict[str, Any]:
        """The next product of every layer in `requests`, in one pass over the batch graphs."""
        replies: dict[str, Any] = {name: 0.0 if req is INPUT_PROBE else None for name, req in requests.items()}
        for graph in self.graphs():
            for name, req in requests.items():
                if name in self.fallback:
                    continue
                start = time.perf_counter()
                try:
                    replies[name] = self._add(replies[name], graph.weight, self._exact(graph, name, req, gens[name]))
                except RuntimeError as exc:
                    if not fd.lacks_double_backward(exc):
                        raise
                    self.fallback.add(name)  # from now on; this product is redone below
                seconds[name] += time.perf_counter() - start
        for name, req in requests.items():
            if name in self.fallback:
                start = time.perf_counter()
                replies[name] = self._finite_differences(name, req, gens[name])
                seconds[name] += time.perf_counter() - start
        return replies

    @staticmethod
    def _add(total: Any, weight: float, value: Any) -> Any:
        return weight * value if total is None else total + weight * value

    def _exact(self, graph: _BatchGraph, name: str, req: Any, gen: torch.Generator) -> Any:
        weight = self.modules[name].weight.detach()
        if req is INPUT_PROBE:
            return graph.input_quadratic(name, self.f[name], weight, gen)
        return self._finite(name, graph.weight_hvp(name, self.f[name], weight, req.view_as(weight)).flatten())

    def _double_layers(self) -> dict[str, nn.Module]:
        if self._double is None:
            model = copy.deepcopy(self.model).to(fd.DTYPE)
            layers = dict(model.named_modules())
            self._double = {name: layers[name] for name in self.modules}
            self._double_model = model
        return self._double

    def _finite_difference(self, name: str, req: Any, gen: torch.Generator, batch: int) -> Any:
        """One batch's finite-difference product, on the float64 copy, cast back to the layer's dtype."""
        module, (x, y) = self._double_layers()[name], self.batches[batch]
        forward = fd.batch_forward(self._double_model, model_inputs.to_device(x, self.device), y.to(self.device),
                                   self.loss_fn)
        try:
            with analysis_forms(self.forms):
                if req is INPUT_PROBE:
                    return fd.input_quadratic(module, _bias_free(module), forward, gen)
                hv = fd.weight_hvp(module, forward, req.view_as(module.weight))
        except (RuntimeError, TypeError) as exc:
            raise HawqError(f"layer {name}: the model has no double backward and its float64 copy, which finite "
                            f"differences need, fails ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        return self._finite(name, hv.to(self.modules[name].weight.dtype).flatten())

    def _finite_differences(self, name: str, req: Any, gen: torch.Generator) -> Any:
        total = None
        for batch, w in enumerate(self.weights):
            total = self._add(total, w, self._finite_difference(name, req, gen, batch))
        return total

    @staticmethod
    def _finite(name: str, hv: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(hv).all():
            raise HawqError(f"layer {name}: a Hessian-vector product is not finite; check the model and data")
        return hv

    def check_finite_differences(self, seed: int) -> dict[str, Any] | str:
        """Exact against finite-difference H v, on the first batch, one Rademacher probe, for the
        first layer whose exact product exists: ||H v - H_fd v|| / ||H v||."""
        exact = [name for name in self.modules if name not in self.fallback]
        if not exact:
            return "not measured: no layer has an exact product to compare with"
        name, module = exact[0], self.modules[exact[0]]
        graph = self.cache[0] if self.cache is not None else next(iter(self._build()))
        weight = module.weight.detach()
        v = rademacher(weight.numel(), torch.Generator().manual_seed(seed), weight).view_as(weight)
        hv = graph.weight_hvp(name, self.f[name], weight, v).flatten()
        hv_fd = self._finite_difference(name, v, torch.Generator(), 0)
        error = float((hv_fd - hv).norm() / hv.norm()) if float(hv.norm()) > 0 else float((hv_fd - hv).norm())
        return {"layer": name, "batch": "first", "probe": "Rademacher", "relative_error_hv": error}
