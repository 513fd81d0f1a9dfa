"""`fasttda bench --quick` end to end: it runs, its JSON validates against the shipped schema,
ratios come from same-run baselines, and absent anchors are reported, never dropped."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

jsonschema = pytest.importorskip("jsonschema")
click_testing = pytest.importorskip("click.testing")

from fasttda.bench import harness  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from fasttda.cli import main

    out = tmp_path_factory.mktemp("bench")
    env = {"FASTTDA_NO_BUILD": "1"}  # a JIT build of the C++ extension has no place in a smoke run
    result = click_testing.CliRunner().invoke(main, ["bench", "--quick", "--device", "cpu", "--out", str(out)],
                                              env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), out, result.output


def test_quick_json_validates_against_schema(quick_run):
    report, _, _ = quick_run
    harness.validate(report)
    assert report["config"]["quick"] is True
    assert len(report["machine"]["loadavg_start"]) == 3
    assert set(report["suites"]) == {"project", "factored", "quantize", "store", "score", "capture", "e2e",
                                     "influcoder", "hf"}
    assert not [n for n, s in report["suites"].items() if s["status"] == "error"], report["suites"]


def test_hf_suite_reports_both_sides_and_the_callback_overhead(quick_run):
    from fasttda.bench.suites import hf

    report, _, _ = quick_run
    cases = {r["impl"]: r for r in report["results"] if r["suite"] == "hf"}
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed: the hf suite reports itself missing")
    assert set(cases) == {hf.BASELINE, hf.IMPL} and all(c["status"] == "ok" for c in cases.values())
    plain, cb = cases[hf.BASELINE], cases[hf.IMPL]
    assert plain["repeats"] == cb["repeats"] == 1 and plain["params"] == cb["params"]
    assert math.isclose(cb["extra"]["overhead"], cb["median_s"] / plain["median_s"] - 1, rel_tol=1e-9)
    assert cb["extra"]["meets_goal"] == (cb["extra"]["paired_overhead"] < hf.BERGSON_OVERHEAD)


def test_every_case_is_timed_and_ratios_come_from_the_same_run(quick_run):
    report, _, _ = quick_run
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert ok, "no case was measured"
    by_key = {(r["suite"], r["name"], r["impl"], json.dumps(r["params"], sort_keys=True)): r for r in ok}
    with_baseline = 0
    for r in ok:
        assert 0 < r["min_s"] <= r["p25_s"] <= r["median_s"] <= r["p75_s"]
        if r["baseline"]:
            base = by_key.get((r["suite"], r["name"], r["baseline"], json.dumps(r["params"], sort_keys=True)))
            if base is None:
                assert r["ratio_vs_baseline"] is None
                continue
            with_baseline += 1
            assert math.isclose(r["ratio_vs_baseline"], base["median_s"] / r["median_s"], rel_tol=1e-9)
        if r["flops"]:
            assert math.isclose(r["tflops"], r["flops"] / r["median_s"] / 1e12, rel_tol=1e-9)
    assert with_baseline > 0
    # fasttda's own projection is always present and compared with TRAK's when TRAK is installed
    proj = [r for r in ok if r["suite"] == "project" and r["impl"] == "fasttda.project[reference]"]
    assert proj and proj[0]["baseline"] == "trak.BasicProjector"


def test_plots_are_written_per_suite(quick_run):
    pytest.importorskip("matplotlib")
    _, out, _ = quick_run
    pngs = {p.name.rsplit("-", 1)[-1] for p in out.glob("*.png")}
    assert {"project.png", "score.png"} <= pngs


def test_make_table_renders_the_run(quick_run):
    report, out, _ = quick_run
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import make_table
    finally:
        sys.path.pop(0)
    text = make_table.render(make_table.load_runs([out], include_quick=True), all_cases=False)
    assert "| suite |" in text
    assert report["created_utc"][:10] in text
    assert report["machine"]["device_name"] in text


def test_schema_rejects_a_case_without_timing():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    timing = harness.summarize([0.2, 0.1, 0.3], 0)
    case = ctx.case(suite="s", name="n", impl="a", params={"n": 1}, timing=timing, flops=10)
    report = {"schema_version": 1, "created_utc": "2026-01-01T00:00:00Z", "duration_s": 1.0,
              "config": {"quick": True, "device": "cpu", "suites": ["s"]},
              "machine": harness.machine_info("cpu"), "ceilings": {},
              "suites": {"s": {"status": "ok", "seconds": 1.0, "cases": 1}},
              "results": harness.finalize([case], {})}
    harness.validate(report)
    del report["results"][0]["median_s"]
    with pytest.raises(jsonschema.ValidationError):
        harness.validate(report)


def test_a_failing_impl_is_reported_missing_not_dropped():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    x = torch.randn(64, 64)
    good = ctx.measure(lambda: x @ x, suite="s", name="mm", impl="torch", params={})
    bad = ctx.measure(lambda: 1 / 0, suite="s", name="mm", impl="broken", params={}, baseline="torch")
    assert good["status"] == "ok" and good["repeats"] >= 3
    assert bad["status"] == "missing" and "ZeroDivisionError" in bad["reason"]


def test_timeit_rotates_inputs_and_runs_setup_untimed():
    ctx = harness.BenchContext(quick=True, measure_ceilings=False)
    seen = []
    timing = ctx.timeit(seen.append, rotate=["a", "b", "c"], warmup=1, repeats=5)
    assert seen == ["a", "b", "c", "a", "b", "c"] and timing["repeats"] == 5
    calls = []
    ctx.timeit(lambda arg: calls.append(arg), setup=lambda: len(calls), warmup=0, repeats=3)
    assert calls == [0, 1, 2, 3]  # one warm-up call at least, then three timed
    with pytest.raises(ValueError, match="setup or rotate"):
        ctx.timeit(lambda a: a, setup=lambda: 1, rotate=[1])
