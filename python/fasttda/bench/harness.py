"""The benchmark harness: timing, peak memory, machine facts, ratios, roofline, JSON.

A suite (``fasttda.bench.suites.<name>``) exposes ``run(ctx: BenchContext) -> list[dict]``
and builds each dict with `BenchContext.case` (a measurement) or `BenchContext.missing`
(a baseline or op that is not installed or failed: reported, never dropped).
`finalize` then fills in, over every case of the run:

* ``ratio_vs_baseline`` = baseline median / case median, where ``baseline`` names the impl
  of the case with the same suite, name and params (so > 1 means faster than the baseline);
* ``gbps`` / ``tflops`` from the counted ``bytes_moved`` / ``flops``;
* ``pct_copy_bw`` / ``pct_matmul`` against the ceilings measured once per run.

Timing on CPU is `time.perf_counter` around each call after warm-up, and peak memory is the
peak resident-set growth sampled while the case runs. On CUDA it is
`triton.testing.do_bench` (CUDA events, L2 flushed between calls) or a CUDA-event loop,
and peak memory is `torch.cuda.max_memory_allocated` growth. ``rotate`` cycles the calls
over several input sets so repeated calls do not measure a warm cache.
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import math
import os
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from fasttda.bench import fmt_time
from fasttda.bench.machine import device_slug, machine_info  # noqa: F401 (part of this module's API)

SCHEMA_VERSION = 1
DEVICES = ("cpu", "cuda")


# -- timing ------------------------------------------------------------------------------
def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_s: Sequence[float], peak_mem_bytes: int | None) -> dict:
    values = sorted(float(t) for t in times_s)
    if not values:
        raise ValueError("summarize needs at least one timing")
    return {
        "median_s": statistics.median(values),
        "p25_s": _quantile(values, 0.25),
        "p75_s": _quantile(values, 0.75),
        "min_s": values[0],
        "repeats": len(values),
        "peak_mem_bytes": peak_mem_bytes,
    }


class _RssSampler:
    """Peak resident-set growth of this process while the `with` block runs (Linux)."""

    PERIOD_S = 0.002

    def __init__(self):
        self.available = os.path.exists("/proc/self/statm")
        self._page = os.sysconf("SC_PAGE_SIZE") if self.available else 0
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.PERIOD_S)

    def __enter__(self):
        if not self.available:
            return self
        _release_free_memory()
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.available:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int | None:
        return max(0, self.peak - self.start) if self.available else None


class _PeakMemory:
    """Memory growth over a `with` block: peak RSS on CPU, allocator bytes held on GPU."""

    def __init__(self, device: str):
        self.device = device
        self.growth: int | None = None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.start = torch.cuda.memory_allocated()
        else:
            self.rss = _RssSampler().__enter__()
        return self

    def held(self) -> int:
        """Bytes held now beyond the start (CUDA); 0 on CPU, whose sampler tracks the peak."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            return max(0, torch.cuda.memory_allocated() - self.start)
        return 0

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.growth = max(0, torch.cuda.memory_allocated() - self.start)
        else:
            self.rss.__exit__(*exc)
            self.growth = self.rss.growth


def _release_free_memory(collect: bool = False) -> None:
    """Hand freed heap back to the OS so RSS growth is measurable; ``collect`` also runs
    the cycle collector first (a quarter second with transformers loaded: once per case)."""
    if collect:
        gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class _Calls:
    """Turns (fn, setup, rotate) into a zero-argument call plus an untimed preparation."""

    def __init__(self, fn: Callable, setup: Callable | None, rotate: Sequence | None):
        if setup is not None and rotate is not None:
            raise ValueError("timeit takes setup or rotate, not both")
        if rotate is not None and len(rotate) == 0:
            raise ValueError("rotate must hold at least one input set")
        self.fn, self.setup, self.rotate = fn, setup, rotate
        self.i = 0
        self.arg = None

    def prepare(self) -> None:
        if self.setup is not None:
            self.arg = self.setup()
        elif self.rotate is not None:
            self.arg = self.rotate[self.i % len(self.rotate)]
            self.i += 1

    def __call__(self):
        if self.setup is None and self.rotate is None:
            return self.fn()
        return self.fn(self.arg)


