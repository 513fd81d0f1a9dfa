"""Progress off a terminal: plain lines at most every interval, never carriage returns."""
from __future__ import annotations

import io

from fasttda.progress import LineProgress, bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_line_progress_prints_at_most_once_per_interval_and_once_at_the_end():
    stream, clock = io.StringIO(), Clock()
    with LineProgress(800, "index @ epoch3", stream=stream, interval=5.0, clock=clock) as p:
        for _ in range(80):  # 80 updates over 20 simulated seconds (exact binary fractions)
            clock.t += 0.25
            p.update(10)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4 + 1, lines  # at 5, 10, 15, 20 s, then the final line
    assert lines[0].startswith("index @ epoch3: 200/800 ex (25%)") and "~15 s left" in lines[0]
    assert lines[-1].startswith("index @ epoch3: 800/800 ex (100%)") and "done in 20.0 s" in lines[-1]


def test_bar_is_lines_off_a_tty_and_silent_when_disabled():
    stream = io.StringIO()  # isatty() is False, as for a log file
    b = bar(3, "queries", stream=stream, interval=0.0)
    assert isinstance(b, LineProgress)
    b.update(1)
    b.set_postfix(loss="0.123")
    b.close()
    b.close()  # closing twice prints once
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("queries: 1/3 ex (33%)")
    assert lines[-1].endswith("loss=0.123") and len(lines) == 2
    quiet = io.StringIO()
    with bar(3, "x", enabled=False, stream=quiet) as b:
        b.update(3)
    assert quiet.getvalue() == ""


def test_bar_is_tqdm_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    stream = Tty()
    with bar(2, "scoring", stream=stream) as b:
        b.update(2)
    assert isinstance(b, tqdm)
