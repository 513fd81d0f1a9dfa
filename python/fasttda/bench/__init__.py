"""The benchmark harness behind ``fasttda bench`` (see bench/README.md).

A suite is a module ``fasttda.bench.suites.<name>`` exposing
``run(ctx: fasttda.bench.harness.BenchContext) -> list[dict]``; each dict is one case
(op, backend or baseline, shape, median seconds, spread, peak memory, bytes, flops, and
``baseline`` naming the impl it is compared with, measured in the same run; see harness.py).
"""
