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

Spread: the timed runs fall into rounds of equal length (every model ``round_runs`` times,
interleaved). A speed-up is computed per round (the reference's median over the model's median in
that round) and reported as the median of those ratios with their interquartile range and
extremes: the figure a single ratio of medians hides (the same digits demo gave 0.97x, 1.04x
and 1.48x at batch 64 on identical runs). Rounds are added until the interquartile range of
every model's ratio is within ``target_spread`` of its median, or ``max_rounds`` or the time cap
is reached; a speed-up that did not settle is flagged unstable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.json_fields import get, items, mapping, objects, value
from hawq_onnx.options import RUNTIMES
from hawq_onnx.validation.ort_eval import NUMPY_TYPES

PROTOCOL = ("{runtime}, "
            "{warmup} warm-up runs per model, then rounds of {round_runs} timed runs per model interleaved "
            "({order}), at least {min_rounds} rounds ({runs} runs) per batch size and more until the speed-ups' "
            "interquartile range is within {spread:.0%} of their median (at most {max_rounds} rounds or "
            "{cap:g} s); median and p90 of session.run wall time, speed-up = median of the per-round ratios")
WORKER_TIMEOUT_S = 3600
MIN_ROUNDS = 5
MAX_ROUNDS = 30
TARGET_SPREAD = 0.10      # interquartile range / median of the per-round speed-ups
TIME_CAP_S = 30.0         # per batch size: no round starts after it, but the first MIN_ROUNDS always run


