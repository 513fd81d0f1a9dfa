"""No host sync per chunk: `fasttda.score` reads device data a fixed number of times per run,
whatever the number of chunks; `quantize` checks its input with one reduction; the prefetch
thread stages chunks in order, ahead of the caller, and hands its errors over.

Syncs are counted from the outside: a torch function mode records every call that reads a
tensor's data on the host (``.item()``, ``bool()``, ``.cpu()``, ``nonzero`` ...) made from
fasttda's own code; on a GPU, `torch.cuda.set_sync_debug_mode` counts the device syncs too.
"""
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_same_ranking, fp32_dot_bound, needs_triton, triton_device
from torch.overrides import TorchFunctionMode

import fasttda
import fasttda.kernels
from fasttda import scoring
from fasttda.ops.quantize import quantize
from fasttda.store import FeatureStore

HOST_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "cpu", "tolist", "numpy", "__array__",
              "nonzero", "argwhere"}
OURS = tuple(str(Path(m.__file__).parent) for m in (fasttda, fasttda.kernels))
TORCH = str(Path(torch.__file__).parent)


class HostReads(TorchFunctionMode):
    """Records (function, file:line) for each host read of tensor data made by fasttda code."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(OURS):
                self.calls.append(f"{name} at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
        return func(*args, **(kwargs or {}))


def counted(fn):
    """(result, host reads by fasttda, CUDA syncs) of ``fn()``."""
    cuda = torch.cuda.is_available()
    with warnings.catch_warnings(record=True) as caught, HostReads() as reads:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    return result, reads.calls, syncs


@needs_triton
@pytest.mark.parametrize("fmt", ["int8", "fp32"])
def test_score_reads_the_device_once_per_run_not_per_chunk(gen, tmp_path, fmt):
    """2 chunks or 12: the same host reads, a handful in all (query check, the final flag, the ids)."""
    dev = triton_device()
    x = torch.randn(600, 24, generator=gen)
    with FeatureStore.create(tmp_path / "s", 24, fmt, shard_rows=250) as writer:
        writer.append(x, ids=[f"doc-{i}" for i in range(600)])
        writer.commit()
    store = FeatureStore.open(tmp_path / "s")
    q = torch.randn(3, 24, generator=gen).to(dev)

    def run(chunk_rows):
        return counted(lambda: fasttda.score(q, store, k=7, chunk_rows=chunk_rows, device=dev, backend="triton"))

    few, few_reads, few_syncs = run(300)
    many, many_reads, many_syncs = run(50)
    assert len(many_reads) == len(few_reads) <= 6, (few_reads, many_reads)
    assert len(many_syncs) == len(few_syncs), (few_syncs, many_syncs)
    bound = fp32_dot_bound(q.cpu(), x.abs() * (1 + 1 / 127), extra=4)  # |dequantized| <= |x| (1 + 1/127)
    assert_same_ranking((few.values, few.indices), (many.values, many.indices), bound)
    assert many.ids.tolist() == [[f"doc-{i}" for i in row] for row in many.indices.tolist()]


def test_score_reports_a_bad_chunk_after_the_stream(gen, tmp_path):
    """The per-chunk flags are read once, at the end; the error still names what is wrong."""
    class Store:
        fmt, dim = "int8", 8

        def __init__(self):
            self.data = torch.randint(-127, 128, (100, 8), generator=gen, dtype=torch.int8)
            self.scale = torch.rand(100, generator=gen) + 0.5
            self.scale[77] = float("nan")

        def __len__(self):
            return 100

        def iter_chunks(self, rows, start=0, stop=None):
            stop = 100 if stop is None else stop
            for lo in range(start, stop, rows):
                hi = min(stop, lo + rows)
                yield SimpleNamespace(start=lo, data=self.data[lo:hi], scale=self.scale[lo:hi],
                                      norms=self.scale[lo:hi], fmt="int8", ids=None)

    with pytest.raises(ValueError, match="scales must be finite"):
        fasttda.score(torch.randn(2, 8, generator=gen), Store(), k=3, chunk_rows=20, backend="reference")


@pytest.mark.parametrize("fmt", ["int8", "fp16", "bf16"])
def test_quantize_checks_its_input_with_one_host_read(gen, fmt):
    x = torch.randn(300, 40, generator=gen)
    _, reads, _ = counted(lambda: quantize(x, fmt, backend="reference"))
    assert len(reads) == 1, reads
    bad = x.clone()
    bad[123, 4] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[123\]"):
        quantize(bad, fmt, backend="reference")
    if fmt != "int8":
        big = x.clone()
        big[7, 3] = -1e5 if fmt == "fp16" else -3.4e38  # finite in float32, past the format's range
        with pytest.raises(ValueError, match=f"{fmt} range"):
            quantize(big, fmt, backend="reference")


def test_background_stage_runs_ahead_in_order_on_another_thread():
    staged, threads = [], set()
    seen = threading.Event()

    def stage(i):
        threads.add(threading.get_ident())
        staged.append(i)
        if i == 1:
            seen.set()
        return i * 10

    out = []
    for value in scoring._in_background(iter(range(8)), stage):
        if value == 0:  # while the caller holds item 0, item 1 is staged on the other thread
            assert seen.wait(10), "the next item was not staged ahead"
            time.sleep(0.05)
            assert max(staged) <= 2, f"staged {staged} while the caller holds item 0: more than depth + 1 ahead"
        out.append(value)
    assert out == [i * 10 for i in range(8)] and staged == list(range(8))
    assert threads and threading.get_ident() not in threads


def test_background_stage_hands_errors_over_and_stops_when_closed():
    def stage(i):
        if i == 3:
            raise OSError("disk went away at item 3")
        return i

    got = []
    with pytest.raises(OSError, match="item 3"):
        for value in scoring._in_background(iter(range(10)), stage):
            got.append(value)
    assert got == [0, 1, 2]
    before = threading.active_count()
    gen = scoring._in_background(iter(range(1000)), lambda i: i)
    assert next(gen) == 0
    gen.close()  # the consumer stops early: the thread ends, nothing is left running
    assert not [t for t in threading.enumerate() if t.name == "fasttda-prefetch"]
    assert threading.active_count() <= before
