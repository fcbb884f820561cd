"""Latency budgets (HAWQ-V3): per-layer tables measured in the network, and allocation under them."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

from hawq_onnx.allocation.pareto import Item, solve_ilp
from hawq_onnx.allocation.solve import allocate, parse_latency
from hawq_onnx.cli import cli
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.latency_table import LatencyTable, choice_key
from test_allocation import make_report


def brute(items, size_limit, latency_limits):
    best = None
    for choice in itertools.product(*(range(item.size.size) for item in items)):
        size = sum(int(it.size[j]) for it, j in zip(items, choice))
        lat = [sum(float(it.latency[k][j]) for it, j in zip(items, choice)) for k in range(len(latency_limits))]
        if size > size_limit or any(v > lim for v, lim in zip(lat, latency_limits)):
            continue
        cost = sum(float(it.cost[j]) for it, j in zip(items, choice))
        if best is None or cost < best[0] - 1e-12:
            best = (cost, choice)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_latency_rows_are_exact_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    items = [Item.of(rng.integers(1, 40, 4), np.zeros(4), rng.uniform(0, 10, 4), rng.uniform(0.1, 2.0, (2, 4)))
             for _ in range(5)]
    size_limit = int(sum(it.size.max() for it in items) * 0.6)
    limits = [float(sum(it.latency[k].min() for it in items) * 1.3) for k in range(2)]
    expected = brute(items, size_limit, limits)
    got = solve_ilp(items, size_limit, None, latency_limits=limits)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        cost = sum(float(it.cost[j]) for it, j in zip(items, got))
        assert cost == pytest.approx(expected[0], abs=1e-9)
        assert all(sum(float(it.latency[k][j]) for it, j in zip(items, got)) <= limits[k] + 1e-12 for k in range(2))


def table(report, batch: int, slow_int: str, rest: float = 0.1) -> LatencyTable:
    """Every layer 1 ms in float and 0.5 ms as int8 (4-bit inputs +0.2), except ``slow_int``: 3 ms as int8."""
    layers = {}
    for layer in report.layers:
        w8 = 3.0 if layer.name == slow_int else 0.5
        layers[layer.name] = {"float": 1.0, "w8a8": w8, "w8a4": w8 + 0.2, "wsa8": w8, "wsa4": w8 + 0.2}
    return LatencyTable("ONNX Runtime (test)", "ort-vnni", "test CPU", 2, batch, layers,
                        float_total_ms=len(layers) * 1.0 + rest, rest_ms=rest)


def test_a_latency_budget_keeps_the_slow_integer_layer_float():
    report = make_report([400, 800, 800, 800, 200], seed=3, act=True)
    slow = report.layers[2].name
    assert all(lp.w_bits is not None for lp in allocate(report, "4x", a_bits=(4, 8)).layers)
    tables = [table(report, 1, slow), table(report, 64, slow)]
    plan = allocate(report, "2.5x", a_bits=(4, 8), latency_tables=tables, max_latency="0.8x")
    bits = {lp.name: (lp.w_bits, lp.a_bits) for lp in plan.layers}
    assert bits[slow] == (None, None)
    predicted = plan.totals["latency_ms"]
    assert set(predicted) == {"1", "64"} and all(v <= 0.8 * 5.1 + 1e-9 for v in predicted.values())
    assert plan.budget["latency"]["tables"][0]["limit_ms"] == pytest.approx(0.8 * 5.1)
    assert plan.allocation["method"] == "ilp-highs"
    # The size budget still holds with the float layer in it.
    assert plan.totals["weight_bytes"] <= plan.budget["bytes"]


def test_latency_limits_are_checked():
    report = make_report([400, 800, 800, 800, 200], seed=3, act=True)
    tables = [table(report, 1, report.layers[2].name)]
    with pytest.raises(OptionError, match="latency table"):
        allocate(report, "4x", max_latency="0.8x")
    with pytest.raises(HawqError, match="below the fastest allocation"):
        allocate(report, "4x", latency_tables=tables, max_latency="0.1x")
    with pytest.raises(OptionError, match="max_latency"):
        parse_latency("fast", 1.0, 1)
    with pytest.raises(OptionError, match="several batch sizes"):
        parse_latency("2ms", 1.0, 2)
    assert parse_latency("800us", 1.0, 1) == pytest.approx(0.8) and parse_latency("0.5x", 4.0, 2) == 2.0
    # Before any work, as the other limits of an allocation are.
    from hawq_onnx.api import check_allocation
    from hawq_onnx.options import AllocateOptions

    with pytest.raises(OptionError, match="latency_batch_sizes"):
        check_allocation(["8x"], AllocateOptions(max_latency="0.9x", latency_batch_sizes=(0,)), "candidates")
    with pytest.raises(OptionError, match="max_latency"):
        check_allocation(["8x"], AllocateOptions(max_latency="soon"), "candidates")


def test_a_table_reads_back_and_refuses_what_it_is_not(tmp_path):
    report = make_report([400, 800], seed=1)
    t = table(report, 8, report.layers[0].name)
    path = t.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    assert back == t and back.ms(report.layers[0].name, 4, 4) == 3.2 and back.ms(report.layers[1].name, None, 8) == 1.0
    assert choice_key(2, 4) == "wsa4" and choice_key(8, 8) == "w8a8" and choice_key(None, None) == "float"
    doc = json.loads(path.read_text())
    doc["layers"][report.layers[0].name] = {"w8a8": -1}
    path.write_text(json.dumps(doc))
    with pytest.raises(HawqError, match="malformed"):
        LatencyTable.load(path)


def test_tables_measured_in_the_network_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HAWQ_ONNX_CACHE", str(tmp_path))
    from hawq_onnx.core.bn_fold import fold_copy
    from hawq_onnx.sources.data import load_data
    from hawq_onnx.sources.model import load_model
    from hawq_onnx.validation import layer_latency

    loaded = load_model("digits-cnn")
    folded = fold_copy(loaded.module, loaded.input_shape)
    calib = load_data("digits", loaded.spec).calib.x
    tables = layer_latency.latency_tables(folded, loaded.input_shape, calib, target="ort-vnni", batch_sizes=(1, 8),
                                          threads=1, runs=10)
    assert [t.batch_size for t in tables] == [1, 8]
    for t in tables:
        assert list(t.layers) == ["stem", "block_conv1", "block_conv2", "down", "conv", "fc"]
        assert all(set(e) == {"float", "w8a8", "w8a4", "wsa8", "wsa4"} for e in t.layers.values())
        assert all(v >= 0 for e in t.layers.values() for v in e.values())
        assert t.float_total_ms > 0 and t.rest_ms > 0 and t.target == "ort-vnni"
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2
    monkeypatch.setattr(layer_latency, "layer_times", lambda *a, **k: pytest.fail("measured again"))
    again = layer_latency.latency_tables(folded, loaded.input_shape, calib, target="ort-vnni", batch_sizes=(1, 8),
                                         threads=1, runs=10)
    assert again == tables
    with pytest.raises(OptionError, match="no particular runtime"):
        layer_latency.latency_tables(folded, loaded.input_shape, calib, target="compact")


def test_openvino_tables_come_from_its_own_profiler(tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra (pip install hawq-onnx[openvino])")
    monkeypatch.setenv("HAWQ_ONNX_CACHE", str(tmp_path))
    from hawq_onnx.core.bn_fold import fold_copy
    from hawq_onnx.sources.data import load_data
    from hawq_onnx.sources.model import load_model
    from hawq_onnx.validation import layer_latency

    loaded = load_model("digits-cnn")
    folded = fold_copy(loaded.module, loaded.input_shape)
    calib = load_data("digits", loaded.spec).calib.x
    (t,) = layer_latency.latency_tables(folded, loaded.input_shape, calib, target="openvino", batch_sizes=(8,),
                                        threads=1, runs=10)
    assert t.runtime.startswith("OpenVINO") and t.target == "openvino"
    assert list(t.layers) == ["stem", "block_conv1", "block_conv2", "down", "conv", "fc"]
    assert all(e["w8a8"] > 0 for e in t.layers.values())


def test_quantize_holds_a_latency_budget_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HAWQ_ONNX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["quantize", "--out", str(out), "--a-bits", "4,8", "--max-latency", "1.5x",
                                   "--latency-batch-sizes", "8", "--runs", "0", "--epochs", "0.2"])
    assert res.exit_code == 0, res.output
    plan = json.loads((out / "plan.json").read_text())
    tables = plan["budget"]["latency"]["tables"]
    assert [t["batch_size"] for t in tables] == [8] and tables[0]["predicted_ms"] <= tables[0]["limit_ms"]
    for args, words in ((["--max-latency", "fast"], "max-latency"),
                        (["--max-latency", "0.9x", "--target", "compact"], "names none")):
        bad = CliRunner().invoke(cli, ["quantize", "--out", str(tmp_path / "x"), *args])
        assert bad.exit_code == 2 and words in bad.stderr, bad.output
        assert not (tmp_path / "x" / "sensitivity.json").exists()  # refused before any work
