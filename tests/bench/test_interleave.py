"""`measure_interleaved`: every implementation timed in the same rounds, on the same inputs."""
import time

import pytest
import torch

from fasttda.bench import harness
from fasttda.bench.interleave import measure_interleaved


def recorder(log, impl, fail_at=None):
    def build():
        calls = []

        def fn(batch):
            calls.append(batch)
            log.append((impl, batch))
            if fail_at is not None and len(calls) == fail_at:
                raise RuntimeError(f"{impl} broke")
        return fn
    return build


def test_rounds_call_every_impl_on_one_batch_in_rotated_order():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    log = []
    builds = {name: recorder(log, name) for name in ("a", "b", "c")}
    cases = measure_interleaved(ctx, builds, suite="s", name="w", params={"n": 1}, rotate=["x", "y"],
                                warmup=1, rounds=4, baseline="a", extra=lambda impl: {"who": impl})
    # warm-up: each impl alone, one after the other; then 4 rounds of a, b, c rotated
    assert log[:3] == [("a", "x"), ("b", "x"), ("c", "x")]
    rounds = [log[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert [[impl for impl, _ in r] for r in rounds] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert [{batch for _, batch in r} for r in rounds] == [{"y"}, {"x"}, {"y"}, {"x"}]
    assert [c["impl"] for c in cases] == ["a", "b", "c"]
    for c in cases:
        assert c["status"] == "ok" and c["repeats"] == 4 and c["extra"]["who"] == c["impl"]
        assert c["extra"]["timing"] == "interleaved" and c["extra"]["rounds"] == 4
        assert c["baseline"] == (None if c["impl"] == "a" else "a")


def test_a_slower_impl_has_the_larger_median():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    builds = {"fast": lambda: (lambda b: time.sleep(0.001)), "slow": lambda: (lambda b: time.sleep(0.02))}
    fast, slow = measure_interleaved(ctx, builds, suite="s", name="w", params={}, rotate=[0], warmup=1, rounds=3)
    assert slow["median_s"] > fast["median_s"] + 0.01


def test_a_failing_build_or_call_is_reported_missing_and_the_rest_go_on():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    log = []

    def broken_build():
        raise ValueError("no such anchor")
    builds = {"ok": recorder(log, "ok"), "build": broken_build, "call": recorder(log, "call", fail_at=3)}
    ok, build, call = measure_interleaved(ctx, builds, suite="s", name="w", params={}, rotate=[1, 2, 3],
                                          warmup=1, rounds=5)
    assert ok["status"] == "ok" and ok["repeats"] == 5
    assert build["status"] == "missing" and "ValueError: no such anchor" in build["reason"]
    assert call["status"] == "missing" and "RuntimeError: call broke" in call["reason"]
    assert sum(impl == "call" for impl, _ in log) == 3  # dropped from the rounds once it failed


def test_bad_arguments_are_refused():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    with pytest.raises(ValueError, match="rotate"):
        measure_interleaved(ctx, {}, suite="s", name="w", params={}, rotate=[], warmup=1, rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        measure_interleaved(ctx, {}, suite="s", name="w", params={}, rotate=[1], warmup=1, rounds=0)


def test_memory_counts_what_an_impl_holds_from_its_build():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    if ctx.device != "cpu" or not harness._RssSampler().available:
        pytest.skip("RSS sampling needs Linux /proc")

    def holding():
        held = torch.ones(48 << 20, dtype=torch.float32)  # 192 MiB, every page touched
        return lambda batch: held[:1].sum()
    big, small = measure_interleaved(ctx, {"big": holding, "small": lambda: (lambda batch: None)}, suite="s",
                                     name="w", params={}, rotate=[0], warmup=1, rounds=2)
    assert big["peak_mem_bytes"] >= 150 << 20
    assert small["peak_mem_bytes"] is not None and small["peak_mem_bytes"] < 50 << 20
