"""The Hessian sensitivity engine against exact Hessians of tiny models, and `hawq-onnx analyze`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner
from torch.autograd.functional import hessian
from torch.func import functional_call

from hawq_onnx.cli import cli
from hawq_onnx.errors import HawqError
from hawq_onnx.io.sensitivity_report import load_sensitivity
from hawq_onnx.sensitivity.hessian import analyze


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 6)
        self.fc3 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class TinyConv(nn.Module):
    """A few hundred parameters; in-place ReLU straight on a conv output, average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = torch.sigmoid(self.conv2(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Shared(nn.Module):
    """One Linear called twice: its block sums the cross terms between the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


class WithZeroBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.side = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + 0.0 * self.side(x)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _data(model: nn.Module, shape: tuple[int, ...], n: int, classes: int, seed: int = 0, splits=(0.6,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    cut = [0] + [int(n * s) for s in splits] + [n]
    return [(x[a:b], y[a:b]) for a, b in zip(cut, cut[1:])]


def _tiny(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().double().eval()


def _exact_block(model, name, batches, loss_fn=F.cross_entropy) -> torch.Tensor:
    w0 = dict(model.named_modules())[name].weight.detach().clone()
    total = sum(len(y) for _, y in batches)

    def loss(w):
        return sum(loss_fn(functional_call(model, {f"{name}.weight": w}, (x,)), y) * len(y) / total for x, y in batches)

    return hessian(loss, w0).reshape(w0.numel(), w0.numel())


def _exact_input_trace(model, name, batches) -> float:
    """Trace of the Hessian of the mean loss w.r.t. the layer's input (the mean per-sample trace)."""
    module = dict(model.named_modules())[name]
    total = sum(len(y) for _, y in batches)
    result = 0.0
    for x, y in batches:
        seen = []
        handle = module.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].detach().clone()))
        with torch.no_grad():
            model(x)
        handle.remove()

        def loss(a, x=x, y=y):
            h = module.register_forward_pre_hook(lambda m, inputs: (a,))
            try:
                return F.cross_entropy(model(x), y)
            finally:
                h.remove()

        n = seen[0].numel()
        result += len(y) / total * float(hessian(loss, seen[0]).reshape(n, n).trace())
    return result


def _dominant(h: torch.Tensor) -> float:
    ev = torch.linalg.eigvalsh(h)
    return float(ev[ev.abs().argmax()])


