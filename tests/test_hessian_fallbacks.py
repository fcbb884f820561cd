"""Ops without a double backward: analysis stand-ins (hardsigmoid, attention on the math backend)
give the same Hessian as models written with differentiable forms by hand, and finite
differences stand in where nothing else does."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq_onnx.sensitivity import finite_differences as fd
from hawq_onnx.sensitivity.analysis_forms import STAND_INS, AnalysisForms, analysis_forms, lacks_double_backward
from hawq_onnx.sensitivity.hessian import analyze


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- models: as users write them, and the same by hand in forms with double backward ---------

class MobileLike(nn.Module):
    """Stem + hardswish, depthwise conv, squeeze-excite gated by F.hardsigmoid, pointwise, head."""

    def __init__(self, by_hand: bool = False) -> None:
        super().__init__()
        self.by_hand = by_hand
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.Hardswish()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.se_reduce = nn.Conv2d(4, 2, 1)
        self.se_expand = nn.Conv2d(2, 4, 1)
        self.pw = nn.Conv2d(4, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hswish = (lambda t: t * F.relu6(t + 3) / 6) if self.by_hand else self.act
        hsigmoid = (lambda t: F.relu6(t + 3) / 6) if self.by_hand else F.hardsigmoid
        x = hswish(self.stem(x))
        x = hswish(self.dw(x))
        x = x * hsigmoid(self.se_expand(F.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = hswish(self.pw(x))
        return self.head(x.mean((2, 3)))


class TinyAttention(nn.Module):
    def __init__(self, by_hand: bool = False) -> None:
        super().__init__()
        self.by_hand = by_hand
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p.view(b, t, 2, 4).transpose(1, 2) for p in self.qkv(x).chunk(3, -1))
        if self.by_hand:
            a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, 8))
        return self.head(torch.tanh(x).mean(1))


def _no_double_backward_tanh() -> type[torch.autograd.Function]:
    """tanh whose backward is an op whose own backward raises what PyTorch raises."""

    class TanhBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, grad, y):
            return grad * (1 - y * y)

        @staticmethod
        def backward(ctx, _):
            raise RuntimeError("derivative for aten::tanh_backward is not implemented")

    class Tanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.tanh(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return TanhBackward.apply(grad, y)

    return Tanh


class OnceTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class CustomTanhMLP(nn.Module):
    def __init__(self, tanh=torch.tanh) -> None:
        super().__init__()
        self.tanh = tanh
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 6)
        self.fc3 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc3(self.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _pair(cls, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = cls(**kwargs)
    twin = cls(by_hand=True) if "tanh" not in kwargs else cls()
    twin.load_state_dict(model.state_dict())
    return model.eval(), twin.eval()


def _batches(shape: tuple[int, ...], n: int = 24, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn((n, *shape), generator=gen), torch.randint(0, 3, (n,), generator=gen))]


SETTINGS = {"trace_tol": 0.05, "max_probes": 64, "sketch": 4, "eig_tol": 1e-4, "seed": 3}


# --- the stand-ins ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_stand_ins_match_aten_values_and_first_derivative_bitwise(name):
    form, (functional, *_), _ = STAND_INS[name]
    gen = torch.Generator().manual_seed(0)
    kinks = torch.tensor([-3.0, 3.0, 0.0, -3.0000002, -2.9999998, 2.9999998, 3.0000002, -6.0, 6.0])
    x = torch.cat([torch.randn(20000, generator=gen) * 4, kinks]).requires_grad_(True)
    grad = torch.randn(x.shape, generator=gen)
    ref, got = functional(x), form(x)
    assert torch.equal(ref, got)
    assert torch.equal(torch.autograd.grad(ref, x, grad)[0], torch.autograd.grad(got, x, grad)[0])
    # and the stand-in has the double backward the Hessian products need
    (g,) = torch.autograd.grad(form(x).pow(2).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(h).all()


def test_only_ops_lacking_a_double_backward_are_replaced():
    assert lacks_double_backward("hardsigmoid")  # torch <= 2.13: the reason this module exists
    forms = AnalysisForms()
    x = torch.randn(6, requires_grad=True)
    with analysis_forms(forms):
        F.hardswish(x)
        nn.Hardsigmoid()(x)
        torch._C._nn.hardsigmoid(x)
        F.hardsigmoid(x.clone(), inplace=True)
    expected = ["hardswish"] * lacks_double_backward("hardswish") + ["hardsigmoid"] * 3
    assert forms.events == expected


# --- analyses: the stand-ins change nothing ---------------------------------------------------

@pytest.mark.parametrize("cls, shape", [(MobileLike, (1, 6, 6)), (TinyAttention, (5, 8))])
def test_stand_ins_give_the_hessian_of_the_hand_written_model(cls, shape):
    model, twin = _pair(cls)
    batches = _batches(shape)
    before = copy.deepcopy(model.state_dict())
    got = analyze(model, batches, **SETTINGS)
    want = analyze(twin, batches, **SETTINGS)
    for g, w in zip(got, want):
        assert g.name == w.name
        assert g.trace == pytest.approx(w.trace, rel=1e-3, abs=1e-6)
        assert g.top_eigenvalue == pytest.approx(w.top_eigenvalue, rel=1e-3, abs=1e-6)
        assert g.act_trace == pytest.approx(w.act_trace, rel=1e-3, abs=1e-6)
        assert w.hessian_product == "exact"
    products = {g.name: g.hessian_product for g in got}
    if cls is MobileLike:  # the gate comes after every layer but pw and head
        assert products["stem"] == products["se_expand"] == "exact with analysis stand-ins: hardsigmoid"
        assert products["pw"] == products["head"] == "exact"
    else:
        assert products["qkv"] == "exact with analysis stand-ins: sdpa-math"
        assert products["proj"] == products["head"] == "exact"
    # the user's module is as it was: weights, modules, forward, no mode left behind
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(getattr(model, "act", nn.Hardswish()), nn.Hardswish) and not model.training
    assert not torch._C._is_torch_function_mode_enabled()
    x = batches[0][0]
    assert torch.allclose(model(x), twin(x), atol=1e-6)


# --- finite differences where no double backward exists --------------------------------------

@pytest.mark.parametrize("tanh", [_no_double_backward_tanh().apply, OnceTanh.apply],
                         ids=["not-implemented", "once-differentiable"])
def test_finite_differences_stand_in_where_no_double_backward_exists(tanh):
    torch.manual_seed(0)
    model, exact_model = CustomTanhMLP(tanh).eval(), CustomTanhMLP().eval()
    exact_model.load_state_dict(model.state_dict())
    batches = _batches((5,), n=32)
    notes: dict = {}
    got = analyze(model, batches, notes=notes, **SETTINGS)
    want = analyze(exact_model, batches, **SETTINGS)
    label = fd.LABEL
    assert [g.hessian_product for g in got] == [label, label, "exact"]  # fc3 comes after the custom op
    for g, w in zip(got, want):
        assert g.trace == pytest.approx(w.trace, rel=1e-3)
        assert g.top_eigenvalue == pytest.approx(w.top_eigenvalue, rel=1e-3)
        assert g.act_trace == pytest.approx(w.act_trace, rel=1e-3)
    check = notes["finite_difference_check"]
    assert check["layer"] == "fc3" and check["relative_error_hv"] < 1e-4
    assert "hessian_products" in notes


def test_other_errors_in_the_double_backward_stay_errors():
    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return BrokenBackward.apply(grad)

    class BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, grad):
            return grad * 2

        @staticmethod
        def backward(ctx, _):
            raise RuntimeError("a bug in the user's backward")

    torch.manual_seed(0)
    model = CustomTanhMLP(lambda t: torch.tanh(Broken.apply(t))).eval()
    with pytest.raises(RuntimeError, match="a bug in the user's backward"):
        analyze(model, _batches((5,)), **SETTINGS)


def test_finite_difference_products_match_exact_ones_on_a_conv_net():
    from hawq_onnx.sensitivity.estimators import INPUT_PROBE
    from hawq_onnx.sensitivity.products import _Products

    model, _ = _pair(MobileLike, seed=2)
    for p in model.parameters():
        p.requires_grad_(False)
    batches = _batches((1, 6, 6), n=16)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    products = _Products(model, modules, batches, F.cross_entropy, torch.device("cpu"), cache=True, shared=[])
    graph = products.cache[0]
    for name, module in modules.items():
        w = module.weight.detach()
        v = torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
        approx = products._finite_difference(name, v, torch.Generator(), 0).view_as(w)
        exact = graph.weight_hvp(name, products.f[name], w, v)
        assert float((approx - exact).norm()) <= 1e-4 * float(exact.norm()) + 1e-12, name  # se_reduce: dead ReLUs, 0
        sample = products._finite_difference(name, INPUT_PROBE, torch.Generator().manual_seed(1), 0)
        exact_sample = graph.input_quadratic(name, products.f[name], w, torch.Generator().manual_seed(1))
        assert sample == pytest.approx(exact_sample, rel=1e-3, abs=1e-12), name
    assert all(m.weight.dtype == torch.float32 for m in modules.values())  # the model itself stays float32


# --- Hugging Face: sdpa attention, token-id dict batches --------------------------------------

def test_bert_with_sdpa_attention_analyzes():
    transformers = pytest.importorskip("transformers")
    import hawq_onnx as hq

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                     attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (8, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[:4, 9:] = 0
    y = torch.randint(0, 2, (8,), generator=gen)
    report = hq.analyze(model, [{"input_ids": ids, "attention_mask": mask, "labels": y}], batches=1,
                        batch_size=8, trace_tol=0.2, max_iter=20, sketch=0)
    products = {layer.name: layer.hessian_product for layer in report.layers}
    assert products["bert.encoder.layer.0.attention.self.query"] == "exact with analysis stand-ins: sdpa-math"
    assert products["classifier"] == "exact"
    assert all(layer.trace == layer.trace for layer in report.layers)  # finite, no NaN
    assert "hessian_products" in report.settings and "finite_difference_check" not in report.settings


def test_report_writes_the_product_only_where_it_is_not_plain_exact(tmp_path):
    import json

    from hawq_onnx.io.sensitivity_report import Sensitivity, load_sensitivity

    torch.manual_seed(0)
    model = CustomTanhMLP(_no_double_backward_tanh().apply).eval()
    layers = analyze(model, _batches((5,)), **SETTINGS)
    report = Sensitivity(model="m", fingerprint="f", data="d", settings={}, layers=layers)
    path = report.save(tmp_path / "sensitivity.json")
    raw = json.loads(path.read_text())
    assert [layer.get("hessian_product") for layer in raw["layers"]] == [fd.LABEL, fd.LABEL, None]
    assert [layer.hessian_product for layer in load_sensitivity(path).layers] == [fd.LABEL, fd.LABEL, "exact"]
