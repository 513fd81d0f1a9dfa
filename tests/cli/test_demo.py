"""`fasttda demo --quick --seeds 3`: the whole benchmark at CI size through the multi-seed
path (one seed); checks the per-seed report's structure and the aggregate's."""
from __future__ import annotations

import json

from click.testing import CliRunner

from fasttda.cli import main
from tiny_models import one_thread  # noqa: F401

REQUIRED = ("bm25", "grad_dot", "cosine", "trak_if", "debias", "denoise", "dda", "dda_lr", "debias_dot",
            "grad_dot_contrast", "denoise_contrast", "dda_contrast", "comparison", "comparison_denoise",
            "comparison_dda")


def test_demo_quick_report(tmp_path):
    top = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(top), "--seeds", "3", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = top / "seed3"
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"methods", "pairs", "config", "debias_diagnosis"}
    # the label-free statistic per form, judged against the labelled outcome
    assert set(report["debias_diagnosis"]) == {"cosine", "dot", "contrast", "comparison"}
    for form, d in report["debias_diagnosis"].items():
        assert -1 <= d["top_lift"] <= 1 and d["predicts"] in ("harm", "help"), form
        assert d["correct"] == ((d["top_lift"] > 0) == (d["dda_minus_denoise"] <= 0)), form
    assert report["methods"]["comparison"]["forward_passes"] > 0
    assert set(REQUIRED) <= set(report["methods"])
    for name, m in report["methods"].items():
        for key in ("auc", "recall_at_k", "index_s", "score_s"):
            assert isinstance(m[key], float), (name, key)
        assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["recall_at_k"] <= 1.0, name
        assert m["index_s"] >= 0 and m["score_s"] >= 0
    assert report["config"]["seed"] == 3 and report["config"]["n_pairs"] == len(report["pairs"])
    for pair in report["pairs"].values():
        assert pair["true_sources"] > 0
        assert pair["generated_queries"] + pair["teacher_forced_queries"] >= 1
        assert set(REQUIRED) <= set(pair["methods"])
    n_queries = sum(p["generated_queries"] + p["teacher_forced_queries"] for p in report["pairs"].values())
    assert n_queries == report["config"]["n_queries"]
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert all(f"| {name} |" in md for name in REQUIRED)
    assert "| projection | format |" in md and "Where the time went: train" in md
    cfg = report["config"]
    assert cfg["deterministic_algorithms"] is True and cfg["threads"] == 1
    assert set(cfg["phases_s"]) >= {"train", "index", "query features", "score and evaluate"}
    assert len(cfg["fingerprints"]["base"]) == 16 and cfg["fingerprints"]["last"] != cfg["fingerprints"]["base"]
    assert set(json.loads((out / "roc.json").read_text())["tpr"]) == set(report["methods"])
    # the aggregate over the seeds given (one here)
    summary = json.loads((top / "report.json").read_text())
    assert summary["seeds"] == [3] and summary["methods"]["dda"]["auc"]["values"] == [report["methods"]["dda"]["auc"]]
    assert (top / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (top / "report.md").is_file()
    assert summary["debias_statistic"]["runs"] == 4 and "The label-free statistic" in (top / "report.md").read_text()
    assert "| dda |" in result.stdout and "AUC per seed (3)" in result.stdout  # the table is printed
    # the data files the demo wrote are valid inputs of the other commands
    assert (out / "data" / "train.jsonl").is_file() and (out / "data" / "queries.jsonl").is_file()
