"""Suite `capture`: forward + backward + per-example factored capture, examples per second.

One timed call = one batch through one implementation: forward, backward, and (except for
the plain rows) the per-example ``k_out × k_in`` projected gradient of every block linear.
Implementations, all on the same saved model, batches, modules and rank:

* ``plain`` (the baseline) and ``plain.frozen``: forward + backward with nothing captured;
  ``.frozen`` freezes every weight but the input embedding, so autograd skips the
  weight-gradient matmuls (what Bergson's CLI does before capture);
* ``fasttda``: `fasttda.GradientCapture` with its defaults (it freezes the weights while
  open), ``fasttda.unfrozen`` (``freeze=False``) and ``fasttda.hold_inputs``
  (``hold_inputs=True``: raw inputs kept until backward, fused `ops.project_factored`);
* ``dattri-llm.logra`` (+ ``.frozen``): dattri-llm's HookManager, logra projection;
* ``bergson`` (+ ``.frozen``): Bergson's InMemoryCollector, per-module 16×16 projection.

Workloads: a small GPT-2 and the METHODS.md section 8 Llama (4 layers, width 512, MLP 1024,
vocab 8192, fp32, batch 8 × 128 tokens, 28 block linears at rank 16×16); quick mode: a toy
GPT-2, 2 batches, one row per code path. ``extra`` carries examples/s, the overhead over
``plain`` and ``plain.frozen``, the median process CPU seconds per call (both torch threads;
steadier than wall time on a shared machine) and its ratio to ``plain``, and for fasttda the
speed-up over each anchor and the capture goals (overhead ≤ 1.5× plain on CPU, ≤ 1.15× on
GPU; faster than both anchors), and ``goals``: issue 16's targets for ``fasttda`` on CPU
(Llama: ≥ 1.05× dattri-llm's frozen mode and ≤ 1.05× frozen plain; small GPT-2: ≤ 1.2×
frozen plain), each with its value and whether it is met.

Timing is interleaved (`fasttda.bench.interleave`): every implementation of a workload is
built, warmed up and measured for memory one at a time, then timed in rounds that call each
once on the same batch, so the ratios between them, a few per cent, are not the drift of
the machine or of the heap between blocks of calls.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch

from fasttda.bench.anchors import AnchorMissing
from fasttda.bench.anchors.capture import bergson, dattri_llm, fasttda_capture
from fasttda.bench.interleave import measure_interleaved
from fasttda.bench.anchors.capture.workload import (SavedModel, Workload, make_batches, plain_step,
                                                    quiet_transformers, workloads)

SUITE = "capture"
BASELINE = "plain"
OVERHEAD_GOAL = {"cpu": 1.5, "cuda": 1.15}
# issue 16 (CPU): (workload arch, what, target); "speedup" = anchor time / fasttda time.
CPU_GOALS = (("llama", "speedup_vs:dattri-llm.logra.frozen", ">=", 1.05),
             ("llama", "overhead_vs_plain_frozen", "<=", 1.05),
             ("gpt2", "overhead_vs_plain_frozen", "<=", 1.2))
ANCHORS = ("dattri-llm.logra", "dattri-llm.logra.frozen", "bergson", "bergson.frozen")
# Quick mode is a smoke run: one row per code path (the unfrozen anchors differ only in a flag).
QUICK_IMPLS = ("plain", "plain.frozen", "fasttda", "dattri-llm.logra.frozen", "bergson.frozen")


def implementations(saved: SavedModel, w: Workload, batches, device: str) -> dict:
    """impl name -> (builder of its step, anchor version or None)."""
    load = saved.load
    return {
        "plain": (lambda: plain_step(load(device)), None),
        "plain.frozen": (lambda: plain_step(load(device, frozen=True)), None),
        "fasttda": (lambda: fasttda_capture.build(load(device), w), None),
        "fasttda.unfrozen": (lambda: fasttda_capture.build(load(device), w, freeze=False), None),
        "fasttda.hold_inputs": (lambda: fasttda_capture.build(load(device), w, hold_inputs=True), None),
        "dattri-llm.logra": (lambda: dattri_llm.build(load(device), w, device), dattri_llm.installed_version()),
        "dattri-llm.logra.frozen": (lambda: dattri_llm.build(load(device, frozen=True), w, device),
                                    dattri_llm.installed_version()),
        "bergson": (lambda: bergson.build(load(device), w, batches, device), bergson.installed_version()),
        "bergson.frozen": (lambda: bergson.build(load(device, frozen=True), w, batches, device),
                           bergson.installed_version()),
    }


def run(ctx) -> list[dict]:
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fasttda-bench-capture-") as root, quiet_transformers():
        for w in workloads(ctx.quick):
            results += workload_cases(ctx, w, root)
    return results


def workload_cases(ctx, w: Workload, root: str) -> list[dict]:
    params = w.params()
    try:
        saved = SavedModel(w, root)
    except AnchorMissing as exc:
        return [ctx.missing(suite=SUITE, name=w.name, impl=impl, params=params, reason=str(exc))
                for impl in ("plain", "fasttda", *ANCHORS)]
    batches = make_batches(w, ctx.device)
    timing = dict(warmup=1, rounds=2) if ctx.quick else dict(warmup=1, rounds=max(6, 3 * len(batches)))
    steps, versions = {}, {}
    for impl, (build, anchor_version) in implementations(saved, w, batches, ctx.device).items():
        if ctx.quick and impl not in QUICK_IMPLS:
            continue
        steps[impl], versions[impl] = CpuTimed(build), anchor_version

    def extra(impl: str) -> dict:
        fields = dict(parameters=saved.parameters, torch_threads=torch.get_num_threads(),
                      cpu_s_median=steps[impl].cpu_median(skip=timing["warmup"]))
        if versions[impl] is not None:
            fields["anchor_version"] = versions[impl]
        return fields

    try:
        cases = measure_interleaved(ctx, {impl: step.build for impl, step in steps.items()}, suite=SUITE,
                                    name=w.name, params=params, rotate=batches, baseline=BASELINE, extra=extra,
                                    **timing)
    finally:
        for step in steps.values():
            step.close()
    return add_goals(add_throughput(cases, w, ctx.device), w, ctx)


class CpuTimed:
    """Builds a step and records the process CPU seconds of each call.

    On a shared machine wall time swings with the other tenants' load while the CPU time a
    call burns moves much less, so ``cpu_s_median`` (both torch threads together) is a
    second figure beside the interleaved wall times.
    """

    def __init__(self, build):
        self._build = build
        self._step = None
        self.cpu_s: list[float] = []

    def build(self):
        self._step = self._build()
        return self

    def __call__(self, batch):
        start = time.process_time()
        out = self._step(batch)
        self.cpu_s.append(time.process_time() - start)
        return out

    def cpu_median(self, skip: int) -> float | None:
        kept = self.cpu_s[skip:]
        return statistics.median(kept) if kept else None

    def close(self) -> None:
        if self._step is not None:
            getattr(self._step, "close", lambda: None)()
        self._step = None


def add_throughput(cases: list[dict], w: Workload, device: str) -> list[dict]:
    """examples/s for every case; overheads vs the plain rows; fasttda vs anchors and goals."""
    ok = {c["impl"]: c for c in cases if c.get("status") == "ok"}
    plain, frozen = ok.get("plain"), ok.get("plain.frozen")
    for impl, c in ok.items():
        extra = c["extra"]
        extra["examples_per_s"] = w.batch / c["median_s"]
        if plain is not None:
            extra["overhead_vs_plain"] = c["median_s"] / plain["median_s"]
            if extra.get("cpu_s_median") and plain["extra"].get("cpu_s_median"):
                extra["cpu_overhead_vs_plain"] = extra["cpu_s_median"] / plain["extra"]["cpu_s_median"]
        if frozen is not None:
            extra["overhead_vs_plain_frozen"] = c["median_s"] / frozen["median_s"]
        if impl.startswith("fasttda"):
            anchors = {a: ok[a]["median_s"] / c["median_s"] for a in ANCHORS if a in ok}
            extra["speedup_vs_anchor"] = anchors
            goal = OVERHEAD_GOAL.get(device)
            if goal is not None and plain is not None:
                extra["overhead_goal"] = goal
                extra["meets_overhead_goal"] = extra["overhead_vs_plain"] <= goal
            if anchors:
                extra["faster_than_every_anchor"] = all(s > 1.0 for s in anchors.values())
    return cases


def add_goals(cases: list[dict], w: Workload, ctx) -> list[dict]:
    """``extra["goals"]`` on the ``fasttda`` row: issue 16's CPU capture targets, met or not."""
    row = next((c for c in cases if c["impl"] == "fasttda" and c.get("status") == "ok"), None)
    if row is None or ctx.device != "cpu" or ctx.quick:
        return cases
    extra, goals = row["extra"], []
    for arch, what, op, target in CPU_GOALS:
        if arch != w.arch:
            continue
        if what.startswith("speedup_vs:"):
            anchor = what.split(":", 1)[1]
            value, label = extra.get("speedup_vs_anchor", {}).get(anchor), f"fasttda vs {anchor} (speed-up)"
        else:
            value, label = extra.get(what), f"fasttda {what}"
        if value is None:
            continue
        met = value >= target if op == ">=" else value <= target
        goals.append(dict(goal=f"{label} {op} {target}", value=round(value, 4), met=met))
    extra["goals"] = goals
    return cases
