"""Name the exporter's grids between layers in PyTorch terms, by value.

The exporter rounds tensors the plan does not name (a conv output feeding an Add, the Add's
output, a shortcut) so that ONNX Runtime runs them as integer kernels. To carry those grids back
into the PyTorch fake-quant model (``hawq_onnx.qat.region_grids.apply_region_grids``), each ONNX
tensor is named by the torch.fx node holding the same values on a probe batch: the two graphs
name tensors differently but compute the same ones.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.fx as fx

# Two tensors are the same when all but this fraction of their elements agree within float
# error: a value on a rounding tie may land one step apart in the two runtimes.
MISMATCH_FRACTION = 1e-3
RELATIVE_TOLERANCE = 1e-4
SAMPLE_ELEMENTS = 4096  # elements compared first, before a candidate's full comparison


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, np.ndarray] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self.values[n.name] = out.detach().cpu().float().numpy().copy()  # in-place ops come later
        return out


@torch.no_grad()
def node_values(gm: fx.GraphModule, x: Any) -> dict[str, np.ndarray]:
    """Every floating-point node output of ``gm`` on inputs ``x`` (a tensor, a tuple, or a dict by
    parameter name: parameters it does not name take their defaults), by fx node name, in graph order."""
    if isinstance(x, dict):
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        args = [x[p.target] if p.target in x else (p.args[0] if p.args else None) for p in placeholders]
    else:
        args = list(x) if isinstance(x, tuple) else [x]
    recorder = _Recorder(gm)
    recorder.run(*args)
    return recorder.values


def _same(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return float(np.mean(np.abs(a - b) > tol)) <= MISMATCH_FRACTION


def match(onnx_values: Mapping[str, np.ndarray], fx_values: Mapping[str, np.ndarray]) -> dict[str, str]:
    """ONNX tensor name -> the first fx node (graph order) with the same values; unmatched left out.

    A node of the same shape is preferred to a reshaped one (a Flatten's output has its
    input's values); either gives the same rounding, as quantization is elementwise.
    """
    by_size: dict[int, list[str]] = {}
    for name, v in fx_values.items():
        by_size.setdefault(v.size, []).append(name)
    found: dict[str, str] = {}
    for tensor, value in onnx_values.items():
        flat = value.ravel()
        tol = RELATIVE_TOLERANCE * max(float(np.abs(flat).max(initial=0.0)), 1e-6)
        stride = max(1, flat.size // SAMPLE_ELEMENTS)
        # A strided sample rules most candidates out cheaply; the survivors are compared in full.
        candidates = [n for n in by_size.get(value.size, [])
                      if _same(flat[::stride], fx_values[n].ravel()[::stride], tol)
                      and _same(flat, fx_values[n].ravel(), tol)]
        same_shape = [n for n in candidates if fx_values[n].shape == value.shape]
        if same_shape or candidates:
            found[tensor] = (same_shape or candidates)[0]
    return found
