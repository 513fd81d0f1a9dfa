"""Progress reporting that suits both a terminal and a log file.

On a terminal (stderr is a TTY) `bar` is a tqdm bar. Anywhere else (CI, ``nohup``, a log
file, a notebook's captured stderr) tqdm's carriage-return redraws would pile up as
thousands of lines, so `bar` prints one plain line every ``interval`` seconds instead
(``FASTTDA_PROGRESS_INTERVAL``, default 10 s), plus one line when it finishes:

    index @ epoch3: 1200/8000 ex (15%), 95.1 ex/s, 12 s elapsed, ~71 s left

A bar is a context manager with ``update(n)``, ``set_postfix(**values)`` and ``close()``,
the part of tqdm's interface fasttda uses.
"""
from __future__ import annotations

import os
import sys
import time

DEFAULT_INTERVAL_S = 10.0


def bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "ex", stream=None,
        interval: float | None = None):
    """A progress bar over ``total`` units: tqdm on a terminal, periodic lines elsewhere,
    nothing at all when ``enabled`` is false."""
    if not enabled:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    if _is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=False)
    if interval is None:
        interval = _interval_from_env()
    return LineProgress(total, desc, unit=unit, stream=stream, interval=interval)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _interval_from_env() -> float:
    raw = os.environ.get("FASTTDA_PROGRESS_INTERVAL", "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LineProgress:
    """One self-contained line at most every ``interval`` seconds, and one at the end."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "ex", stream=None,
                 interval: float = DEFAULT_INTERVAL_S, clock=time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval, self.clock = float(interval), clock
        self.n, self.postfix, self.closed = 0, "", False
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now, final=False)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit(self.clock(), final=True)

    def line(self, now: float, final: bool) -> str:
        elapsed = max(now - self.start, 0.0)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        if elapsed > 0 and self.n:
            parts.append(f"{self.n / elapsed:.1f} {self.unit}/s")
        parts.append(f"{elapsed:.0f} s elapsed" if not final else f"done in {elapsed:.1f} s")
        if not final and self.total and self.n and elapsed > 0:
            parts.append(f"~{(self.total - self.n) * elapsed / self.n:.0f} s left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts)

    def _emit(self, now: float, final: bool) -> None:
        try:
            self.stream.write(self.line(now, final) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed log must not stop the work
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