# -- the context ----------------------------------------------------------------------------
class BenchContext:
    """What a suite gets: the device, quick mode, a timer and the case builders."""

    def __init__(self, *, quick: bool = False, device: str = "cpu", log: Callable[[str], None] | None = None,
                 measure_ceilings: bool = True):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
        self.quick = bool(quick)
        self.device = device
        self.torch_device = torch.device(device)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.ceilings: dict = {}
        self._measure_ceilings = measure_ceilings

    # -- inputs -------------------------------------------------------------------------
    def randn(self, *shape: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
        """Random normal input on the bench device (never zeros), reproducible by seed."""
        g = torch.Generator(device=self.torch_device).manual_seed(seed)
        return torch.randn(*shape, generator=g, dtype=torch.float32, device=self.torch_device).to(dtype)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    # -- timing -------------------------------------------------------------------------
    def timeit(self, fn: Callable, *, warmup: int | None = None, repeats: int | None = None,
               setup: Callable | None = None, rotate: Sequence | None = None) -> dict:
        """Time ``fn`` and return ``median_s, p25_s, p75_s, min_s, repeats, peak_mem_bytes``.

        ``fn()`` is called bare; with ``setup``, ``fn(setup())`` with setup untimed; with
        ``rotate`` (a list of input sets), ``fn(rotate[i % len(rotate)])``. ``warmup`` and
        ``repeats`` count calls; left None, they adapt to the call's duration (more repeats
        for fast calls, at least 3, and fewer in quick mode).
        """
        calls = _Calls(fn, setup, rotate)
        if self.device == "cuda":
            return self._timeit_cuda(calls, warmup, repeats)
        return self._timeit_cpu(calls, warmup, repeats)

    def _repeat_plan(self, first_call_s: float, repeats: int | None) -> int:
        if repeats is not None:
            if repeats < 1:
                raise ValueError(f"repeats must be >= 1, got {repeats}")
            return repeats
        budget_s, most = (0.15, 5) if self.quick else (3.0, 50)
        return int(min(most, max(3, budget_s / max(first_call_s, 1e-6))))

    def _timeit_cpu(self, calls: _Calls, warmup: int | None, repeats: int | None) -> dict:
        times: list[float] = []
        with _RssSampler() as rss:
            first_s = None
            for _ in range(max(1, 1 if warmup is None else warmup)):
                calls.prepare()
                t0 = time.perf_counter()
                calls()
                first_s = time.perf_counter() - t0
            for _ in range(self._repeat_plan(first_s, repeats)):
                calls.prepare()
                t0 = time.perf_counter()
                calls()
                times.append(time.perf_counter() - t0)
        return summarize(times, rss.growth)

    def _timeit_cuda(self, calls: _Calls, warmup: int | None, repeats: int | None) -> dict:
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = None
        if calls.setup is None and warmup is None and repeats is None:
            times = self._do_bench(calls)
        if times is None:
            times = self._event_loop(calls, warmup, repeats)
        torch.cuda.synchronize()
        return summarize(times, max(0, torch.cuda.max_memory_allocated() - base))

    def _do_bench(self, calls: _Calls) -> list[float] | None:
        try:
            from triton.testing import do_bench
        except Exception:
            return None

        def call():
            calls.prepare()
            calls()

        warmup_ms, rep_ms = (10, 50) if self.quick else (25, 200)
        try:
            ms = do_bench(call, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        except (TypeError, AssertionError):  # an older triton without return_mode="all"
            return None
        return [t / 1e3 for t in ms]

    def _event_loop(self, calls: _Calls, warmup: int | None, repeats: int | None) -> list[float]:
        flush = torch.empty(64 << 20, dtype=torch.int32, device="cuda")  # 256 MiB > any L2
        for _ in range(max(1, 2 if warmup is None else warmup)):
            calls.prepare()
            calls()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(); calls.prepare(); calls(); end.record(); torch.cuda.synchronize()
        times = [start.elapsed_time(end) / 1e3]
        for _ in range(self._repeat_plan(times[0], repeats) - 1):
            flush.zero_()
            calls.prepare()
            start.record()
            calls()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return times

    # -- case builders --------------------------------------------------------------------
    def case(self, *, suite: str, name: str, impl: str, params: dict, timing: dict,
             bytes_moved: int | None = None, flops: int | None = None, baseline: str | None = None,
             extra: dict | None = None) -> dict:
        """One measured case. ``baseline`` names the impl of the case it is compared with."""
        for key in ("median_s", "p25_s", "p75_s", "min_s", "repeats"):
            if key not in timing:
                raise ValueError(f"timing must come from ctx.timeit (missing {key!r})")
        result = {
            "status": "ok", "suite": suite, "name": name, "impl": impl, "device": self.device,
            "params": _jsonable(params), **{k: timing[k] for k in
                                            ("median_s", "p25_s", "p75_s", "min_s", "repeats")},
            "peak_mem_bytes": timing.get("peak_mem_bytes"),
            "bytes_moved": None if bytes_moved is None else int(bytes_moved),
            "flops": None if flops is None else int(flops),
            "baseline": baseline, "ratio_vs_baseline": None,
            "gbps": None, "tflops": None, "pct_copy_bw": None, "pct_matmul": None,
            "extra": _jsonable(extra or {}),
        }
        self.log(f"  {suite}/{name} {impl}: {fmt_time(result['median_s'])} "
                 f"(p25 {fmt_time(result['p25_s'])}, p75 {fmt_time(result['p75_s'])}, n={result['repeats']})")
        return result

    def missing(self, *, suite: str, impl: str, reason: str, name: str | None = None,
                params: dict | None = None) -> dict:
        """A baseline or op that is not installed, not applicable, or failed."""
        self.log(f"  {suite}/{name or '*'} {impl}: MISSING ({reason})")
        return {"status": "missing", "suite": suite, "name": name, "impl": impl, "device": self.device,
                "params": _jsonable(params or {}), "reason": str(reason)}

    def failed(self, exc: Exception, *, suite: str, impl: str, name: str | None = None,
               params: dict | None = None) -> dict:
        """The `missing` entry of an impl whose build or call raised ``exc`` (an
        `anchors.AnchorMissing` reads as missing, anything else as failed)."""
        reason = str(exc) if type(exc).__name__ == "AnchorMissing" else f"failed: {type(exc).__name__}: {exc}"
        return self.missing(suite=suite, impl=impl, name=name, params=params, reason=reason[:500])

    def measure(self, fn: Callable | None = None, *, suite: str, name: str, impl: str, params: dict,
                build: Callable[[], Callable] | None = None, bytes_moved: int | None = None,
                flops: int | None = None, baseline: str | None = None, extra: dict | None = None,
                **timeit_kwargs) -> dict:
        """`timeit` + `case`, or a `missing` entry saying why when building or calling raises.

        Give ``fn``, or ``build`` (returns fn): then the peak memory counts from before the
        build, so state an implementation keeps between calls (a cached matrix, an index)
        is part of its figure. A build raising `anchors.AnchorMissing` reads as missing.
        """
        if (fn is None) == (build is None):
            raise ValueError("measure takes fn or build, exactly one")
        try:
            with _PeakMemory(self.device) as outer:
                if build is not None:
                    fn = build()
                state = outer.held()
                timing = self.timeit(fn, **timeit_kwargs)
            if self.device == "cuda":  # timeit's CUDA peak counts from after the build
                timing["peak_mem_bytes"] = state + (timing["peak_mem_bytes"] or 0)
            elif outer.growth is not None:
                timing["peak_mem_bytes"] = max(outer.growth, timing["peak_mem_bytes"] or 0)
        except Exception as exc:  # a failing impl is reported, the run goes on
            return self.failed(exc, suite=suite, impl=impl, name=name, params=params)
        finally:
            fn = None
            _release_free_memory(collect=not self.quick)
            if self.device == "cuda":
                torch.cuda.empty_cache()
        return self.case(suite=suite, name=name, impl=impl, params=params, timing=timing,
                         bytes_moved=bytes_moved, flops=flops, baseline=baseline, extra=extra)

    # -- ceilings (roofline) ----------------------------------------------------------------
    def measure_ceilings(self) -> dict:
        """Copy bandwidth (bytes read + written per second) and matmul rate, once per run."""
        if self.ceilings or not self._measure_ceilings:
            return self.ceilings
        n = (16 << 20) if (self.quick or self.device == "cpu") else (256 << 20)  # float32 elements
        src = self.randn(n)
        dst = torch.empty_like(src)
        copy = self.timeit(lambda: dst.copy_(src), repeats=5 if self.quick else 20)
        size = 1024 if (self.quick and self.device == "cpu") else (2048 if self.device == "cpu" else 8192)
        out = {"copy_gbps": 2 * src.numel() * 4 / copy["median_s"] / 1e9, "copy_bytes": 2 * src.numel() * 4}
        dtypes = [torch.float32] if self.device == "cpu" else [torch.bfloat16, torch.float32]
        for dtype in dtypes:
            a, b = self.randn(size, size, dtype=dtype, seed=1), self.randn(size, size, dtype=dtype, seed=2)
            t = self.timeit(lambda: a @ b, repeats=3 if self.quick else 10)
            out[f"matmul_{str(dtype).split('.')[-1]}_tflops"] = 2 * size**3 / t["median_s"] / 1e12
        out["matmul_size"] = size
        out["matmul_tflops"] = out[f"matmul_{str(dtypes[0]).split('.')[-1]}_tflops"]
        self.ceilings = out
        del src, dst
        _release_free_memory(collect=True)
        return out


# -- finishing a run ------------------------------------------------------------------------
def finalize(results: list[dict], ceilings: dict) -> list[dict]:
    """Fill in ratios against same-run baselines, GB/s, TFLOP/s and % of ceilings (in place)."""
    by_key = {(r["suite"], r["name"], r["impl"], _params_key(r["params"])): r
              for r in results if r.get("status") == "ok"}
    for r in results:
        if r.get("status") != "ok":
            continue
        t = r["median_s"]
        if r["bytes_moved"] and t > 0:
            r["gbps"] = r["bytes_moved"] / t / 1e9
            if ceilings.get("copy_gbps"):
                r["pct_copy_bw"] = 100.0 * r["gbps"] / ceilings["copy_gbps"]
        if r["flops"] and t > 0:
            r["tflops"] = r["flops"] / t / 1e12
            if ceilings.get("matmul_tflops"):
                r["pct_matmul"] = 100.0 * r["tflops"] / ceilings["matmul_tflops"]
        if r["baseline"]:
            base = by_key.get((r["suite"], r["name"], r["baseline"], _params_key(r["params"])))
            if base is not None and t > 0:
                r["ratio_vs_baseline"] = base["median_s"] / t
    return results


def _params_key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    return str(value)


def run_suites(names: Iterable[str], ctx: BenchContext, modules: dict[str, Callable[[], Any]]) -> dict:
    """Run each named suite (``modules[name]()`` returns its module) and build the report."""
    info = machine_info(ctx.device)
    started = _dt.datetime.now(_dt.timezone.utc)
    ceilings = {}
    try:
        ceilings = ctx.measure_ceilings()
    except Exception as exc:
        ctx.log(f"ceiling measurement failed: {type(exc).__name__}: {exc}")
    results: list[dict] = []
    suites: dict[str, dict] = {}
    for name in names:
        ctx.log(f"== suite {name}")
        t0 = time.perf_counter()
        try:
            module = modules[name]()
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("fasttda.bench.suites"):
                raise
            results.append(ctx.missing(suite=name, impl="*", reason=f"suite not in this build: {exc}"))
            suites[name] = {"status": "missing", "seconds": time.perf_counter() - t0, "cases": 0}
            continue
        try:
            cases = list(module.run(ctx))
            suites[name] = {"status": "ok", "seconds": time.perf_counter() - t0, "cases": len(cases)}
            results.extend(cases)
        except Exception as exc:  # one broken suite never hides the others
            suites[name] = {"status": "error", "seconds": time.perf_counter() - t0, "cases": 0,
                            "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()[-4000:]}
            ctx.log(f"  suite {name} FAILED: {type(exc).__name__}: {exc}")
        _release_free_memory(collect=True)
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(),
        "config": {"quick": ctx.quick, "device": ctx.device, "suites": list(suites), "argv": sys.argv[1:]},
        "machine": info,
        "ceilings": ceilings,
        "suites": suites,
        "results": finalize(results, ceilings),
    }


def result_filename(report: dict) -> str:
    stamp = report["created_utc"].replace(":", "").replace("-", "")[:13]  # 20261121T0640
    quick = "-quick" if report["config"]["quick"] else ""
    return f"{device_slug(report['machine'])}-{stamp}Z{quick}.json"


SCHEMA_PATH = Path(__file__).with_name("result.schema.json")


def load_schema() -> dict:
    import json

    return json.loads(SCHEMA_PATH.read_text())


def validate(report: dict) -> None:
    """Raise jsonschema.ValidationError when ``report`` does not match the shipped schema."""
    import jsonschema

    jsonschema.validate(report, load_schema())


def write_report(report: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``report`` as JSON into ``out_dir`` (created if needed); return the file's path."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_filename(report)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
