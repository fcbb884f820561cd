"""Iterative freezing of oscillating weights: the schedule, the tracker, and fine-tuning with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from hawq_onnx.cli import cli
from hawq_onnx.data import load_data
from hawq_onnx.errors import HawqError
from hawq_onnx.fake_quant import QuantLayer, quantize_model
from hawq_onnx.finetune import finetune, restore_quantized, save_quantized
from hawq_onnx.model_source import load_model
from hawq_onnx.oscillation import FreezeSchedule, OscillationFreezer, parse_freeze_schedule
from hawq_onnx.plan import load_plan, save_plan
from test_finetune import make_plan


def _layer(w_bits: int, rows: int = 4, cols: int = 5) -> QuantLayer:
    q = QuantLayer(nn.Linear(cols, rows, bias=False), w_bits, None)
    q.weight_quant.set_scale(torch.full((rows,), 0.1))
    with torch.no_grad():
        q.layer.weight.fill_(0.02)  # integer 0 everywhere
    return q


def test_schedule_decays_from_start_to_end_and_parses():
    s = FreezeSchedule(0.1, 0.01)
    assert s.threshold(0.0) == pytest.approx(0.1) and s.threshold(1.0) == pytest.approx(0.01)
    values = [s.threshold(p / 10) for p in range(11)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert parse_freeze_schedule("0.1:0.01") == s
    assert parse_freeze_schedule("0.05") == FreezeSchedule(0.05, 0.05)
    assert parse_freeze_schedule("off") is None and parse_freeze_schedule(None) is None
    for bad in ("fast", "0.1:0.01:0.001", "nan", "0.01:0.1", "0:0", "2"):
        with pytest.raises(HawqError):
            parse_freeze_schedule(bad)


def test_a_weight_flipping_back_and_forth_freezes_at_its_usual_integer():
    q = _layer(2)
    freezer = OscillationFreezer({"fc": q}, FreezeSchedule(0.05, 0.05, momentum=0.1))
    w = q.layer.weight
    steady = (0, slice(None))           # row 0 never moves
    once = (1, slice(None))             # row 1 crosses a threshold once and stays
    for step in range(60):
        with torch.no_grad():
            # Row 2 oscillates between integers 0 and 1 (three steps at 0, one at 1).
            w[2] = 0.06 if step % 4 == 3 else 0.04
            w[1] = 0.08 if step >= 10 else 0.02
        freezer.step(step / 59)
    t = freezer.trackers["fc"]
    assert t.frozen[2].all() and not t.frozen[steady].any() and not t.frozen[once].any()
    assert torch.equal(t.frozen_int[2], torch.zeros(5))  # the average integer (0.25) rounds to 0
    # Frozen weights are pinned to integer * scale whatever the optimizer does, and follow the scale.
    with torch.no_grad():
        w[2] = 0.09
        q.weight_quant.set_scale(torch.full((4,), 0.15))
    freezer.step(1.0)
    assert torch.equal(w[2], torch.zeros(5))
    with torch.no_grad():
        assert torch.equal(q.weight_quant(w)[1], torch.full((5,), 0.15))  # still integer 1, not pinned
    assert freezer.frozen_share() == pytest.approx(5 / 20)
    assert freezer.summary() == {"fc": pytest.approx(0.25)}


def test_pinned_weights_round_to_the_frozen_integer_in_the_forward():
    q = _layer(4)
    freezer = OscillationFreezer({"fc": q}, FreezeSchedule(0.05, 0.05, momentum=0.2))
    for step in range(40):
        with torch.no_grad():
            q.layer.weight[0] = 0.349 if step % 2 else 0.351   # integers 3, 4, 3, 4, ...
        freezer.step(0.5)
    t = freezer.trackers["fc"]
    assert t.frozen[0].all()
    k = t.frozen_int[0, 0]
    assert float(k) in (3.0, 4.0)
    assert torch.equal(q.weight_quant(q.layer.weight)[0], torch.full((5,), float(k) * 0.1))


def test_eight_bit_float_and_disabled_layers_are_not_tracked():
    eight, four, plain = _layer(8), _layer(4), QuantLayer(nn.Linear(5, 4), None, 8)
    freezer = OscillationFreezer({"a": eight, "b": four, "c": plain}, FreezeSchedule(0.1, 0.01))
    assert list(freezer.layers) == ["b"]
    four.enabled = False
    freezer.step(0.0)
    assert freezer.trackers == {} and freezer.frozen_share() == 0.0
    four.enabled = True
    freezer.step(0.0)
    assert list(freezer.trackers) == ["b"]


@pytest.fixture(scope="module")
def digits():
    loaded = load_model("digits-cnn")
    return loaded, load_data("digits", loaded.spec)


def test_fine_tuning_with_freezing_records_it_and_the_checkpoint_keeps_the_frozen_integers(digits, tmp_path):
    loaded, data = digits
    plan = make_plan(loaded, 2, 4)
    # A constant low threshold and a high learning rate, so that some weights freeze in 40 steps.
    schedule = FreezeSchedule(0.02, 0.02, momentum=0.1)
    result = finetune(loaded, plan, data, order="single", steps=40, batch_size=64, lr=3e-3,
                      freeze_oscillations=schedule)
    frozen = result.history[-1]["frozen"]
    assert set(frozen) == {lp.name for lp in plan.layers if lp.w_bits <= 4}
    assert 0 < max(frozen.values()) < 0.5
    assert result.plan.calibration["freeze_oscillations"] == schedule.to_json()
    plain = finetune(loaded, plan, data, order="single", steps=40, batch_size=64, lr=3e-3)
    assert "frozen" not in plain.history[-1] and plain.plan.calibration["freeze_oscillations"] is None

    # The checkpoint holds latent weights that round to what was trained: same model after a round trip.
    path = save_quantized(result, tmp_path / "q.pt")
    folded, calibrated = restore_quantized(loaded, path)
    restored = quantize_model(folded, calibrated).eval()
    x = torch.as_tensor(data.test.x[:64])
    with torch.no_grad():
        assert torch.equal(restored(x), result.model(x))


def test_cli_option_and_its_errors(digits, tmp_path):
    loaded, _ = digits
    plan_path = tmp_path / "plan.json"
    save_plan(make_plan(loaded, 2, 4), plan_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["finetune", "--plan", str(plan_path), "--order", "single", "--steps", "6",
                              "--batch-size", "64", "--freeze-oscillations", "0.1:0.01", "--out", str(tmp_path / "q.pt")])
    assert res.exit_code == 0, res.output
    assert "frozen oscillating weights:" in res.output
    assert load_plan(tmp_path / "q.plan.json").calibration["freeze_oscillations"]["start"] == 0.1
    res = runner.invoke(cli, ["finetune", "--plan", str(plan_path), "--freeze-oscillations", "0.01:0.1",
                              "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "end <= start" in lines[0]
    assert not (tmp_path / "x.pt").exists()
