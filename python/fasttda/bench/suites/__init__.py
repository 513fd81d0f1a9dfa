"""Benchmark suites: one module per suite, each exposing ``run(ctx) -> list[dict]``.

Suites are imported only when run, so a suite whose op has not landed yet (or whose
baselines are not installed) reports them as missing instead of breaking the others.
"""
SUITES = ("project", "factored", "quantize", "store", "score", "capture", "e2e", "influcoder", "hf")