def round_plan(runs: int, min_rounds: int = MIN_ROUNDS) -> tuple[int, int]:
    """(rounds, runs per round) that cover at least ``runs`` runs in at least ``min_rounds`` rounds
    where ``runs`` allows: 50 runs are 5 rounds of 10, 3 runs are 3 rounds of 1."""
    rounds = max(1, min(min_rounds, runs))
    return rounds, -(-runs // rounds)


def round_medians(times_ms: Sequence[float], round_runs: int) -> np.ndarray:
    """The median of each complete round of ``round_runs`` consecutive runs."""
    t = np.asarray(times_ms, np.float64)
    n = len(t) // round_runs
    return np.median(t[:n * round_runs].reshape(n, round_runs), axis=1)


@dataclass
class SpeedupStats:
    """How many times faster one model is than a reference, over the rounds of one measurement."""

    median: float
    q25: float
    q75: float
    min: float
    max: float
    rounds: int
    target_spread: float = TARGET_SPREAD

    @classmethod
    def from_ratios(cls, ratios: Sequence[float], target_spread: float = TARGET_SPREAD) -> "SpeedupStats":
        r = np.asarray(ratios, np.float64)
        if r.size == 0:
            raise HawqError("no complete timing round to compute a speed-up from")
        q25, med, q75 = np.percentile(r, [25, 50, 75])
        return cls(float(med), float(q25), float(q75), float(r.min()), float(r.max()), int(r.size), target_spread)

    @classmethod
    def from_times(cls, reference_ms: Sequence[float], model_ms: Sequence[float], round_runs: int,
                   target_spread: float = TARGET_SPREAD) -> "SpeedupStats":
        ref, mod = round_medians(reference_ms, round_runs), round_medians(model_ms, round_runs)
        n = min(len(ref), len(mod))
        return cls.from_ratios(ref[:n] / mod[:n], target_spread)

    @property
    def relative_spread(self) -> float:
        """Interquartile range over the median: 0.1 means the middle half of the rounds lie within 10 %."""
        return (self.q75 - self.q25) / self.median if self.median > 0 else float("inf")

    @property
    def stable(self) -> bool | None:
        """None with fewer than 3 rounds: no spread to judge by."""
        if self.rounds < 3:
            return None
        return self.relative_spread <= self.target_spread + 1e-12

    def describe(self) -> str:
        """One line: median, middle half and extremes, and the verdict."""
        text = (f"{self.median:.2f}x (middle half of {self.rounds} rounds {self.q25:.2f}-{self.q75:.2f}x, "
                f"all {self.min:.2f}-{self.max:.2f}x)")
        if self.stable is None:
            return text + f"; spread unknown: {self.rounds} round(s) only"
        if not self.stable:
            return (text + f"; unstable: the middle half spans {100 * self.relative_spread:.0f} % of the median "
                    f"(target {100 * self.target_spread:.0f} %): the machine was busy or the runs are too short "
                    "to time reliably; measure again before relying on it")
        return text

    def to_json(self) -> dict:
        return {"median": self.median, "q25": self.q25, "q75": self.q75, "min": self.min, "max": self.max,
                "rounds": self.rounds, "relative_spread": self.relative_spread, "stable": self.stable,
                "target_spread": self.target_spread}

    @classmethod
    def from_json(cls, obj: Any) -> "SpeedupStats":
        """What ``to_json`` wrote (spread and verdict are recomputed); ValueError if malformed."""
        st = cls(*(get(obj, k, "number") for k in ("median", "q25", "q75", "min", "max")), get(obj, "rounds", "int"),
                 get(obj, "target_spread", "number"))
        if st.median <= 0:  # a ratio of times: the spread divides by it
            raise ValueError(f"a speed-up's median must be positive, got {st.median}")
        return st


def settled(times: dict[str, list[float]], reference: str, round_runs: int, target_spread: float) -> bool:
    """Whether every model's per-round speed-up over ``reference`` is within ``target_spread``."""
    for label, t in times.items():
        if label == reference:
            continue
        if SpeedupStats.from_times(times[reference], t, round_runs, target_spread).stable is not True:
            return False
    return True


@dataclass
class LatencyStats:
    batch_size: int
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    times_ms: list[float] = field(default_factory=list, repr=False)
    round_runs: int = 0          # runs per round (0: one round of all runs)
    # What report.json said: it keeps the figures, not times_ms, and the rounds are counted from those.
    recorded_rounds: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_times(cls, batch_size: int, times_ms: Sequence[float], round_runs: int = 0) -> "LatencyStats":
        t = np.asarray(times_ms, np.float64)
        return cls(batch_size, len(t), float(np.median(t)), float(np.percentile(t, 90)), float(t.mean()),
                   float(t.min()), [float(v) for v in t], round_runs)

    @property
    def rounds(self) -> int:
        if not self.times_ms and self.recorded_rounds is not None:
            return self.recorded_rounds
        return len(self.times_ms) // self.round_runs if self.round_runs else 1

    def to_json(self) -> dict:
        return {"batch_size": self.batch_size, "runs": self.runs, "median_ms": self.median_ms,
                "p90_ms": self.p90_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms,
                "rounds": self.rounds, "round_runs": self.round_runs or self.runs}

    @classmethod
    def from_json(cls, obj: Any) -> "LatencyStats":
        """What ``to_json`` wrote: the figures without the raw ``times_ms`` (empty); ValueError if malformed."""
        return cls(get(obj, "batch_size", "int"), get(obj, "runs", "int"),
                   *(get(obj, k, "number") for k in ("median_ms", "p90_ms", "mean_ms", "min_ms")),
                   round_runs=get(obj, "round_runs", "int"), recorded_rounds=get(obj, "rounds", "int"))


@dataclass
class LatencyResult:
    provider: str
    threads: int
    warmup: int
    runs: int
    batch_sizes: list[int]
    protocol: str
    models: dict[str, dict[int, LatencyStats]]   # label -> batch size -> stats
    target_spread: float = TARGET_SPREAD

    def speedup_stats(self, label: str, reference: str, batch_size: int) -> SpeedupStats:
        """Per-round speed-ups of ``label`` over ``reference``: median, spread, stability."""
        ref, mod = self.models[reference][batch_size], self.models[label][batch_size]
        round_runs = ref.round_runs or len(ref.times_ms)
        return SpeedupStats.from_times(ref.times_ms, mod.times_ms, round_runs, self.target_spread)

    def speedup(self, label: str, reference: str, batch_size: int) -> float:
        """How many times faster ``label`` is than ``reference`` (median of the per-round ratios)."""
        return self.speedup_stats(label, reference, batch_size).median

    def to_json(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "warmup": self.warmup, "runs": self.runs,
                "batch_sizes": self.batch_sizes, "protocol": self.protocol, "target_spread": self.target_spread,
                "models": {label: {str(bs): s.to_json() for bs, s in per.items()}
                           for label, per in self.models.items()}}

    @classmethod
    def from_json(cls, obj: Any, models: dict[str, dict[int, LatencyStats]] | None = None) -> "LatencyResult":
        """What ``to_json`` wrote; ``models`` replaces its "models" (report.json keeps them with each
        model instead). Every ``times_ms`` is empty, so :meth:`speedup_stats` cannot be recomputed:
        the figures derived from the times are in the stats. ValueError if malformed."""
        if models is None:
            models = objects(obj, "models", lambda per: mapping(per, "a model's latency", LatencyStats.from_json,
                                                                int_keys=True))
        return cls(get(obj, "provider", "str"), get(obj, "threads", "int"), get(obj, "warmup", "int"),
                   get(obj, "runs", "int"), items(obj, "batch_sizes", lambda b: value(b, "int", "a batch size")),
                   get(obj, "protocol", "str"), models, get(obj, "target_spread", "number"))


def _batch(x: np.ndarray, batch_size: int) -> np.ndarray:
    """The first ``batch_size`` samples, repeated when the pool is smaller."""
    idx = np.arange(batch_size) % len(x)
    return np.ascontiguousarray(x[idx])


def measure_latency(models: dict[str, str | Path], x: model_inputs.Arrays, *, batch_sizes: Sequence[int] = (1, 64),
                    threads: int = 2, runs: int = 50, warmup: int = 5,
                    providers: Sequence[str] = ("CPUExecutionProvider",), target_spread: float = TARGET_SPREAD,
                    max_rounds: int = MAX_ROUNDS, time_cap_s: float = TIME_CAP_S,
                    runtime: str = "ort") -> LatencyResult:
    """Time ``models`` (label -> ONNX path; the first is the speed-up reference) interleaved on
    samples from ``x``, in a child process, under ONNX Runtime (``providers``) or OpenVINO's CPU plugin."""
    if runtime not in RUNTIMES:
        raise OptionError(f"unknown {{runtime}} {runtime!r}: use {', '.join(RUNTIMES)}", "runtime")
    if threads < 1:
        raise OptionError(f"{{threads}} must be at least 1, got {threads}", "threads")
    if runs < 1 or warmup < 0:
        raise OptionError(f"{{runs}} must be at least 1 and {{warmup}} at least 0 (got {runs}, {warmup})", "runs", "warmup")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise HawqError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if model_inputs.count(x) == 0:
        raise HawqError("no samples to time the models on")
    min_rounds, round_runs = round_plan(runs)
    max_rounds = max(max_rounds, min_rounds)
    with tempfile.TemporaryDirectory(prefix="hawq-latency-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        pool = model_inputs.take(x, slice(0, max(batch_sizes)))
        # Named inputs by name, the others by position (the order of the model's inputs).
        np.savez(inputs, **(pool if isinstance(pool, dict) else
                            {f"arr_{i}": v for i, v in enumerate(model_inputs.leaves(pool))}))
        request = {"models": {k: str(Path(v).resolve()) for k, v in models.items()}, "inputs": str(inputs),
                   "batch_sizes": list(batch_sizes), "threads": threads, "warmup": warmup,
                   "min_rounds": min_rounds, "round_runs": round_runs, "max_rounds": max_rounds,
                   "target_spread": target_spread, "time_cap_s": time_cap_s, "providers": list(providers),
                   "runtime": runtime}
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
    per_model = {label: {int(bs): LatencyStats.from_times(int(bs), t, round_runs) for bs, t in per.items()}
                 for label, per in reply["times_ms"].items()}
    order = " ".join(list(models)[:3]) + (" ..." if len(models) > 3 else "") + " repeated"
    if runtime == "openvino":
        from hawq_onnx.validation.openvino_runtime import describe

        provider, runtime_words = describe(), f"{describe()}, {threads} inference threads per compiled model"
    else:
        provider = providers[0]
        runtime_words = f"ONNX Runtime, one process-wide {threads}-thread intra-op pool shared by all sessions"
    protocol = PROTOCOL.format(runtime=runtime_words, threads=threads, warmup=warmup, round_runs=round_runs, order=order,
                               min_rounds=min_rounds, runs=min_rounds * round_runs, spread=target_spread,
                               max_rounds=max_rounds, cap=time_cap_s)
    return LatencyResult(provider=provider, threads=threads, warmup=warmup, runs=runs,
                         batch_sizes=list(batch_sizes), protocol=protocol, models=per_model,
                         target_spread=target_spread)


def _ort_sessions(request: dict) -> dict:
    import onnxruntime as ort

    # Before any session exists: every session below uses this one pool.
    ort.set_global_thread_pool_sizes(request["threads"], 1)
    sessions = {}
    for label, path in request["models"].items():
        so = ort.SessionOptions()
        so.use_per_session_threads = False
        so.log_severity_level = 4  # failures reach the user as our one-line message
        try:
            sessions[label] = ort.InferenceSession(path, so, providers=request["providers"])
        except Exception as exc:
            raise HawqError(f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
    return sessions


def _openvino_sessions(request: dict) -> dict:
    # OpenVINO's CPU threads sleep when idle, so a pool per compiled model does not steal from the next.
    from hawq_onnx.validation.openvino_runtime import open_session

    return {label: open_session(path, request["threads"]) for label, path in request["models"].items()}


def _worker(request: dict) -> dict:
    import time

    try:
        opened = (_openvino_sessions if request.get("runtime") == "openvino" else _ort_sessions)(request)
    except HawqError as exc:
        return {"error": str(exc)}
    sessions = {label: (sess, [(i.name, i.type) for i in sess.get_inputs()]) for label, sess in opened.items()}
    with np.load(request["inputs"]) as stored:
        arrays = {k: stored[k] for k in stored.files}
    times: dict[str, dict[str, list[float]]] = {label: {} for label in sessions}
    for bs in request["batch_sizes"]:
        feeds = {label: {name: _batch(arrays[name] if name in arrays else arrays[f"arr_{k}"], bs)
                         .astype(NUMPY_TYPES.get(t, np.float32)) for k, (name, t) in enumerate(inputs)}
                 for label, (_, inputs) in sessions.items()}
        for _ in range(request["warmup"]):
            for label, (sess, _) in sessions.items():
                sess.run(None, feeds[label])
        runs: dict[str, list[float]] = {label: [] for label in sessions}
        reference = next(iter(sessions))
        started, rounds = time.perf_counter(), 0
        while True:
            for _ in range(request["round_runs"]):
                for label, (sess, _) in sessions.items():
                    start = time.perf_counter_ns()
                    sess.run(None, feeds[label])
                    runs[label].append((time.perf_counter_ns() - start) / 1e6)
            rounds += 1
            if rounds < request["min_rounds"]:
                continue
            if (rounds >= request["max_rounds"] or time.perf_counter() - started > request["time_cap_s"]
                    or settled(runs, reference, request["round_runs"], request["target_spread"])):
                break
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
