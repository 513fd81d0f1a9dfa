"""Interleaved timing: several implementations of one workload, timed round by round.

`BenchContext.measure` times one implementation in one block of calls. On a shared CPU,
block timing confounds the implementation with the machine's state while its block ran:
the other tenants' load, and the process's heap (glibc returns freed memory to the OS and
raises its mmap threshold as the run goes on, so the same plain forward + backward of the
capture suite's Llama took 330 ms in one heap state and 285 ms in another). Ratios of a
few per cent between implementations measured in different blocks are then noise.

`measure_interleaved` builds every implementation, measures each one's memory over its
build and warm-up calls (one at a time, as `measure` does), and then times ``rounds``
rounds; each round calls every implementation once on the same input set, in an order
rotated from round to round. Every implementation's median then comes from the same
minutes and the same heap, and the RSS sampler's thread is not running while calls are
timed. Results are the usual cases (`BenchContext.case`), one per implementation, with
``extra["timing"] = "interleaved"``.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from fasttda.bench.harness import BenchContext, _PeakMemory, _release_free_memory, summarize


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_interleaved(ctx: BenchContext, builds: dict[str, Callable[[], Callable]], *, suite: str, name: str,
                        params: dict, rotate: Sequence, warmup: int, rounds: int,
                        baseline: str | None = None, extra: Callable[[str], dict] | None = None) -> list[dict]:
    """One case per implementation in ``builds`` (impl name -> builder of ``fn(input_set)``).

    An implementation whose build or call raises is reported as missing and leaves the
    rounds; the others go on. ``baseline`` names the implementation the others are compared
    with (its own case has none). ``extra(impl)`` gives each case's extra fields, read after
    the rounds.
    """
    if not rotate:
        raise ValueError("rotate must hold at least one input set")
    if warmup < 1 or rounds < 1:
        raise ValueError(f"warmup and rounds must be >= 1, got {warmup} and {rounds}")
    fns: dict[str, Callable] = {}
    peaks: dict[str, int | None] = {}
    missing: dict[str, dict] = {}

    def fail(impl: str, exc: Exception) -> None:
        missing[impl] = ctx.failed(exc, suite=suite, impl=impl, name=name, params=params)
        fns.pop(impl, None)

    for impl, build in builds.items():
        try:
            if ctx.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            with _PeakMemory(ctx.device) as mem:
                fns[impl] = build()
                for i in range(warmup):
                    fns[impl](rotate[i % len(rotate)])
                _sync(ctx.device)
            # CPU: the resident set's peak growth; CUDA: the allocator's peak over the build and calls
            peaks[impl] = max(0, torch.cuda.max_memory_allocated() - base) if ctx.device == "cuda" else mem.growth
        except Exception as exc:  # a failing impl is reported, the run goes on
            fail(impl, exc)
        _release_free_memory()
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    for r in range(rounds):
        order = list(fns)
        order = order[r % len(order):] + order[:r % len(order)] if order else order
        batch = rotate[(warmup + r) % len(rotate)]
        for impl in order:
            try:
                _sync(ctx.device)
                t0 = time.perf_counter()
                fns[impl](batch)
                _sync(ctx.device)
                times[impl].append(time.perf_counter() - t0)
            except Exception as exc:
                fail(impl, exc)
                times.pop(impl, None)
    cases = []
    for impl in builds:
        if impl in missing:
            cases.append(missing[impl])
            continue
        timing = summarize(times[impl], peaks.get(impl))
        fields = dict(extra(impl) if extra is not None else {})
        fields.update(timing="interleaved", rounds=rounds)
        cases.append(ctx.case(suite=suite, name=name, impl=impl, params=params, timing=timing,
                              baseline=None if impl == baseline else baseline, extra=fields))
    return cases
