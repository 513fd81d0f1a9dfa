"""The `capture` bench suite: quick mode end to end, its workloads, its derived figures."""
from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from fasttda.bench import harness
from fasttda.bench.anchors.capture import workload as wl
from fasttda.bench.suites import capture

TIMING_KEYS = ("median_s", "p25_s", "p75_s", "min_s", "repeats")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _expected_ok(impl: str) -> bool:
    """An impl must run when what it needs is importable here; else it must say why not."""
    if impl.startswith("dattri-llm"):
        return _importable("dattri_llm") and _importable("dattri")
    if impl.startswith("bergson"):
        return _importable("bergson")
    if impl.startswith("fasttda"):
        try:
            return hasattr(importlib.import_module("fasttda.capture"), "GradientCapture")
        except ImportError:
            return False
    return True


@pytest.fixture(scope="module")
def quick_report():
    ctx = harness.BenchContext(quick=True, device="cpu", measure_ceilings=False, log=lambda msg: None)
    return harness.run_suites(["capture"], ctx, {"capture": lambda: capture})


def test_quick_run_is_well_formed(quick_report):
    harness.validate(quick_report)
    assert quick_report["suites"]["capture"]["status"] == "ok", quick_report["suites"]["capture"]
    results = quick_report["results"]
    assert {r["impl"] for r in results} == set(capture.QUICK_IMPLS)
    w = wl.workloads(quick=True)[0]
    for r in results:
        assert r["suite"] == "capture" and r["name"] == w.name
        if not _expected_ok(r["impl"]):
            assert r["status"] == "missing" and r["reason"], r
            continue
        assert r["status"] == "ok", r
        assert r["params"] == w.params()
        assert all(r[k] > 0 for k in ("median_s", "p25_s", "min_s")), r
        assert r["p25_s"] <= r["median_s"] <= r["p75_s"]
        assert r["repeats"] == 2
        assert r["extra"]["examples_per_s"] == pytest.approx(w.batch / r["median_s"])
        assert r["extra"]["cpu_s_median"] > 0
        assert r["baseline"] == (None if r["impl"] == "plain" else "plain")
        if r["baseline"]:
            plain = next(p for p in results if p["impl"] == "plain")
            assert r["ratio_vs_baseline"] == pytest.approx(plain["median_s"] / r["median_s"])
            assert r["extra"]["overhead_vs_plain"] == pytest.approx(r["median_s"] / plain["median_s"])


def test_anchor_versions_are_recorded(quick_report):
    for r in quick_report["results"]:
        if r["status"] == "ok" and r["impl"].startswith(("dattri-llm", "bergson")):
            assert r["extra"]["anchor_version"], r


@pytest.mark.parametrize("quick", [True, False])
def test_workload_patterns_select_every_block_linear(quick):
    for w in wl.workloads(quick):
        with torch.device("meta"):
            import transformers

            model = transformers.AutoModelForCausalLM.from_config(w.config())
        names = wl.target_modules(model, w.module_pattern)
        assert len(names) == w.modules
        assert not any("embed" in n or "wte" in n or "lm_head" in n or "norm" in n for n in names)
        if w.name == "llama-4l-512":  # METHODS.md section 8: 28 block linears, 16x16 each
            assert (w.modules, w.k_in, w.k_out, w.batch, w.seq_len) == (28, 16, 16, 8, 128)


def test_target_modules_rejects_a_pattern_matching_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="no module"):
        wl.target_modules(model, r"transformer\.h\.\d+")


def test_throughput_figures_from_medians():
    w = wl.Workload("toy", "llama", layers=1, width=8, mlp=16, vocab=16, heads=2, batch=8, seq_len=4, batches=1)

    def case(impl, median):
        return {"status": "ok", "impl": impl, "median_s": median, "extra": {"cpu_s_median": 2 * median}}

    cases = [case("plain", 0.5), case("plain.frozen", 0.4), case("fasttda", 0.6), case("bergson", 0.8),
             case("dattri-llm.logra", 0.5), {"status": "missing", "impl": "bergson.frozen", "reason": "x"}]
    capture.add_throughput(cases, w, "cpu")
    fast = cases[2]["extra"]
    assert fast["examples_per_s"] == pytest.approx(8 / 0.6)
    assert fast["overhead_vs_plain"] == pytest.approx(1.2)
    assert fast["overhead_vs_plain_frozen"] == pytest.approx(1.5)
    assert fast["cpu_overhead_vs_plain"] == pytest.approx(1.2)
    assert fast["speedup_vs_anchor"] == pytest.approx({"bergson": 0.8 / 0.6, "dattri-llm.logra": 0.5 / 0.6})
    assert fast["meets_overhead_goal"] is True and fast["overhead_goal"] == 1.5
    assert fast["faster_than_every_anchor"] is False
    assert "speedup_vs_anchor" not in cases[3]["extra"]
