"""`fasttda dda --form comparison` end to end on a model small enough to check by hand
(a 1-layer, width-16 Llama; 7 training examples; 2 queries): every checkpoint's scores
recomputed by the float64 oracle, standardized and combined with DDA's weights by hand.
Also the label-free debias statistic and ``--beta auto``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import spearmanr

from fasttda.cli import main
from fasttda.data import Example
from fasttda.methods import dda, dda_diagnostics as diag
from fasttda.methods.dda_comparison import standardize
from fasttda.pipeline import load_checkpoint
from comparison_oracle import comparison64
from tiny_models import make_checkpoints, make_rows, one_thread, write_jsonl  # noqa: F401

EPS32 = torch.finfo(torch.float32).eps
STEPS, LR, BETA = 2, 0.5, 0.6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddaforms")
    models = make_checkpoints(root / "models", n_epochs=2, seed=11)
    train = make_rows(41, 7)
    refs = make_rows(43, 2)
    queries = [dict(r, reference=f["response"]) for r, f in zip(make_rows(42, 2), refs)]
    queries[0]["target"] = queries[0]["response"].split()[0]
    queries[0]["reference_target"] = refs[0]["response"].split()[0]
    return dict(root=root, models=models, train=train, queries=queries,
                data=write_jsonl(root / "train.jsonl", train), q=write_jsonl(root / "queries.jsonl", queries))


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _comparison_cli(files, out, *extra):
    m = files["models"]
    return invoke("dda", "--form", "comparison", "--base", m[0], "--checkpoint", m[1], "--checkpoint", m[2],
                  "--data", files["data"], "--queries", files["q"], "--out", out, "--tune-steps", STEPS,
                  "--tune-lr", LR, "--full-tune", "--tune-optimizer", "sgd", "--top-k", 7, "--quiet", *extra)


def _results(out):
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [{r["id"]: r["score"] for r in row["results"]} for row in rows]


def _oracle(files):
    """``{checkpoint: [Q, N] float64}`` standardized comparison scores, one query per group,
    and the largest loss (for the tolerance)."""
    train = [Example(r["id"], r["prompt"], r["response"]) for r in files["train"]]
    qs = [Example(q["id"], q["prompt"], q["response"], q.get("target"), q["reference"], q.get("reference_target"))
          for q in files["queries"]]
    per_ckpt, loss_max = {}, 0.0
    for c, path in enumerate(files["models"]):
        ckpt = load_checkpoint(path)
        rows = []
        for q in qs:
            s, lm = comparison64(ckpt.model, ckpt.tokenizer, train, [q], STEPS, LR)
            rows.append(s)
            loss_max = max(loss_max, lm)
        per_ckpt[c] = torch.stack(rows)
    return per_ckpt, loss_max


def test_comparison_form_matches_hand_computation(files):
    out = files["root"] / "dda_cmp"
    printed = _comparison_cli(files, out, "--mode", "dda", "--beta", BETA)
    raw, loss_max = _oracle(files)
    expected = sum(0.5 * standardize(raw[c]) for c in (1, 2)) - BETA * standardize(raw[0])
    # each raw score within test_comparison's float32 bound e; standardizing moves a z-score
    # by at most e/sd for the value, e/sd for the mean and |z|·e/sd for the sd, |z| <= sqrt(N);
    # the weights' magnitudes sum to 1 + β (and the store holds float32)
    e = 8 * 64 * EPS32 * loss_max
    sd = min(float(r.std(dim=1, unbiased=False).min()) for r in raw.values())
    tol = (1 + BETA) * e / sd * (2 + 7 ** 0.5) + 16 * EPS32
    got = _results(out)
    ids = [r["id"] for r in files["train"]]
    for q in range(2):
        assert set(got[q]) == set(ids)
        g = torch.tensor([got[q][i] for i in ids], dtype=torch.float64)
        assert (g - expected[q]).abs().max() <= tol
    assert expected.abs().max() > 50 * tol  # the check resolves the scores
    assert "cost: comparison form" in printed and "12 fine-tunes" in printed  # 2 queries × 3 checkpoints × 2
    # forward passes: per checkpoint and query, 2·steps fine-tune passes and 2·7 scoring passes
    assert f"{3 * 2 * (2 * STEPS + 2 * 7)} forward and {3 * 2 * 2 * STEPS} backward" in printed
    assert "will debiasing help?" in printed

    again = _comparison_cli(files, out, "--mode", "denoise")  # stores reused: no fine-tune
    assert "0 fine-tunes" in again
    g = torch.tensor([_results(out)[1][i] for i in ids], dtype=torch.float64)
    assert (g - sum(0.5 * standardize(raw[c])[1] for c in (1, 2))).abs().max() <= tol


def test_comparison_form_needs_references(files, tmp_path):
    plain = write_jsonl(tmp_path / "q.jsonl", make_rows(42, 2))
    m = files["models"]
    result = CliRunner().invoke(main, ["dda", "--form", "comparison", "--base", str(m[0]), "--checkpoint", str(m[1]),
                                       "--data", str(files["data"]), "--queries", str(plain), "--out",
                                       str(tmp_path / "o"), "--quiet"])
    assert result.exit_code != 0 and "needs a 'reference'" in result.output


def test_agreement_is_spearman_over_the_top_rows():
    gen = torch.Generator().manual_seed(5)
    base, tuned = torch.randn(3, 301, generator=gen, dtype=torch.float64), torch.randn(3, 301, generator=gen,
                                                                                      dtype=torch.float64)
    base[1] = tuned[1] + 0.1 * base[1]  # agrees with the tuned ranking
    got = diag.agreement(base, tuned, top=0.1)
    for q in range(3):
        top = np.argsort(-tuned[q].numpy())[:30]
        assert abs(float(got[q]) - spearmanr(base[q].numpy()[top], tuned[q].numpy()[top])[0]) < 1e-12
    assert got[1] > 0.9 and diag.predicts_harm(float(got[1])) and diag.auto_beta(float(got[1])) == 0.0
    assert diag.auto_beta(-0.2) == 1.0


def test_top_lift_by_hand():
    # 6 rows; the tuned top 2 are rows 4 and 1, where θ₀ ranks 5th (of 0..5) and 0th
    base = torch.tensor([[0.3, -2.0, 0.1, 0.5, 9.0, 0.2]])
    tuned = torch.tensor([[0.0, 5.0, 1.0, 2.0, 6.0, 3.0]])
    # percentiles rank/(N-1): row 4 -> 5/5, row 1 -> 0/5; mean 0.5 -> lift 0
    assert float(diag.top_lift(base, tuned, top=0.34, min_top=2)[0]) == 0.0
    tuned[0, 1] = -1.0  # now the top 2 are rows 4 (5/5) and 5 (θ₀ ranks it 2/5)
    assert abs(float(diag.top_lift(base, tuned, top=0.34, min_top=2)[0]) - (2 * (1.0 + 0.4) / 2 - 1)) < 1e-12
    with pytest.raises(ValueError, match="NaN"):
        diag.agreement(torch.full((1, 5), float("nan")), torch.ones(1, 5))


def test_gradient_form_beta_auto_follows_the_statistic(files):
    m = files["models"]
    out = files["root"] / "dda_auto"
    printed = invoke("dda", "--base", m[0], "--checkpoint", m[1], "--checkpoint", m[2], "--data", files["data"],
                     "--queries", files["q"], "--out", out, "--beta", "auto", "--projection", "factored:4x4",
                     "--top-k", 7, "--quiet")
    cfg = json.loads((out / "config.json").read_text())
    d = cfg["debias_diagnosis"]
    assert cfg["beta"] == diag.auto_beta(d["top_lift"]) and "will debiasing help?" in printed
    assert (str(m[0]) in cfg["weights"]) == (cfg["beta"] != 0)
    bad = CliRunner().invoke(main, ["dda", "--base", str(m[0]), "--checkpoint", str(m[1]), "--data", str(files["data"]),
                                    "--queries", str(files["q"]), "--out", str(out), "--beta", "auto", "--mode",
                                    "denoise", "--quiet"])
    assert bad.exit_code != 0 and "--beta auto needs a mode" in bad.output
    assert dda.combination("dda", 2, beta=0.0) == [(1, 0.5), (2, 0.5)]
