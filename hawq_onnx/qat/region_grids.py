"""The exporter's 8-bit grids between layers, carried back into the PyTorch fake-quant model.

ONNX Runtime runs a residual Add, a pooling or a Concat as an integer kernel only when its
inputs and its output are quantized, and a Conv only when its output is
(``passes.insert_activation_qdq``). The exporter therefore rounds tensors that the plan does
not name: a conv output feeding an Add, the Add's output, the shortcut. The fake-quant model
of the plan alone keeps them float, so it is not what the deployed file computes (digits net,
4-bit activations: 99.44 % top-1 agreement and a 99th-percentile logit error of 4 output
steps without these grids).

The exporter names those grids in PyTorch terms (``hawq_onnx.onnx_export.region_match``, on
the graph :func:`trace` gives) and returns them in its plan; here the fake-quant model applies them:
- :func:`trace` records the fake-quant model as a torch.fx graph (each planned layer kept
  whole);
- :func:`apply_region_grids` inserts a fixed quantizer after each named node, read by all its
  users except the planned layers that quantize their own input (the exporter nests an 8-bit
  grid on a 4-bit plan grid, so the layer sees its plan grid exactly either way).

A grid is a :class:`hawq_onnx.io.plan.RegionGrid` in the plan the exporter returns. A model
that torch.fx cannot trace keeps those tensors float in PyTorch, with a warning.
:func:`reference_model` is the one place the reference for validation is composed: plan + grids.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from hawq_onnx.core.grid import activation_qrange
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import Plan, RegionGrid
from hawq_onnx.qat.fake_quant import QuantLayer, quantize_model
from hawq_onnx.qat.quantizers import FakeQuantSTE


class _KeepQuantLayers(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, QuantLayer) or super().is_leaf_module(m, module_qualified_name)


def trace(qmodel: nn.Module, input_names: Sequence[str] | None = None) -> fx.GraphModule:
    """``qmodel`` as a GraphModule whose planned layers are single call_module nodes.

    A Hugging Face model, which plain torch.fx cannot trace (its forward branches on its
    inputs), is traced with transformers' own tracer, its inputs ``input_names`` (default: the
    model's main input) and every other argument fixed to its default."""
    tracer = _KeepQuantLayers()
    try:
        graph = tracer.trace(qmodel)
    except Exception as exc:  # fx raises many types on untraceable Python
        hf = _hf_trace(qmodel, input_names)
        if hf is not None:
            return hf
        raise HawqError(f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    name = qmodel.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)


def _hf_trace(qmodel: nn.Module, input_names: Sequence[str] | None) -> fx.GraphModule | None:
    if not type(qmodel).__module__.startswith("transformers.") or not hasattr(qmodel, "main_input_name"):
        return None
    try:
        from transformers.utils import fx as hf_fx

        class KeepQuantLayers(hf_fx.HFTracer):
            def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
                return isinstance(m, QuantLayer) or super().is_leaf_module(m, module_qualified_name)

        # disable_check: the architectures transformers lists as traceable are not all that trace.
        return hf_fx.symbolic_trace(qmodel, input_names=list(input_names or [qmodel.main_input_name]),
                                    disable_check=True, tracer_cls=KeepQuantLayers)
    except Exception:  # the caller says that the model could not be traced
        return None


class RegionFakeQuant(nn.Module):
    """A fixed per-tensor grid (the exporter's), straight-through in the backward pass."""

    def __init__(self, bits: int, scale: float, zero_point: int) -> None:
        super().__init__()
        self.bits = bits
        self.qmin, self.qmax = activation_qrange(bits)
        self.register_buffer("scale", torch.tensor(float(np.float32(scale))))
        self.register_buffer("zero_point", torch.tensor(float(zero_point)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FakeQuantSTE.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, 0.0)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}"


def _quantizes_own_input(gm: fx.GraphModule, user: fx.Node) -> bool:
    if user.op != "call_module":
        return False
    m = gm.get_submodule(str(user.target))
    return isinstance(m, QuantLayer) and m.input_quant is not None and m.enabled


def apply_region_grids(qmodel: nn.Module, grids: Sequence[RegionGrid],
                       input_names: Sequence[str] | None = None) -> fx.GraphModule:
    """A GraphModule of ``qmodel`` (which is not modified) with each grid's quantizer inserted
    (``input_names``: the named inputs the export traced it with, see :func:`trace`)."""
    gm = trace(copy.deepcopy(qmodel), input_names)
    nodes = {n.name: n for n in gm.graph.nodes}
    missing = [g.node for g in grids if g.node not in nodes]
    if missing:
        raise HawqError(f"the plan's region grids name {len(missing)} tensor(s) this model does not compute "
                        f"(e.g. {missing[0]}): export the plan for this model again")
    for i, g in enumerate(grids):
        node = nodes[g.node]
        users = [u for u in node.users if not _quantizes_own_input(gm, u)]
        if not users:
            continue
        path = f"region_grid_{i}"
        gm.add_submodule(path, RegionFakeQuant(g.bits, g.scale, g.zero_point))
        with gm.graph.inserting_after(node):
            fq = gm.graph.call_module(path, (node,))
        for u in users:
            u.replace_input_with(node, fq)
    gm.graph.lint()
    gm.recompile()
    return gm


def reference_model(model: nn.Module, plan: Plan, input_names: Sequence[str] | None = None) -> nn.Module:
    """What a file exported from ``plan`` computes, in PyTorch: the fake-quant model of the
    plan's layers (``quantize_model``) with the exporter's grids between layers
    (``plan.region_grids``, from an exported plan) inserted. ``model`` is BN-folded and is
    not modified."""
    qmodel = quantize_model(model, plan)
    return apply_region_grids(qmodel, plan.region_grids, input_names) if plan.region_grids else qmodel
