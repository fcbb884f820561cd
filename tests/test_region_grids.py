"""Naming the exporter's grids between layers in PyTorch (hawq_onnx.qat.region_grids), piece by piece."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from hawq_onnx.core.grid import fake_quantize_torch
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import RegionGrid
from hawq_onnx.onnx_export.region_match import match, node_values
from hawq_onnx.qat.fake_quant import QuantLayer
from hawq_onnx.qat.region_grids import apply_region_grids, trace


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x) + x)
        return self.head(y.mean((2, 3)))


def test_match_names_each_tensor_by_its_values():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4)).astype(np.float32), rng.normal(size=(2, 12)).astype(np.float32)
    fx_values = {"flat": a.reshape(2, 12), "a": a, "b": b}
    tie = a.copy()
    tie.flat[0] += 0.5  # one element of 24 off: too many to be a rounding tie
    near = a + 1e-6  # float summation order
    found = match({"t_a": near, "t_b": b.reshape(2, 3, 4), "t_tie": tie, "t_none": np.ones(5, np.float32)}, fx_values)
    assert found == {"t_a": "a", "t_b": "b"}  # same shape first, then any reshaped copy; unmatched left out


def test_grids_apply_to_every_user_but_layers_that_quantize_their_own_input():
    model = Residual().eval()
    wrapped = QuantLayer(model.conv, None, 8, "conv")
    wrapped.input_quant.set_qparams(0.05, 128)
    model.conv = wrapped
    gm = trace(model)
    names = [n.name for n in gm.graph.nodes]
    assert "conv" in names and "add" in names  # the planned layer is one node
    x = torch.randn(2, 4, 5, 5)
    values = node_values(gm, x)
    grid = RegionGrid("x", "input", 8, 0.1, 100)
    quantized = apply_region_grids(model, [grid])
    # x feeds the conv (its own 8-bit input grid) and the Add (the region grid).
    expected_add = model.conv(x) + fake_quantize_torch(x, torch.tensor(0.1), 100.0, 0, 255)
    want = model.head(torch.relu(expected_add).mean((2, 3)))
    torch.testing.assert_close(quantized(x), want)
    assert set(values) >= {"x", "conv", "add", "relu"}
    with pytest.raises(HawqError, match="does not compute"):
        apply_region_grids(model, [RegionGrid("nowhere", "t", 8, 0.1, 0)])


def test_an_untraceable_model_is_a_clear_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(HawqError, match="torch.fx cannot trace"):
        trace(DataDependent())
