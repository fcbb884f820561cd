"""Run fuzz cases through the real command line, each in its own process with a time bound.

A case is a broken input file and a command that reads it. Its outcome is

- ``ok``: exit 0, every output there and complete;
- ``clean``: exit 2, stderr ending in exactly one ``error: ...`` line, no traceback, no output
  and no temporary file left in the output folder;

and anything else is a finding: ``traceback`` (an internal error, exit 3, or an exception that
escaped), ``bad-error`` (exit 2 but not one line), ``partial`` (an output after a failure, or
a missing or broken one after success), ``bad-exit`` (another status), ``hang`` (over the time
bound), ``crash`` (the process died: a segfault in a native library), ``noise`` (a native
library wrote to the terminal past our one-line messages: ONNX Runtime's logger).

Commands run in-process through click's CliRunner, in a child forked per case from a parent
that imported everything once. ``speedups()`` memoises the two slow steps whose inputs never
vary between cases (scikit-learn's digits, torch's export of the unchanged digits CNN) and
makes calibration use the min/max observer, so that thousands of cases fit in minutes.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

FINDINGS = ("traceback", "bad-error", "partial", "bad-exit", "noise", "hang", "crash")


class Finding(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _last_line(stderr: str) -> str:
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def run_cli(args: list[str], outputs: list[Path], out_dir: Path,
            check_ok: Callable[[], None] | None = None) -> str:
    """Invoke ``hawq-onnx ARGS`` in-process and classify it; raise Finding for anything bad."""
    from click.testing import CliRunner

    from hawq_onnx.cli import cli

    result = CliRunner().invoke(cli, args)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(result.exception)).strip().splitlines()
        raise Finding("traceback", f"{type(result.exception).__name__}: {result.exception} at {tb[-3:]}")
    if "Traceback" in stderr or result.exit_code == 3:
        raise Finding("traceback", _last_line(stderr)[:300])
    if result.exit_code == 0:
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise Finding("partial", f"exit 0 without {missing}")
        if check_ok is not None:
            try:
                check_ok()
            except Exception as exc:  # noqa: BLE001
                raise Finding("partial", f"exit 0 but the output is broken: {type(exc).__name__}: {exc}") from None
        return "ok"
    if result.exit_code != 2:
        raise Finding("bad-exit", f"exit {result.exit_code}: {_last_line(stderr)[:300]}")
    errors = [ln for ln in stderr.splitlines() if ln.rsplit("\r", 1)[-1].startswith(("error:", "Error:"))]
    if len(errors) != 1 or not _last_line(stderr).startswith(("error:", "Error:")):
        raise Finding("bad-error", stderr[-300:])
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    if left:
        raise Finding("partial", f"after '{_last_line(stderr)[:200]}' the output folder holds {left}")
    return "clean"


def speedups(patch: Callable[[object, str, object], None] = setattr, single_thread: bool = True) -> None:
    """Memoise what every case recomputes with the same inputs (see the module docstring).

    ``patch``: ``setattr``, or pytest's ``monkeypatch.setattr`` to undo it after a test.
    """
    import torch

    from hawq_onnx.onnx_export import float_onnx as export
    from hawq_onnx.onnx_export import qdq as qdq_export
    from hawq_onnx.qat import finetune
    from hawq_onnx.sources import data

    if single_thread:
        torch.set_num_threads(1)  # no OpenMP pool in the parent: forked children stay safe
    patch(data, "_load_digits", functools.lru_cache(maxsize=1)(data._load_digits))
    real_float_onnx = export.float_onnx
    cache: dict[str, object] = {}

    def float_onnx(model, input_shape, opset=export.FLOAT_OPSET):
        h = hashlib.sha256(repr((tuple(input_shape), opset)).encode())
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        key = h.hexdigest()
        if key not in cache:
            cache[key] = real_float_onnx(model, input_shape, opset)
        proto = type(cache[key])()
        proto.CopyFrom(cache[key])
        return proto

    patch(export, "float_onnx", float_onnx)
    patch(qdq_export, "float_onnx", float_onnx)
    patch(finetune.finetune, "__kwdefaults__", {**finetune.finetune.__kwdefaults__, "observer": "minmax"})


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self, title: str) -> str:
        kinds = ["ok", "clean", *FINDINGS]
        return f"{title}: {sum(self.counts.values())} cases in {self.seconds:.0f} s: " + ", ".join(
            f"{k} {self.counts.get(k, 0)}" for k in kinds)

    @property
    def bad(self) -> int:
        return sum(self.counts.get(k, 0) for k in FINDINGS)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _worker(run_one, path: str, queue) -> None:
    # Native libraries (ONNX Runtime's logger) write to file descriptor 2, past CliRunner: catch
    # that too, since a user sees it as more lines on stderr.
    native = tempfile.TemporaryFile()
    os.dup2(native.fileno(), 2)
    try:
        outcome = ("result", run_one(Path(path)))
    except Finding as f:
        outcome = (f.kind, f.detail)
    except BaseException as exc:  # noqa: BLE001
        tb = traceback.format_exc().strip().splitlines()
        outcome = ("traceback", f"{type(exc).__name__}: {str(exc)[:200]} at {tb[-3:]}")
    native.seek(0)
    stray = native.read().decode(errors="replace").strip()
    if stray and outcome[0] == "result":
        outcome = ("noise", f"{outcome[1]} with native output on stderr: {stray.splitlines()[0][:200]}")
    queue.put(outcome)


def run_cases(cases: Iterable[tuple[str, bytes]], run_one: Callable[[Path], str], *, timeout: float,
              suffix: str, workdir: Path | None = None, forked: bool = True, verbose: bool = True) -> Report:
    """Write each case's bytes to a file and run ``run_one(file)`` on it (forked, time-bound)."""
    report = Report()
    start = time.perf_counter()
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i, (name, data) in enumerate(cases):
            path = Path(tmp) / f"case{i}{suffix}"
            path.write_bytes(data)
            if not forked:  # in-process (the test suite): a time bound by SIGALRM, other errors raise
                old = signal.signal(signal.SIGALRM, _alarm)
                signal.alarm(math.ceil(timeout))
                try:
                    kind, detail = "result", run_one(path)
                except Finding as f:
                    kind, detail = f.kind, f.detail
                except _Timeout:
                    kind, detail = "hang", f"over {timeout:g} s"
                finally:
                    signal.alarm(0)
                    signal.signal(signal.SIGALRM, old)
            else:
                queue = ctx.Queue()
                proc = ctx.Process(target=_worker, args=(run_one, str(path), queue))
                proc.start()
                proc.join(timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                    kind, detail = "hang", f"over {timeout:g} s"
                elif proc.exitcode != 0 or queue.empty():
                    kind, detail = "crash", f"exit {proc.exitcode}"
                else:
                    kind, detail = queue.get()
            if kind == "result":
                report.counts[detail] += 1
            else:
                report.counts[kind] += 1
                report.findings.append(f"{kind.upper()} case {i} ({name}): {detail}")
                if verbose:
                    print(report.findings[-1], file=sys.stderr)
            path.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    return report


def fuzz_main(targets: Iterable[str], fuzz: Callable[..., "Report"], default_timeout: float) -> None:
    """The command line of a target-by-target CLI fuzzer: build the seed artefacts, run each target,
    print its counts; exit 1 when any case was a traceback, a hang, a crash or a partial output."""
    import argparse

    from seed_artifacts import build_artifacts

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3000, help="cases per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=default_timeout)
    ap.add_argument("--targets", default=",".join(targets))
    args = ap.parse_args()
    speedups()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        art = build_artifacts(Path(tmp) / "seed")
        for target in args.targets.split(","):
            report = fuzz(target, art, args.cases, args.seed, args.timeout)
            print(report.line(target), flush=True)
            bad += report.bad
    sys.exit(1 if bad else 0)
