"""Multi-seed aggregation and the README's demo table, on hand-made single-seed reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fasttda.demo import readme, seeds
from fasttda.demo.evaluate import FPR_GRID

ROOT = Path(__file__).resolve().parents[2]


def fake_report(seed: int, aucs: dict[str, float]) -> dict:
    methods = {name: {"description": f"{name} scores", "auc": auc, "recall_at_k": auc / 2, "recall_at_50": auc / 3,
                      "projection": "factored:16x16", "format": "fp16", "index_s": 10.0 + seed, "score_s": 0.5,
                      "normalize": True} for name, auc in aucs.items()}
    config = {"seed": seed, "total_s": 100.0 + seed, "train_s": 50.0, "n_queries": 8, "n_generated_queries": 6,
              "n_teacher_forced_queries": 2, "n_swapped": 20, "n_train": 400, "n_pairs": 2, "epochs": 3,
              "model_parameters": 1234, "threads": 1, "fingerprints": {"base": f"b{seed}", "last": f"l{seed}"},
              "environment": {"cpu": "Test CPU", "isa": "AVX2", "torch": "2.x", "transformers": "5.x"}}
    return {"methods": methods, "pairs": {}, "config": config}


REPORTS = [fake_report(0, {"cosine": 0.50, "denoise": 0.80, "dda": 0.60, "bm25": 0.70}),
           fake_report(1, {"cosine": 0.55, "denoise": 0.90, "dda": 0.85, "bm25": 0.75}),
           fake_report(2, {"cosine": 0.45, "denoise": 0.70, "dda": 0.72, "bm25": 0.72})]


def test_aggregate_mean_spread_and_sign_counts():
    s = seeds.aggregate(REPORTS, wall_s=123.0, jobs=2)
    assert s["seeds"] == [0, 1, 2]
    auc = s["methods"]["denoise"]["auc"]
    assert auc["values"] == [0.80, 0.90, 0.70]
    assert auc["mean"] == pytest.approx(0.80) and auc["std"] == pytest.approx(0.10)  # sample std
    assert (auc["min"], auc["max"]) == (0.70, 0.90)
    assert s["methods"]["denoise"]["projection"] == "factored:16x16" and s["methods"]["denoise"]["format"] == "fp16"
    by_pair = {(c["a"], c["b"]): c for c in s["comparisons"]}
    assert by_pair[("denoise", "cosine")]["seeds_a_better"] == 3
    assert by_pair[("dda", "denoise")]["seeds_a_better"] == 1  # 0.72 > 0.70 in seed 2 only
    lines = seeds.effects(s)
    assert any(line.startswith("denoise (epoch mean) vs the last checkpoint, cosine: +0.300 ± 0.050") and
               "better in all 3 seeds" in line for line in lines)
    assert any("adding debias (β = 1) to denoise" in line and "mixed" in line for line in lines)
    assert s["per_seed"]["1"]["fingerprints"] == {"base": "b1", "last": "l1"}


def test_table_and_markdown_columns():
    s = seeds.aggregate(REPORTS, wall_s=123.0, jobs=2)
    table = seeds.table(s)
    header = table.splitlines()[0]
    for column in ("projection", "format", "ROC-AUC", "AUC per seed (0, 1, 2)", "Recall@K", "index s", "score s"):
        assert column in header
    assert "| denoise | denoise scores | factored:16x16 | fp16 | 0.800 ± 0.100 | 0.800, 0.900, 0.700 |" in table
    md = seeds.markdown(s)
    assert "AVX2" in md and "use_deterministic_algorithms" in md and "| 1 | 6 / 2 | 101 | b1 | l1 |" in md


def test_parse_seeds():
    assert seeds.parse_seeds("0,1,2") == [0, 1, 2]
    assert seeds.parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(ValueError, match="seeds"):
            seeds.parse_seeds(bad)


def test_readme_block_replacement_round_trip():
    s = seeds.aggregate(REPORTS, wall_s=123.0, jobs=2)
    text = f"intro\n{readme.START}\nold table\n{readme.END}\noutro\n"
    new = readme.replace_block(text, readme.render(s))
    assert new.startswith("intro\n") and new.endswith("outro\n") and "old table" not in new
    assert readme.block_of(new) == readme.render(s)
    assert "Not claimed, because the sign differs between seeds" in new
    with pytest.raises(ValueError, match="exactly one"):
        readme.replace_block("no markers", "x")
def test_the_readme_table_is_generated_from_the_committed_summary():
    summary = json.loads((ROOT / readme.SUMMARY).read_text())
    block = readme.block_of((ROOT / "README.md").read_text())
    assert block == readme.render(summary), "regenerate it: python -m fasttda.demo.readme README.md"
    assert len(summary["seeds"]) >= 3


def test_collect_aggregates_reports_already_written(tmp_path):
    for r in REPORTS:
        d = tmp_path / f"seed{r['config']['seed']}"
        d.mkdir()
        (d / "report.json").write_text(json.dumps(r))
        grid = FPR_GRID.tolist()
        (d / "roc.json").write_text(json.dumps({"fpr": grid, "tpr": {n: grid for n in r["methods"]}}))
    s = seeds.collect([0, 1, 2], tmp_path, log=lambda m: None)
    assert s == json.loads((tmp_path / "report.json").read_text()) and s["wall_s"] is None
    assert s["methods"]["denoise"]["auc"]["values"] == [0.80, 0.90, 0.70]
    assert "separate jobs" in readme.render(s) and "--collect" in readme.render(s)
    with pytest.raises(FileNotFoundError, match="seed5"):
        seeds.collect([0, 5], tmp_path, log=lambda m: None)
