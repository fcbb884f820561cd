"""Fuzz `inspect` and the ONNX Runtime loading path with thousands of broken models.

    python fuzz/fuzz_onnx.py [--cases 3000] [--seed 0] [--timeout 10]

Each case mutates a real model (the digits CNN, float and quantized), writes it to a
file and runs the targets in a worker process with a time bound. Counts: ok (loaded), clean
errors (HawqError, one line), tracebacks (any other exception: a bug), hangs, crashes. The goal
is zero of the last three.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
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
    from hawq_onnx.errors import HawqError
    from hawq_onnx.onnx_inspect import format_inspection, inspect_onnx
    from hawq_onnx.ort_session import open_session

    try:
        format_inspection(inspect_onnx(path))
        open_session(path)
        return "ok"
    except HawqError as exc:
        assert "\n" not in str(exc), f"multi-line error: {exc!r}"
        return "clean"


def _worker(path: str, queue) -> None:
    try:
        queue.put(("result", run_targets(path)))
    except BaseException as exc:  # noqa: BLE001
        queue.put(("traceback", f"{exc.__class__.__name__}: {str(exc)[:200]}"))


def fuzz(cases: int, seed: int, timeout: float, workdir: Path) -> Counter:
    rng = np.random.default_rng(seed)
    models = seed_models()
    counts: Counter = Counter()
    ctx = mp.get_context("fork")
    for i in range(cases):
        name, data = mutate(models[i % len(models)], rng)
        path = workdir / f"case{i}.onnx"
        path.write_bytes(data)
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(str(path), queue))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            counts["hang"] += 1
            print(f"HANG case {i} ({name})", file=sys.stderr)
        elif proc.exitcode != 0:
            counts["crash"] += 1
            print(f"CRASH case {i} ({name}): exit {proc.exitcode}", file=sys.stderr)
        else:
            kind, detail = queue.get()
            if kind == "traceback":
                counts["traceback"] += 1
                print(f"TRACEBACK case {i} ({name}): {detail}", file=sys.stderr)
            else:
                counts[detail] += 1
        path.unlink(missing_ok=True)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        counts = fuzz(args.cases, args.seed, args.timeout, Path(tmp))
    print(f"{args.cases} cases in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("ok", "clean", "traceback", "hang", "crash")))
    sys.exit(1 if counts["traceback"] or counts["hang"] or counts["crash"] else 0)


if __name__ == "__main__":
    main()
