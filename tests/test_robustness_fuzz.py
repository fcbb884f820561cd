"""Mutated plans, sensitivity files, reports and ONNX models through the commands: clean outcomes only.

A few hundred cases in-process (each with a time bound); ``fuzz/fuzz_json.py`` and
``fuzz/fuzz_onnx_cli.py`` run thousands, each in its own process. Every case must end as ``ok``
(exit 0, outputs complete: a plan that loads, a model that ONNX Runtime opens, a bundle that
reads back) or ``clean`` (exit 2, one error line, nothing written); see ``fuzz/harness.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import fuzz_json  # noqa: E402
import fuzz_onnx_cli  # noqa: E402
from harness import speedups  # noqa: E402
from seed_artifacts import copy_artifacts  # noqa: E402

CASE_SECONDS = 60
# target: (cases, least ok, least clean, mutation seed). Both outcomes must occur: only "clean"
# would mean the mutations test nothing but the JSON or protobuf parser; only "ok", nothing.
JSON_CASES = {"allocate": (160, 15, 50, 11), "export": (24, 2, 8, 11), "finetune": (4, 1, 1, 8),
              "package": (10, 3, 1, 2)}
ONNX_CASES = {"validate": (40, 3, 20, 5), "package": (16, 1, 8, 5)}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return copy_artifacts(tmp_path_factory.mktemp("fuzz") / "a")


@pytest.fixture
def fast(monkeypatch):
    speedups(monkeypatch.setattr, single_thread=False)


@pytest.mark.parametrize("target", sorted(JSON_CASES))
def test_mutated_json_files(art, fast, target, capfd):
    cases, least_ok, least_clean, seed = JSON_CASES[target]
    report = fuzz_json.fuzz(target, art, cases, seed=seed, timeout=CASE_SECONDS, forked=False)
    assert report.findings == [], report.findings[:5]
    assert report.counts["ok"] >= least_ok and report.counts["clean"] >= least_clean, report.counts
    assert "onnxruntime" not in capfd.readouterr().err  # no native log lines around the messages


@pytest.mark.parametrize("target", sorted(ONNX_CASES))
def test_mutated_onnx_models(art, fast, target, capfd):
    cases, least_ok, least_clean, seed = ONNX_CASES[target]
    report = fuzz_onnx_cli.fuzz(target, art, cases, seed=seed, timeout=CASE_SECONDS, forked=False)
    assert report.findings == [], report.findings[:5]
    assert report.counts["ok"] >= least_ok and report.counts["clean"] >= least_clean, report.counts
    assert "onnxruntime" not in capfd.readouterr().err
