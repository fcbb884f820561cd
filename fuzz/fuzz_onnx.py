"""Fuzz `inspect` and the ONNX Runtime loading path with thousands of broken models.

    python fuzz/fuzz_onnx.py [--cases 3000] [--seed 0] [--timeout 10]

Each case mutates a real model (the digits CNN, float and quantized), writes it to a
file and runs the targets in a worker process with a time bound (``harness.run_cases``). Counts:
ok (loaded), clean errors (HawqError, one line), and the findings: tracebacks (any other
exception: a bug), multi-line errors, native output on stderr (ONNX Runtime's logger), hangs,
crashes. The goal is zero findings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Finding, Report, run_cases  # noqa: E402
from onnx_mutations import mutate  # noqa: E402


def seed_models() -> list[bytes]:
    """The digits CNN's float and quantized (QDQ) exports, and any fuzz/seeds/*.onnx."""
    import onnx
    from seed_artifacts import cached_artifacts

    art = cached_artifacts()
    models = [art.float_onnx.read_bytes()] + ([art.qdq_onnx.read_bytes()] if art.qdq_onnx else [])
    extra = Path(__file__).resolve().parent / "seeds"
    for p in sorted(extra.glob("*.onnx")) if extra.is_dir() else []:
        models.append(onnx.load(str(p)).SerializeToString())
    return models


def run_targets(path: str) -> str:
    """'ok' or 'clean'; anything else raises (a traceback in the CLI would be a bug)."""
    from hawq_onnx.core.inspection_format import format_inspection
    from hawq_onnx.core.onnx_inspect import inspect_onnx
    from hawq_onnx.core.ort_session import open_session
    from hawq_onnx.errors import HawqError

    try:
        format_inspection(inspect_onnx(path))
        open_session(path)
        return "ok"
    except HawqError as exc:
        if "\n" in str(exc):
            raise Finding("bad-error", f"multi-line error: {str(exc)[:200]!r}") from None
        return "clean"


def fuzz(cases: int, seed: int, timeout: float, workdir: Path | None = None) -> Report:
    """``cases`` mutated seed models, each through :func:`run_targets` in its own forked process."""
    rng = np.random.default_rng(seed)
    models = seed_models()
    mutated = (mutate(models[i % len(models)], rng) for i in range(cases))
    return run_cases(mutated, lambda path: run_targets(str(path)), timeout=timeout, suffix=".onnx", workdir=workdir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    report = fuzz(args.cases, args.seed, args.timeout)
    print(report.line("inspect + ONNX Runtime load"), flush=True)
    sys.exit(1 if report.bad else 0)


if __name__ == "__main__":
    main()