@pytest.mark.parametrize("cls, shape", [(MLP, (5,)), (TinyConv, (1, 6, 6)), (Shared, (4,))])
@pytest.mark.parametrize("sketch", [16, 0])
def test_eigenvalue_and_trace_match_the_exact_hessian(cls, shape, sketch):
    model = _tiny(cls)
    batches = _data(model, shape, 40, 3)
    results = analyze(model, batches, sketch=sketch, eig_tol=1e-6, max_iter=500, trace_tol=0.05, max_probes=2000)
    assert [r.name for r in results] == [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for r in results:
        h = _exact_block(model, r.name, batches)
        exact_eig, exact_trace = _dominant(h), float(h.trace())
        assert r.top_eigenvalue == pytest.approx(exact_eig, rel=1e-3), r.name
        assert r.eigen_converged and r.status == "ok"
        assert abs(r.trace - exact_trace) <= 3 * r.trace_std_error + 1e-9 * abs(exact_trace), (r.name, r.trace, exact_trace)
        assert r.trace_converged and r.trace_std_error <= 0.05 * abs(r.trace)
        assert r.params == h.shape[0]


def test_default_settings_are_close_to_the_exact_hessian():
    model = _tiny(TinyConv, seed=1)
    batches = _data(model, (1, 6, 6), 32, 3, seed=1)
    for r in analyze(model, batches):
        h = _exact_block(model, r.name, batches)
        # eig_tol bounds the last change of the Rayleigh quotient, not its error: allow 10x
        assert r.top_eigenvalue == pytest.approx(_dominant(h), rel=1e-2), r.name
        assert abs(r.trace - float(h.trace())) <= 3 * r.trace_std_error + 1e-9, r.name


def test_plain_hutchinson_recovers_the_exact_trace_as_probes_grow():
    model = _tiny(MLP)
    batches = _data(model, (5,), 30, 3)
    exact = float(_exact_block(model, "fc2", batches).trace())
    runs = [analyze(model, batches, layers=["fc2"], sketch=0, trace_tol=1e-9, min_probes=n, max_probes=n)[0]
            for n in (16, 128, 1024)]
    for r in runs:
        assert abs(r.trace - exact) <= 3 * r.trace_std_error
        assert not r.trace_converged  # the tolerance is out of reach: capped, and said so
    errors = [r.trace_std_error for r in runs]
    assert errors[1] < errors[0] / 2 and errors[2] < errors[1] / 2  # ~ 1/sqrt(probes): 2.8x per step
    assert abs(runs[-1].trace - exact) < 0.05 * abs(exact)


@pytest.mark.parametrize("name", ["fc1", "fc2", "fc3"])
def test_activation_trace_matches_the_exact_input_hessian(name):
    model = _tiny(MLP)
    batches = _data(model, (5,), 24, 3)
    r = analyze(model, batches, layers=[name], act_tol=0.01, act_max_probes=3000)[0]
    exact = _exact_input_trace(model, name, batches)
    assert abs(r.act_trace - exact) <= 3 * r.act_trace_std_error, (r.act_trace, exact)
    assert r.act_trace_std_error <= 0.01 * abs(r.act_trace)
    assert r.act_elements == dict(model.named_modules())[name].in_features
    assert set(r.act_perturbation) == {"4", "8"}
    assert 0 < r.act_perturbation["8"] < r.act_perturbation["4"]


def test_zero_block_is_reported_as_zero_not_nan():
    model = _tiny(WithZeroBlock)
    batches = _data(model, (4,), 16, 3)
    by_name = {r.name: r for r in analyze(model, batches)}
    assert by_name["fc"].status == "ok" and by_name["fc"].top_eigenvalue > 0
    for name in ("side", "unused"):
        r = by_name[name]
        assert r.status == "zero" and r.top_eigenvalue == 0.0 and r.trace == 0.0 and r.trace_std_error == 0.0
        assert r.eigen_converged and r.trace_converged
    assert by_name["unused"].act_elements == 0


def test_negative_dominant_eigenvalue_keeps_its_sign():
    model = nn.Sequential(nn.Linear(4, 3)).double()
    batches = _data(model, (4,), 20, 3)

    def loss_fn(out, y):  # concave in the weights: every eigenvalue is negative
        return -(out ** 2).sum(1).mean()

    r = analyze(model, batches, loss_fn=loss_fn, eig_tol=1e-8)[0]
    exact = _exact_block(model, "0", batches, loss_fn)
    assert r.status == "indefinite" and r.top_eigenvalue < 0
    assert r.top_eigenvalue == pytest.approx(_dominant(exact), rel=1e-4)
    assert r.trace == pytest.approx(float(exact.trace()), rel=1e-6)  # 12 weights: the sketch spans the block


def test_activation_terms_are_capped_or_skipped():
    model = _tiny(MLP)
    batches = _data(model, (5,), 24, 3)
    capped = analyze(model, batches, act_tol=1e-9, act_max_probes=5, sketch=0, max_probes=10)
    assert all(r.act_trace != 0 and r.act_trace_std_error > 0 for r in capped)
    skipped = analyze(model, batches, activations=False, sketch=0, max_probes=10)
    assert all(r.act_elements == 0 and r.act_perturbation == {} and r.act_trace == 0 for r in skipped)
    assert [r.trace for r in skipped] == [r.trace for r in capped]  # the weight terms do not depend on it


def test_seeded_runs_are_identical_and_seeds_matter():
    model = _tiny(TinyConv)
    batches = _data(model, (1, 6, 6), 16, 3)
    kwargs = dict(sketch=0, max_probes=20)
    first, again = analyze(model, batches, seed=3, **kwargs), analyze(model, batches, seed=3, **kwargs)
    other = analyze(model, batches, seed=4, **kwargs)
    def strip(rs):
        return [{k: v for k, v in vars(r).items() if k != "seconds"} for r in rs]

    assert strip(first) == strip(again)
    assert [r.trace for r in first] != [r.trace for r in other]
    # a layer's result does not depend on the other layers analysed with it
    alone = analyze(model, batches, seed=3, layers=["conv2"], **kwargs)[0]
    assert alone.trace == first[1].trace and alone.top_eigenvalue == first[1].top_eigenvalue


def test_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    model.train()  # a forward pass in train mode would move the BatchNorm statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, _data(model, (5,), 8, 3), sketch=0, max_probes=8)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_settings_are_hawq_errors():
    model = _tiny(MLP)
    batches = _data(model, (5,), 8, 3)
    with pytest.raises(HawqError, match="unknown layer"):
        analyze(model, batches, layers=["nope"])
    with pytest.raises(HawqError, match="tolerance"):
        analyze(model, batches, eig_tol=0)
    with pytest.raises(HawqError, match="batch"):
        analyze(model, [])
    with pytest.raises(HawqError, match="no quantizable layer"):
        analyze(nn.Sequential(nn.ReLU()), batches)
    if not torch.cuda.is_available():
        with pytest.raises(HawqError, match="CUDA"):
            analyze(model, batches, device="cuda")


def test_cli_on_digits_writes_loadable_json_and_png(tmp_path):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    res = CliRunner().invoke(cli, ["analyze", "--batches", "1", "--batch-size", "24", "--trace-tol", "0.05",
                                   "--stopping", "precision", "--eigenvalues", "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    report = load_sensitivity(out)
    assert [layer.name for layer in report.layers] == ["stem", "block_conv1", "block_conv2", "down", "conv", "fc"]
    assert all(layer.top_eigenvalue > 0 and layer.trace > 0 for layer in report.layers)
    assert report.settings["samples"] == 24 and report.settings["split"] == "train"
    assert report.float_weight_bytes == 4 * sum(layer.params for layer in report.layers)
    assert set(report.layers[0].perturbation) == {"maxabs", "mse", "maxabs-full", "mse-full"}
    for layer in report.layers:
        # max|w| scales never reach the extra negative level; MSE clipping does, and it only helps
        assert layer.perturbation["maxabs-full"] == layer.perturbation["maxabs"]
        assert all(layer.perturbation["mse-full"][b] <= v for b, v in layer.perturbation["mse"].items())
    assert set(report.layers[0].perturbation["mse"]) == {"2", "3", "4", "8"}
    # the fingerprint is the BN-folded model's, as the plan and the exporter see it
    from hawq_onnx.core.bn_fold import fold_batchnorm
    from hawq_onnx.sources.model import load_model, model_fingerprint

    loaded = load_model("digits-cnn")
    fold_batchnorm(loaded.module, loaded.spec.input_shape)
    assert report.fingerprint == model_fingerprint(loaded.module)
    assert json.loads(out.read_text())["layers"][0]["trace_per_param"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "stem" in res.output and f"wrote {out}" in res.output
    assert report.settings["trace_method"].endswith("stopped on the standard error") and "stopping" not in report.settings


def test_cli_default_settles_the_traces_for_its_budgets(tmp_path):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    res = CliRunner().invoke(cli, ["analyze", "--batch-size", "24", "--settle-for", "6x,10x", "--a-bits", "4",
                                   "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    report = load_sensitivity(out)
    settled = report.settings["settled_for"]
    assert report.settings["stopping"] == "decision" and report.settings["settled"] is True
    assert settled["budgets"] == ["6x", "10x"] and settled["a_bits"] == [4]
    assert all(layer.top_eigenvalue is None and layer.trace_probes >= 2 for layer in report.layers)
    assert all(layer.act_elements == 0 for layer in report.layers)  # one activation width: not weighed
    assert "traces settled for the plans at 6x, 10x (w_bits 2,4,8, a_bits 4)" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a budget below the smallest plan is refused before any product; the eigenvalue metric needs eigenvalues
    res = CliRunner().invoke(cli, ["analyze", "--batch-size", "24", "--settle-for", "40x", "--out", str(out)])
    assert res.exit_code == 2 and "below the smallest possible weight size" in res.stderr
    res = CliRunner().invoke(cli, ["allocate", "--sensitivity", str(out), "--budget", "6x", "--metric", "eigenvalue",
                                   "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 2 and "--eigenvalues" in res.stderr and "--metric" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model"], "unknown model"),
    (["--device", "cuda"], "CUDA"),
    (["--tol", "-1"], "tolerance"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "s.json"
    res = CliRunner().invoke(cli, ["analyze", *args, "--batch-size", "8", "--out", str(out)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not out.exists()
