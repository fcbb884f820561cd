"""Broken ONNX files through `inspect` and the ONNX Runtime loading path: clean errors only.

A few hundred mutated models run in-process here; `fuzz/fuzz_onnx.py` runs thousands, each in
its own process with a time bound.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from fuzz_onnx import run_targets, seed_models  # noqa: E402
from onnx_mutations import MUTATIONS, mutate  # noqa: E402

CASE_SECONDS = 10


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


@pytest.fixture(scope="module")
def seeds():
    return seed_models()


def test_every_mutation_kind_gives_clean_outcomes(tmp_path, seeds):
    rng = np.random.default_rng(1)
    counts: Counter = Counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(300):
            name, data = mutate(seeds[i % len(seeds)], rng)
            path = tmp_path / f"case{i}.onnx"
            path.write_bytes(data)
            signal.alarm(CASE_SECONDS)
            try:
                counts[run_targets(str(path))] += 1
            except _Timeout:
                pytest.fail(f"case {i} ({name}) took over {CASE_SECONDS} s")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert counts["clean"] > 200  # most mutations break the model, and each says so in one line
    assert set(counts) <= {"ok", "clean"}


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_single_mutation_kinds(tmp_path, seeds, kind):
    rng = np.random.default_rng(7)
    for i in range(5):
        try:
            data = MUTATIONS[kind](seeds[0], rng)
        except Exception:
            continue
        path = tmp_path / f"{kind}{i}.onnx"
        path.write_bytes(data)
        assert run_targets(str(path)) in ("ok", "clean")
