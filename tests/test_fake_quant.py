"""Fake quantization: ONNX rounding bit for bit, STE/LSQ gradients, observers, the module swap."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.core.grid import (
    activation_qrange,
    bias_scale,
    dequantize,
    fake_quantize_torch,
    fake_quantize_weight_np,
    quantize,
    quantize_bias,
    weight_qrange,
    weight_scale,
)
from hawq_onnx.core.layers import describe_layers
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import LayerPlan, Plan, load_plan, save_plan
from hawq_onnx.qat.fake_quant import (
    QuantLayer,
    calibrate,
    export_plan_scales,
    quant_layers,
    quantize_model,
    set_scale_learning,
    strip_fake_quant,
)
from hawq_onnx.qat.observers import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from hawq_onnx.qat.quantizers import ActivationFakeQuant, FakeQuantSTE, WeightFakeQuant
from hawq_onnx.sources.model import load_model, model_fingerprint


@pytest.fixture(scope="module")
def digits():
    loaded = load_model("digits-cnn")
    folded = fold_copy(loaded.module, loaded.input_shape)
    from hawq_onnx.sources.data import load_data

    return loaded, folded, load_data("digits", loaded.spec)


def make_plan(folded, input_shape, w_bits, a_bits, ends=(8, 8)) -> Plan:
    infos = describe_layers(folded, input_shape)
    layers = []
    for k, i in enumerate(infos):
        inner = 0 < k < len(infos) - 1
        layers.append(LayerPlan(i.name, i.kind, i.params, i.out_channels, i.macs,
                                w_bits if inner or ends is None else ends[0],
                                a_bits if inner or ends is None else ends[1], omega=float(k)))
    return Plan("digits-cnn", model_fingerprint(folded), layers)


def _ties_and_saturation(rng, scale: float, qmin: int, qmax: int, zero_point: int = 0) -> np.ndarray:
    # Exact .5 ties (scale a power of two) across and beyond the range, plus random values.
    k = np.arange(qmin - zero_point - 3, qmax - zero_point + 3, dtype=np.float32)
    ties = (k + np.float32(0.5)) * np.float32(scale)
    rand = rng.normal(0, (qmax - qmin) * scale / 3, 4000).astype(np.float32)
    return np.concatenate([ties, -ties, rand, [0.0, np.float32(1e9), np.float32(-1e9)]]).astype(np.float32)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zero_point", [0, 3, 128])
def test_activation_rounding_matches_numpy_bit_for_bit(bits, zero_point):
    rng = np.random.default_rng(bits + zero_point)
    qmin, qmax = activation_qrange(bits)
    zero_point = min(zero_point, qmax)
    for scale in (0.25, float(np.float32(0.0137)), float(np.float32(3.7e-3))):
        x = _ties_and_saturation(rng, scale, qmin, qmax, zero_point)
        expected = dequantize(quantize(x, np.float32(scale), zero_point, qmin, qmax), np.float32(scale), zero_point)
        aq = ActivationFakeQuant(bits)
        aq.set_qparams(scale, zero_point)
        got = aq(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    # The .5 ties go to even, as ONNX QuantizeLinear does.
    aq = ActivationFakeQuant(8)
    aq.set_qparams(1.0, 0)
    assert aq(torch.tensor([0.5, 1.5, 2.5, 254.5, 300.0, -1.0])).tolist() == [0.0, 2.0, 2.0, 254.0, 255.0, 0.0]


def test_weight_ranges():
    assert [weight_qrange(b) for b in (2, 3, 4, 8)] == [(-1, 1), (-3, 3), (-7, 7), (-127, 127)]
    # full: the signed type's extra negative level below 8 bits (LSQ's grid); 8 bits stay narrow.
    assert [weight_qrange(b, "full") for b in (2, 3, 4, 8)] == [(-2, 1), (-4, 3), (-8, 7), (-127, 127)]
    with pytest.raises(ValueError, match="weight range"):
        weight_qrange(4, "wide")


@pytest.mark.parametrize("weight_range", ["narrow", "full"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_rounding_matches_numpy_bit_for_bit(bits, weight_range):
    rng = np.random.default_rng(bits)
    qmin, qmax = weight_qrange(bits, weight_range)
    w = rng.normal(0, 0.1, (6, 3, 3, 3)).astype(np.float32)
    w[0].flat[:8] = (np.arange(8, dtype=np.float32) - 4 + 0.5) * np.float32(0.125)  # ties at scale 1/8
    for method in ("maxabs", "mse"):
        scale = weight_scale(w, bits, method)
        scale[0] = 0.125
        scale[1] = scale[1] * 0.3  # saturates part of channel 1
        wq = WeightFakeQuant(bits, 6, weight_range)
        wq.set_scale(scale)
        got = wq(torch.from_numpy(w)).detach().numpy()
        np.testing.assert_array_equal(got, fake_quantize_weight_np(w, scale, bits, weight_range))
    # channel 1 saturates at both ends of its range, the full range one step further down
    assert got[1].max() == np.float32(qmax * scale[1]) and got[1].min() == np.float32(qmin * scale[1])


def test_ste_passes_gradient_inside_the_range_only():
    x = torch.tensor([-3.0, -0.4, 0.0, 0.6, 2.9, 3.6, 9.0], requires_grad=True)
    y = FakeQuantSTE.apply(x, torch.tensor(1.0), torch.tensor(0.0), -3, 3, 1.0)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("bits,zero_point", [(4, 0.0), (8, 3.0), (2, 0.0)])
def test_training_forward_is_fake_quantize_torch_bit_for_bit(bits, zero_point):
    # The training forward keeps its own mask; its values must stay those of the one definition.
    gen = torch.Generator().manual_seed(bits)
    scale = torch.tensor(0.0371)
    x = torch.randn(4096, generator=gen) * 8 * scale
    x[:64] = (torch.arange(64) - 32 + 0.5) * scale  # exact ties
    qmin, qmax = (0, 2 ** bits - 1) if zero_point else (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
    xg = x.clone().requires_grad_()
    got = FakeQuantSTE.apply(xg, scale, torch.tensor(zero_point), qmin, qmax, 1.0)
    assert torch.equal(got.detach(), fake_quantize_torch(x, scale, torch.tensor(zero_point), qmin, qmax))


def test_lsq_step_size_gradient():
    x = torch.tensor([0.3, 1.2, -2.6, 5.6, -7.0])
    s = torch.tensor(1.0, requires_grad=True)
    zp = torch.tensor(2.0)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    y = FakeQuantSTE.apply(x, s, zp, 0, 7, 0.5)
    (y * g).sum().backward()
    # q = round(x) + 2: 2, 3, -1 (saturated low), 8 (high), -5 (low)
    expected = 0.5 * (1 * (0 - 0.3) + 2 * (1 - 1.2) + 3 * (0 - 2.0) + 4 * (7 - 2.0) + 5 * (0 - 2.0))
    assert s.grad.item() == pytest.approx(expected, rel=1e-6)


def test_per_channel_lsq_gradient_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=gen)
    s = (torch.rand(6, 1, 1, 1, generator=gen) * 0.3 + 0.05).requires_grad_()
    g = torch.randn(w.shape, generator=gen)
    wg = w.clone().requires_grad_()
    (FakeQuantSTE.apply(wg, s, torch.tensor(0.0), -7, 7, 0.25) * g).sum().backward()
    v = w / s.detach()
    inside = (torch.round(v) >= -7) & (torch.round(v) <= 7)
    d = torch.where(inside, torch.round(v) - v, torch.round(v).clamp(-7, 7))
    torch.testing.assert_close(s.grad, 0.25 * (g * d).sum(dim=(1, 2, 3), keepdim=True), rtol=1e-5, atol=1e-6)
    assert torch.equal(wg.grad, g * inside)


def test_learned_weight_scales_get_a_gradient(digits):
    loaded, folded, data = digits
    qmodel = quantize_model(folded, make_plan(folded, loaded.input_shape, 4, 4))
    calibrate(qmodel, data.calib.batches(128))
    scales = set_scale_learning(qmodel, True)
    x, y = next(data.train.batches(32))
    nn.functional.cross_entropy(qmodel(x), y).backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in scales)
    assert sum(float(s.grad.abs().sum()) for s in scales) > 0


def test_bias_is_on_the_int32_grid_of_the_exporter():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=True)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.1234567, -0.5, 3.3e-4, 2.0]))
    q = QuantLayer(conv, 4, 8)
    q.weight_quant.init_scale(conv.weight, "maxabs")
    q.input_quant.set_qparams(0.0173, 0)
    ws = q.weight_quant.scale.detach().numpy()
    b = conv.bias.detach().numpy()
    expected = dequantize(quantize_bias(b, ws, 0.0173), bias_scale(ws, float(np.float32(0.0173))), 0)
    np.testing.assert_array_equal(q.quantized_bias().detach().numpy(), expected)
    assert not np.array_equal(expected, b)


def test_observers():
    x = torch.cat([torch.linspace(0, 1, 10_000), torch.tensor([50.0])])
    mm = MinMaxObserver()
    mm.observe(x)
    mm.observe(x * 0.5 - 2)
    assert mm.range() == (-2.0, 50.0)
    ema = MinMaxObserver(momentum=0.5)
    ema.observe(torch.tensor([0.0, 4.0]))
    ema.observe(torch.tensor([0.0, 2.0]))
    assert ema.range() == (0.0, 3.0)
    pc = PercentileObserver(99.0)
    pc.observe(x)
    assert pc.range()[1] < 1.0 < 50.0  # the outlier is clipped
    mse = MSEObserver(4)
    mse.observe(x)
    assert mse.range()[1] < 50.0
    for name in ("minmax", "ema", "percentile", "mse"):
        make_observer(name, 8)
    with pytest.raises(ValueError):
        make_observer("histogram", 8)


def test_zero_point_is_zero_after_relu_and_positive_otherwise():
    relu = ActivationFakeQuant(4)
    relu.start_observing("minmax")
    relu(torch.rand(100))
    relu.finish_observing()
    assert relu.qparams().zero_point == 0
    signed = ActivationFakeQuant(8)
    signed.start_observing("minmax")
    signed(torch.linspace(-1, 3, 100))
    signed.finish_observing()
    assert signed.qparams().zero_point == round(255 / 4)


def test_uncalibrated_activation_refuses_to_run(digits):
    loaded, folded, _ = digits
    qmodel = quantize_model(folded, make_plan(folded, loaded.input_shape, 4, 4))
    with pytest.raises(RuntimeError, match="calibrate"):
        qmodel(torch.zeros(1, *loaded.input_shape))


def test_swap_leaves_the_model_untouched_and_8_bit_is_close_to_float(digits):
    loaded, folded, data = digits
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    user_before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    qmodel = quantize_model(folded, make_plan(folded, loaded.input_shape, 8, 8))
    calibrate(qmodel, data.calib.batches(128))
    assert all(torch.equal(before[k], v) for k, v in folded.state_dict().items())
    assert all(torch.equal(user_before[k], v) for k, v in loaded.module.state_dict().items())
    assert not any(isinstance(m, QuantLayer) for m in folded.modules())
    assert len(quant_layers(qmodel)) == 6
    x = torch.from_numpy(data.test.x)
    with torch.no_grad():
        ref, got = folded(x), qmodel(x)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.99


def test_float_layers_stay_float(digits):
    loaded, folded, data = digits
    plan = make_plan(folded, loaded.input_shape, 4, 4)
    plan.layers[1].w_bits = None
    plan.layers[2].w_bits, plan.layers[2].a_bits = None, None
    qmodel = quantize_model(folded, plan)
    wrapped = quant_layers(qmodel)
    assert wrapped[plan.layers[1].name].weight_quant is None
    assert wrapped[plan.layers[1].name].input_quant is not None
    assert plan.layers[2].name not in wrapped
    calibrate(qmodel, data.calib.batches(128))
    calibrated = export_plan_scales(qmodel, plan)
    assert calibrated.layers[1].weight_scale is None and calibrated.layers[1].input_quant is not None
    assert calibrated.layers[2].weight_scale is None and calibrated.layers[2].input_quant is None


def test_calibrated_plan_reproduces_the_model_exactly(digits, tmp_path):
    loaded, folded, data = digits
    plan = make_plan(folded, loaded.input_shape, 4, 4)
    qmodel = quantize_model(folded, plan)
    calibrate(qmodel, data.calib.batches(128))
    # Learned scales are arbitrary float32 values: nudge them off their calibrated grid.
    with torch.no_grad():
        for s in set_scale_learning(qmodel, False):
            s.mul_(1.0123)
    calibrated = export_plan_scales(qmodel, plan)
    assert calibrated.calibrated and not plan.calibrated
    save_plan(calibrated, tmp_path / "plan.json")
    reloaded = load_plan(tmp_path / "plan.json", model_fingerprint(folded))
    assert reloaded == calibrated
    again = quantize_model(folded, reloaded)
    x = torch.from_numpy(data.test.x)
    with torch.no_grad():
        assert torch.equal(again(x), qmodel(x))
    # The exporter's view: numpy integer weights from the plan equal the fake-quant weights.
    for lp in reloaded.layers:
        w = folded.get_submodule(lp.name).weight.detach().numpy()
        got = quant_layers(again)[lp.name].weight_quant(torch.from_numpy(w)).detach().numpy()
        scale = np.asarray(lp.weight_scale, np.float32)
        np.testing.assert_array_equal(got, fake_quantize_weight_np(w, scale, lp.w_bits))


def test_strip_fake_quant_gives_the_folded_model(digits):
    loaded, folded, data = digits
    qmodel = quantize_model(folded, make_plan(folded, loaded.input_shape, 4, 4))
    stripped = strip_fake_quant(qmodel)
    assert list(stripped.state_dict()) == list(folded.state_dict())
    x = torch.from_numpy(data.test.x[:50])
    with torch.no_grad():
        assert torch.equal(stripped(x), folded(x))
    assert quant_layers(qmodel)  # the fake-quant model itself is untouched


def test_plan_for_another_model_is_refused(digits):
    loaded, folded, _ = digits
    plan = make_plan(folded, loaded.input_shape, 4, 4)
    bad = copy.deepcopy(plan)
    bad.layers[0].name = "nope"
    with pytest.raises(HawqError, match="not a Conv1d"):
        quantize_model(folded, bad)
    bad = copy.deepcopy(plan)
    bad.layers[0].out_channels = 3
    with pytest.raises(HawqError, match="output channels"):
        quantize_model(folded, bad)


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.spare = nn.Conv2d(2, 2, 1)  # never called in forward

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_a_planned_layer_the_forward_never_calls_is_an_error():
    model = _Unused().eval()
    layers = [LayerPlan(n, "conv2d", m.weight.numel(), m.weight.shape[0], 0, 8, 8)
              for n, m in (("conv", model.conv), ("spare", model.spare))]
    qmodel = quantize_model(model, Plan("m", model_fingerprint(model), layers))
    with pytest.raises(HawqError, match="never calls layer spare.*keep_float spare"):
        calibrate(qmodel, [torch.randn(4, 1, 5, 5)])


class _ReadsWeight(nn.Module):
    """Reads its layer's weight in forward: for its dtype (allowed), or to compute with (refused)."""

    def __init__(self, compute: bool) -> None:
        super().__init__()
        self.compute = compute
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv.weight.dtype)  # what Hugging Face's ViT does with its patch projection
        h = torch.relu(self.conv(x)).mean((2, 3))
        return F.linear(h, self.fc.weight, self.fc.bias) if self.compute else self.fc(h)


def test_a_forward_may_read_a_weight_description_but_not_compute_with_it():
    import hawq_onnx as hq

    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    for compute in (False, True):
        torch.manual_seed(0)
        model = _ReadsWeight(compute)
        sens = hq.analyze(model, (x, y), batches=1, batch_size=32, trace_tol=0.3, max_iter=10, sketch=0)
        plan = hq.allocate(sens, "4x", a_bits=(8,), pin_ends=False)
        if not compute:
            assert hq.finetune(model, plan, (x, y), steps=1).plan.calibrated
            continue
        with pytest.raises(hq.HawqError, match=r"computes with fc.weight itself .* keep it float .*keep_float fc"):
            hq.finetune(model, plan, (x, y), steps=1)
