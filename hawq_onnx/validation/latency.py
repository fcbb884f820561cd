"""Latency of several ONNX models under ONNX Runtime, timed side by side.

Protocol, per batch size: every model runs ``warmup`` times, then the models take turns,
A B A B ..., ``runs`` times each, so that drift in the machine (other processes, clocks,
thermals) hits all of them alike. Each run is timed around ``session.run``; median and p90 per
model; the speed-up of a model is the float model's median over its own.

Threads: all sessions share ONE process-wide intra-op pool
(``onnxruntime.set_global_thread_pool_sizes`` and ``use_per_session_threads = False``). With a
pool per session, the idle pool of the model that just ran keeps spinning while the next one
runs and steals its cores (measured: the float model looked 1.5x slower interleaved than
alone). Timing each model alone in its own process avoids that too but gives up the
interleaving, so drift no longer cancels. The global pool is process state that cannot be
resized and that ONNX Runtime's quantizer refuses to work beside, so the timing runs in a fresh
child process (``python -m hawq_onnx.validation.latency``): the caller's process never gets a global pool,
and every call can choose its own thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError, OptionError

PROTOCOL = ("ONNX Runtime, one process-wide {threads}-thread intra-op pool shared by all sessions, "
            "{warmup} warm-up runs per model, then {runs} timed runs per model interleaved "
            "({order}) per batch size; median and p90 of session.run wall time")
WORKER_TIMEOUT_S = 3600


@dataclass
class LatencyStats:
    batch_size: int
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    times_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_times(cls, batch_size: int, times_ms: Sequence[float]) -> "LatencyStats":
        t = np.asarray(times_ms, np.float64)
        return cls(batch_size, len(t), float(np.median(t)), float(np.percentile(t, 90)), float(t.mean()),
                   float(t.min()), [float(v) for v in t])

    def to_json(self) -> dict:
        return {"batch_size": self.batch_size, "runs": self.runs, "median_ms": self.median_ms,
                "p90_ms": self.p90_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms}


@dataclass
class LatencyResult:
    provider: str
    threads: int
    warmup: int
    runs: int
    batch_sizes: list[int]
    protocol: str
    models: dict[str, dict[int, LatencyStats]]   # label -> batch size -> stats

    def speedup(self, label: str, reference: str, batch_size: int) -> float:
        """How many times faster ``label`` is than ``reference`` (ratio of medians)."""
        return self.models[reference][batch_size].median_ms / self.models[label][batch_size].median_ms

    def to_json(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "warmup": self.warmup, "runs": self.runs,
                "batch_sizes": self.batch_sizes, "protocol": self.protocol,
                "models": {label: {str(bs): s.to_json() for bs, s in per.items()}
                           for label, per in self.models.items()}}


def _batch(x: np.ndarray, batch_size: int) -> np.ndarray:
    """The first ``batch_size`` samples, repeated when the pool is smaller."""
    idx = np.arange(batch_size) % len(x)
    return np.ascontiguousarray(x[idx])


def measure_latency(models: dict[str, str | Path], x: model_inputs.Arrays, *, batch_sizes: Sequence[int] = (1, 64),
                    threads: int = 2, runs: int = 50, warmup: int = 5,
                    providers: Sequence[str] = ("CPUExecutionProvider",)) -> LatencyResult:
    """Time ``models`` (label -> ONNX path) interleaved on samples from ``x``, in a child process."""
    if threads < 1:
        raise OptionError(f"{{threads}} must be at least 1, got {threads}", "threads")
    if runs < 1 or warmup < 0:
        raise OptionError(f"{{runs}} must be at least 1 and {{warmup}} at least 0 (got {runs}, {warmup})", "runs", "warmup")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise HawqError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if model_inputs.count(x) == 0:
        raise HawqError("no samples to time the models on")
    with tempfile.TemporaryDirectory(prefix="hawq-latency-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        pool = model_inputs.take(x, slice(0, max(batch_sizes)))
        # Named inputs by name, the others by position (the order of the model's inputs).
        np.savez(inputs, **(pool if isinstance(pool, dict) else
                            {f"arr_{i}": v for i, v in enumerate(model_inputs.leaves(pool))}))
        request = {"models": {k: str(Path(v).resolve()) for k, v in models.items()}, "inputs": str(inputs),
                   "batch_sizes": list(batch_sizes), "threads": threads, "runs": runs, "warmup": warmup,
                   "providers": list(providers)}
        req_path = Path(tmp) / "request.json"
        req_path.write_text(json.dumps(request))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        try:
            proc = subprocess.run([sys.executable, "-m", "hawq_onnx.validation.latency", str(req_path)], capture_output=True,
                                  text=True, env=env, timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise OptionError(f"latency measurement took over {WORKER_TIMEOUT_S} s; use fewer {{runs}}", "runs") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    reply = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or reply is None or "error" in reply:
        detail = reply["error"] if reply and "error" in reply else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HawqError(f"latency measurement failed: {detail}")
    per_model = {label: {int(bs): LatencyStats.from_times(int(bs), t) for bs, t in per.items()}
                 for label, per in reply["times_ms"].items()}
    order = " ".join(list(models)[:3]) + (" ..." if len(models) > 3 else "") + " repeated"
    return LatencyResult(provider=providers[0], threads=threads, warmup=warmup, runs=runs,
                         batch_sizes=list(batch_sizes),
                         protocol=PROTOCOL.format(threads=threads, warmup=warmup, runs=runs, order=order),
                         models=per_model)


def _worker(request: dict) -> dict:
    import time

    import onnxruntime as ort

    # Before any session exists: every session below uses this one pool.
    ort.set_global_thread_pool_sizes(request["threads"], 1)
    sessions = {}
    for label, path in request["models"].items():
        so = ort.SessionOptions()
        so.use_per_session_threads = False
        so.log_severity_level = 4  # failures reach the user as our one-line message
        try:
            sess = ort.InferenceSession(path, so, providers=request["providers"])
        except Exception as exc:
            return {"error": f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0]}"}
        sessions[label] = (sess, [(i.name, i.type) for i in sess.get_inputs()])
    with np.load(request["inputs"]) as stored:
        arrays = {k: stored[k] for k in stored.files}
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    times: dict[str, dict[str, list[float]]] = {label: {} for label in sessions}
    for bs in request["batch_sizes"]:
        feeds = {label: {name: _batch(arrays[name] if name in arrays else arrays[f"arr_{k}"], bs)
                         .astype(dtypes.get(t, np.float32)) for k, (name, t) in enumerate(inputs)}
                 for label, (_, inputs) in sessions.items()}
        for _ in range(request["warmup"]):
            for label, (sess, _) in sessions.items():
                sess.run(None, feeds[label])
        runs = {label: [] for label in sessions}
        for _ in range(request["runs"]):
            for label, (sess, _) in sessions.items():
                start = time.perf_counter_ns()
                sess.run(None, feeds[label])
                runs[label].append((time.perf_counter_ns() - start) / 1e6)
        for label in sessions:
            times[label][str(bs)] = runs[label]
    return {"times_ms": times}


def main(argv: list[str]) -> int:
    try:
        reply = _worker(json.loads(Path(argv[0]).read_text()))
    except Exception as exc:  # reported to the parent as one line
        reply = {"error": f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    print(json.dumps(reply))
    return 1 if "error" in reply else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
