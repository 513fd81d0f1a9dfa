"""The benchmark harness behind ``fasttda bench`` (see bench/README.md).

A suite is a module ``fasttda.bench.suites.<name>`` exposing
``run(ctx: fasttda.bench.harness.BenchContext) -> list[dict]``; each dict is one case
(op, backend or baseline, shape, median seconds, spread, peak memory, bytes, flops, and
``baseline`` naming the impl it is compared with, measured in the same run; see harness.py).
Anchors' code lives in `fasttda.bench.anchors` (capture anchors and their workloads in
`fasttda.bench.anchors.capture`); ``bench/make_table.py`` renders committed results.

This module imports nothing heavy: `fmt_time` is shared by the harness's log, the CLI's
summary and ``bench/make_table.py``.
"""


def fmt_time(seconds: float) -> str:
    """A duration for people: ``1.23 s``, ``4.56 ms`` or ``789 µs``."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"
