"""Fine-tuning schedules, quantized.pt, and `hawq-onnx finetune` on the digits model."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from hawq_onnx.cli import cli
from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.core.layers import describe_layers
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import LayerPlan, Plan, load_plan, save_plan
from hawq_onnx.io.quantized_checkpoint import load_quantized
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity
from hawq_onnx.qat.checkpoint import restore_quantized, save_quantized
from hawq_onnx.qat.fake_quant import quant_layers, quantize_model
from hawq_onnx.qat.finetune import _step_groups, finetune
from hawq_onnx.qat.optimizers import LogAdam, StepAdamW
from hawq_onnx.qat.schedule import augment_batch, order_blocks, stage_steps, warmup_cosine
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model, model_fingerprint


@pytest.fixture(scope="module")
def digits():
    loaded = load_model("digits-cnn")
    return loaded, load_data("digits", loaded.spec)


def make_plan(loaded, w_bits, a_bits) -> Plan:
    folded = fold_copy(loaded.module, loaded.input_shape)
    infos = describe_layers(folded, loaded.input_shape)
    layers = [LayerPlan(i.name, i.kind, i.params, i.out_channels, i.macs,
                        w_bits if 0 < k < len(infos) - 1 else 8, a_bits if 0 < k < len(infos) - 1 else 8,
                        omega=float(k))
              for k, i in enumerate(infos)]
    return Plan("digits-cnn", model_fingerprint(folded), layers)


def test_ptq_at_8_bits_keeps_accuracy(digits):
    loaded, data = digits
    result = finetune(loaded, make_plan(loaded, 8, 8), data, order="ptq")
    assert result.history == [{"stage": 1, "block": "all", "layers": [lp.name for lp in result.plan.layers],
                               "sensitivity": 0.0, "steps": 0}]
    assert result.float_accuracy > 0.97
    assert result.quant_accuracy >= result.float_accuracy - 0.01
    assert result.plan.calibrated and result.plan.calibration["order"] == "ptq"


def test_fine_tuning_recovers_what_post_training_loses(digits):
    # 2-bit weights inside: post-training quantization loses tens of points, fine-tuning wins them back.
    loaded, data = digits
    plan = make_plan(loaded, 2, 4)
    ptq = finetune(loaded, plan, data, order="ptq")
    tuned = finetune(loaded, plan, data, order="single", steps=30, batch_size=64, lr=1e-3)
    assert ptq.quant_accuracy < tuned.float_accuracy - 0.1
    assert tuned.quant_accuracy > ptq.quant_accuracy + 0.15
    assert tuned.history[0]["steps"] == 30 and tuned.history[0]["loss"] > 0


def test_hawq_order_quantizes_the_most_sensitive_block_first(digits):
    loaded, data = digits
    plan = make_plan(loaded, 4, 4)
    plan.layers[3].omega = 100.0  # "down"
    result = finetune(loaded, plan, data, order="hawq", steps=12, batch_size=64, lr=1e-3)
    blocks = [h["block"] for h in result.history]
    assert blocks[0] == plan.layers[3].name
    assert blocks[1:] == [lp.name for lp in sorted(plan.layers, key=lambda lp: -lp.omega)][1:]
    assert sum(h["steps"] for h in result.history) == 12
    assert result.history[-1]["steps"] == 6  # the last stage (everything quantized) gets half


def test_blocks_group_by_parent_module_and_sensitivity_report_orders_them():
    def lp(name, omega, params=10):
        return LayerPlan(name, "conv2d", params, 4, 100, 4, 4, omega=omega)

    plan = Plan("m", "f", [lp("conv1", 0.1), lp("layer1.0.conv1", 1.0), lp("layer1.0.conv2", 1.0),
                           lp("layer1.1.conv1", 3.0), lp("layer1.1.conv2", 0.0), lp("linear", 0.5),
                           LayerPlan("head", "linear", 10, 4, 40, None, None)])
    blocks = order_blocks(plan)
    assert [b.name for b in blocks] == ["layer1.1", "layer1.0", "linear", "conv1"]
    assert blocks[0].layers == ["layer1.1.conv1", "layer1.1.conv2"]

    def ls(name, trace, params=10):
        return LayerSensitivity(name, "conv2d", params, 4, 100, 1.0, 10, True, trace, 0.0, 10, True, 0.0)

    report = Sensitivity("m", "f", "digits", {}, [ls("conv1", 50.0), ls("layer1.0.conv1", 1.0),
                                                        ls("layer1.0.conv2", 1.0), ls("layer1.1.conv1", 2.0),
                                                        ls("layer1.1.conv2", 2.0), ls("linear", 3.0, params=1)])
    assert [b.name for b in order_blocks(plan, report)] == ["conv1", "linear", "layer1.1", "layer1.0"]


def test_stage_steps_and_learning_rate_schedule():
    assert stage_steps(100, 5, 0.5) == [13, 13, 12, 12, 50]
    assert stage_steps(7, 1, 0.5) == [7]
    assert sum(stage_steps(1001, 11, 0.3)) == 1001
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) < 0.01 and f(55) == pytest.approx(0.5)


def test_step_sizes_move_by_relative_amounts_and_stay_positive():
    s = torch.nn.Parameter(torch.tensor([1e-3, 0.3, 0.3]))
    opt = LogAdam([s], lr=0.1)
    s.grad = torch.tensor([5.0, 5.0, -1e-3])
    opt.step()
    # Adam's first step has |m_hat / sqrt(v_hat)| = 1: each step size is scaled by exp(-+0.1).
    expected = torch.tensor([1e-3, 0.3, 0.3]) * torch.exp(torch.tensor([-0.1, -0.1, 0.1]))
    assert torch.allclose(s.detach(), expected, rtol=1e-5, atol=0)
    for _ in range(100):
        s.grad = torch.tensor([1e3, 1e3, 1e3])
        opt.step()
    assert (s > 0).all()


def test_step_adamw_without_units_is_adamw():
    torch.manual_seed(0)
    w0, b0 = torch.randn(4, 3, 3, 3), torch.randn(4)
    pairs = []
    for make in (lambda g: StepAdamW(g, lr=1e-2), lambda g: torch.optim.AdamW(g, lr=1e-2)):
        w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
        pairs.append((make([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}]), w, b))
    for step in range(20):
        g = torch.Generator().manual_seed(step)
        gw, gb = torch.randn(w0.shape, generator=g), torch.randn(b0.shape, generator=g)
        for opt, w, b in pairs:
            w.grad, b.grad = gw.clone(), gb.clone()
            opt.step()
    (_, w1, b1), (_, w2, b2) = pairs
    assert torch.allclose(w1, w2, rtol=0, atol=1e-6) and torch.allclose(b1, b2, rtol=0, atol=1e-6)
    assert not torch.allclose(w1, w0, atol=1e-3)


def test_step_adamw_moves_each_channel_in_units_of_its_step():
    w = torch.nn.Parameter(torch.zeros(3, 2, 1, 1))
    units = torch.tensor([1e-6, 0.02, 0.2]).reshape(3, 1, 1, 1)
    opt = StepAdamW([{"params": [w], "units": [units], "lr": 0.01, "weight_decay": 0.0}], lr=1.0)
    w.grad = torch.tensor([1e3, -5.0, 1e-3]).reshape(3, 1, 1, 1).expand(3, 2, 1, 1).clone()
    opt.step()
    # Adam's first normalised step is +-1 whatever the gradient's size: each channel moves by
    # 1 % of its own step, the dead channel (step 1e-6) not visibly at all.
    moved = w.detach()[:, 0, 0, 0]
    assert torch.allclose(moved, torch.tensor([-1e-8, 2e-4, -2e-3]), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="one unit tensor per parameter"):
        StepAdamW([{"params": [w], "units": [torch.ones(2, 1, 1, 1)]}], lr=1.0)
    with pytest.raises(ValueError, match="one unit tensor per parameter"):
        StepAdamW([{"params": [w], "units": []}], lr=1.0)


def test_step_lr_trains_quantized_weights_in_steps(digits):
    loaded, data = digits
    plan = make_plan(loaded, 2, 4)
    start = finetune(loaded, plan, data, order="ptq")
    tuned = finetune(loaded, plan, data, order="single", steps=1, batch_size=64, lr=1e-3, step_lr=0.02)
    assert tuned.plan.calibration["step_lr"] == 0.02 and tuned.plan.calibration["lr"] == 1e-3
    assert start.plan.calibration["step_lr"] is None
    # Adam's first update is +-1 per element (the warm-up's first factor is 1 here): every weight
    # of a quantized layer moves by 2 % of its channel's step, 2-bit and 8-bit alike; biases by lr.
    before, after = start.float_state_dict(), tuned.float_state_dict()
    for lp in plan.layers:
        w = before[lp.name + ".weight"]
        step = torch.tensor(start.plan.layer(lp.name).weight_scale).reshape(-1, *[1] * (w.dim() - 1))
        moved = (after[lp.name + ".weight"] - w).abs() / step
        assert moved.median() == pytest.approx(0.02, rel=1e-2), lp.name  # less weight decay and float32 rounding
        bias_moved = (after[lp.name + ".bias"] - before[lp.name + ".bias"]).abs()
        assert bias_moved.median() == pytest.approx(1e-3, rel=1e-2), lp.name


def test_step_lr_leaves_unquantized_blocks_at_the_absolute_rate(digits):
    # In HAWQ order a stage's later blocks still run in float: their weights have no step yet.
    loaded, _ = digits
    plan = make_plan(loaded, 2, 4)
    qmodel = quantize_model(fold_copy(loaded.module, loaded.input_shape), plan)
    wrapped = quant_layers(qmodel)
    off = plan.layers[1].name
    wrapped[off].enabled = False
    decay = [p for p in qmodel.parameters() if p.dim() > 1]
    groups = _step_groups(qmodel, [{"params": decay, "weight_decay": 1e-4}], lr=1e-3, step_lr=0.01)
    stepped, rest = groups
    assert stepped["lr"] == 0.01 and rest["lr"] == 1e-3 and "units" not in rest
    assert [id(p) for p in rest["params"]] == [id(wrapped[off].layer.weight)]
    assert len(stepped["params"]) == len(plan.layers) - 1
    for p, unit in zip(stepped["params"], stepped["units"]):
        assert unit.shape == (p.shape[0],) + (1,) * (p.dim() - 1)


def test_cli_step_lr(digits, tmp_path):
    loaded, _ = digits
    plan_path = tmp_path / "plan.json"
    save_plan(make_plan(loaded, 4, 4), plan_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["finetune", "--plan", str(plan_path), "--steps", "2", "--batch-size", "32",
                              "--step-lr", "0.02", "--out", str(tmp_path / "q.pt")])
    assert res.exit_code == 0, res.output
    assert load_plan(tmp_path / "q.plan.json").calibration["step_lr"] == 0.02
    res = runner.invoke(cli, ["finetune", "--plan", str(plan_path), "--steps", "2", "--step-lr", "-1",
                              "--out", str(tmp_path / "bad.pt")])
    assert res.exit_code == 2 and "--step-lr must be positive" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "bad.pt").exists()


def test_augmentation_shifts_and_flips():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert augment_batch(x, "none", g) is x
    y = augment_batch(x, "shift-flip", g)
    assert y.shape == x.shape and not torch.equal(x, y)
    # every output pixel comes from the image or the zero padding
    assert set(y.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_checkpoint_round_trip_reproduces_the_fake_quant_model(digits, tmp_path):
    loaded, data = digits
    result = finetune(loaded, make_plan(loaded, 4, 4), data, order="single", steps=8, batch_size=64, lr=1e-3)
    save_quantized(result, tmp_path / "q.pt")
    ckpt = load_quantized(tmp_path / "q.pt", result.fingerprint)
    assert ckpt.plan == result.plan and ckpt.model == "digits-cnn"
    folded, plan = restore_quantized(loaded, tmp_path / "q.pt")
    assert list(folded.state_dict()) == list(fold_copy(loaded.module, loaded.input_shape).state_dict())
    x = torch.from_numpy(data.test.x)
    with torch.no_grad():
        assert torch.equal(quantize_model(folded, plan)(x), result.model(x))
    save_plan(result.plan, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json", result.fingerprint) == result.plan


def test_load_quantized_rejects_bad_files(digits, tmp_path):
    loaded, data = digits
    with pytest.raises(HawqError, match="does not exist"):
        load_quantized(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HawqError, match="not a readable torch file"):
        load_quantized(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(HawqError, match="not a hawq-onnx quantized checkpoint"):
        load_quantized(tmp_path / "plain.pt")
    result = finetune(loaded, make_plan(loaded, 8, 8), data, order="ptq")
    save_quantized(result, tmp_path / "q.pt")
    with pytest.raises(HawqError, match="another model"):
        load_quantized(tmp_path / "q.pt", "0123456789abcdef")
    with pytest.raises(HawqError, match="another model"):
        restore_quantized(load_model("resnet20-cifar10"), tmp_path / "q.pt")


def test_same_seed_same_result(digits):
    loaded, data = digits
    plan = make_plan(loaded, 4, 4)
    runs = [finetune(loaded, plan, data, order="hawq", steps=10, batch_size=64, lr=1e-3, data_fraction=0.5, seed=s)
            for s in (3, 3, 4)]
    a, b, c = (r.float_state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].plan == runs[1].plan
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bad_options_are_one_line_errors(digits):
    loaded, data = digits
    plan = make_plan(loaded, 4, 4)
    for kwargs, match in [(dict(epochs=1, steps=1), "not both"), (dict(order="random"), "unknown order"),
                          (dict(data_fraction=0.0), "data_fraction"), (dict(lr=-1.0), "positive"),
                          (dict(step_lr=0.0), "step_lr must be positive"),
                          (dict(step_lr=float("nan")), "step_lr must be positive"),
                          (dict(step_lr=0.01, optimizer="sgd"), "needs optimizer adam")]:
        with pytest.raises(HawqError, match=match) as caught:
            finetune(loaded, plan, data, **kwargs)
        assert "--" not in str(caught.value)  # the library names parameters, the CLI names flags
    plan.fingerprint = "0123456789abcdef"
    with pytest.raises(HawqError, match="another model"):
        finetune(loaded, plan, data, order="ptq")


def test_cli_end_to_end(digits, tmp_path):
    loaded, _ = digits
    plan_path = tmp_path / "plan.json"
    save_plan(make_plan(loaded, 4, 4), plan_path)
    out = tmp_path / "q.pt"
    runner = CliRunner()
    res = runner.invoke(cli, ["finetune", "--plan", str(plan_path), "--steps", "6", "--batch-size", "64",
                              "--lr", "0.001", "--distill-weight", "1", "--temperature", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fine-tuned (PyTorch, plan grids only) top-1" in res.output and "6 steps" in res.output
    calibrated = load_plan(tmp_path / "q.plan.json")
    assert calibrated.calibrated and calibrated.calibration["steps"] == 6
    assert calibrated.calibration["distill_weight"] == 1.0 and calibrated.calibration["temperature"] == 4.0
    assert load_quantized(out).plan == calibrated

    other = json.loads(plan_path.read_text())
    other["fingerprint"] = "0123456789abcdef"
    (tmp_path / "other.json").write_text(json.dumps(other))
    res = runner.invoke(cli, ["finetune", "--plan", str(tmp_path / "other.json"), "--order", "ptq",
                              "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "another model" in lines[0]
    assert not (tmp_path / "x.pt").exists()

    res = runner.invoke(cli, ["finetune", "--plan", str(plan_path), "--out", str(plan_path)])
    assert res.exit_code == 2 and "also an input" in res.output
