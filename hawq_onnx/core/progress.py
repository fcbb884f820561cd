"""Progress of long loops: a live tqdm bar on a terminal, a few plain log lines anywhere else.

A bar redraws itself with carriage returns, which a log file keeps as one unreadable line of
hundreds of updates. Where stderr is not a terminal, progress is therefore told through the
``hawq_onnx.progress`` logger at INFO: one line at the start, then one whenever both ~10 % of
the total and ~30 s have passed since the last line, and one at the end, each with the count,
the rate and the time left. With no logging configured at all (a notebook, a plain script) the
lines go to stderr directly, so that ``progress=True`` is never silently lost.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

LOGGER = "hawq_onnx.progress"
log = logging.getLogger(LOGGER)

# An interim line needs both: a long loop logs every ~10 %, a fast one only starts and ends.
STEP_FRACTION = 0.1
MIN_INTERVAL_S = 30.0


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def format_seconds(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_rate(count: float, seconds: float, unit: str) -> str | None:
    if count <= 0 or seconds <= 0:
        return None
    rate = count / seconds
    if rate < 1:
        return f"{1 / rate:.3g} s/{unit}"
    return f"{rate:.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"


class Silent:
    """Progress switched off: the loop runs as is."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


class LogProgress(Silent):
    """tqdm's interface (update, set_postfix, iteration, close) told in a few log lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(iterable)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.stream, self.clock = stream, clock
        self.n: float = 0
        self.postfix: dict[str, Any] = {}
        self.start = self.last_t = clock()
        self.last_n: float = 0
        self.closed = False
        self.lines = 0
        what = f"{self._count(0)}" if total is not None else "started"
        self._emit(what)

    def _count(self, n: float) -> str:
        shown = int(n) if float(n).is_integer() else round(n, 1)
        if self.total is None:
            return f"{shown} {plural(self.unit)}"
        total = int(self.total) if float(self.total).is_integer() else self.total
        return f"{shown}/{total} {plural(self.unit)}"

    def _emit(self, text: str) -> None:
        extra = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        line = f"{self.desc}: {text}" + (f", {extra}" if extra else "")
        self.lines += 1
        if log.hasHandlers():
            log.info(line)
            return
        stream = self.stream or sys.stderr
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.closed:
            return
        now = self.clock()
        step = STEP_FRACTION * self.total if self.total else 0
        if self.n - self.last_n < step or now - self.last_t < MIN_INTERVAL_S:
            return
        if self.total is not None and self.n >= self.total:
            return  # the final line says it
        elapsed = now - self.start
        parts = [self._count(self.n)]
        rate = format_rate(self.n, elapsed, self.unit)
        if rate:
            parts.append(rate)
            if self.total is not None:
                parts.append(f"eta {format_seconds((self.total - self.n) * elapsed / self.n)}")
        self._emit(", ".join(parts))
        self.last_n, self.last_t = self.n, now

    def set_postfix(self, **values: Any) -> None:
        self.postfix = dict(values)

    def __iter__(self) -> Iterator:
        for item in super().__iter__():
            yield item
            self.update(1)
        self.close()

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(stopped=exc_type is not None)

    def close(self, stopped: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = self.clock() - self.start
        parts = [f"{self._count(self.n)} in {format_seconds(elapsed)}"]
        rate = format_rate(self.n, elapsed, self.unit)
        if rate:
            parts.append(rate)
        self._emit(("stopped at " if stopped else "") + ", ".join(parts))


def progress_bar(iterable: Iterable | None = None, *, enabled: bool, desc: str, total: float | None = None,
                 unit: str = "it", leave: bool = True, stream: TextIO | None = None) -> Any:
    """A tqdm-like progress object: a live bar where ``stream`` (stderr) is a terminal, a few log
    lines where it is not, nothing where ``enabled`` is false. ``leave=False`` clears a
    terminal bar when done (log lines stay: a log is a record)."""
    if not enabled:
        return Silent(iterable)
    stream = stream if stream is not None else sys.stderr
    if stream is not None and is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, leave=leave)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, stream=stream)
