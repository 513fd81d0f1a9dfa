"""LESS selection, streamed, against LESS's matching.py + write_selected_data.py done densely in float64."""
import json

import pytest
import torch
from click.testing import CliRunner

from fasttda.cli import main
from fasttda.integrations.less_select import less_select
from fasttda.store import FeatureStore


def less_dense(train, val, weights, n_subtasks, keep, normalize=False):
    """matching.py: Σ_c w_c train_c @ val_c.T, reshape [N, T, -1], mean, max; then the top `keep` (float64)."""
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    total = 0
    for c, (t, v) in enumerate(zip(train, val)):
        t, v = t.double(), v.double()
        if normalize:
            t, v = t / t.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
        total = total + w[c] * t @ v.T
    per_row = total.reshape(total.shape[0], n_subtasks, -1).mean(-1).max(-1)[0]
    return per_row, torch.topk(per_row, keep).indices


def make_stores(tmp_path, gen, n=203, dim=24, ckpts=2, fmt="fp32"):
    rows = [torch.randn(n, dim, generator=gen) for _ in range(ckpts)]
    paths = []
    for c, r in enumerate(rows):
        store = FeatureStore.create(tmp_path / f"train{c}", dim, fmt)
        with store:
            store.append(r, ids=[f"ex{i}" for i in range(n)])
            store.commit()
        paths.append(tmp_path / f"train{c}")
    return rows, paths


@pytest.mark.parametrize("normalize", [False, True])
def test_less_select_matches_dense_less(tmp_path, gen, normalize):
    train, paths = make_stores(tmp_path, gen)
    val = [torch.randn(3 * 5, 24, generator=gen) for _ in range(2)]
    weights = [2e-5, 1e-5]
    want_scores, want_rows = less_dense(train, val, weights, 3, int(0.1 * 203), normalize)
    got = less_select(paths, val, n_subtasks=3, checkpoint_weights=weights, percentage=0.1, normalize=normalize,
                      chunk_rows=37)  # several chunks: the running top-k is exercised
    assert len(got.rows) == int(0.1 * 203)
    # float32 sums of 24 products: tolerance from the sum length
    tol = 8 * 24 * 2**-24 * float(want_scores.abs().max()) + 1e-6
    torch.testing.assert_close(got.scores.double(), want_scores[got.rows], rtol=0, atol=tol)
    cutoff = want_scores[want_rows].min()
    # tie-aware: every selected row scores at least the k-th best (within tolerance)
    assert (want_scores[got.rows] >= cutoff - 2 * tol).all()
    assert (got.scores[:-1] >= got.scores[1:]).all()
    assert got.ids == [f"ex{r}" for r in got.rows.tolist()]


def test_less_select_quantized_store_and_max_samples(tmp_path, gen):
    train, paths = make_stores(tmp_path, gen, n=64, ckpts=1, fmt="int8")
    val = torch.randn(4, 24, generator=gen)
    got = less_select(paths[0], val, subtask_sizes=[1, 3], max_samples=5)
    want, _ = less_dense(train, [val[:1]], [1.0], 1, 5)  # placeholder shape check below
    assert got.rows.shape == (5,) and got.scores.shape == (5,)
    # subtask_sizes [1, 3]: max(⟨g, v0⟩, ⟨g, mean(v1..v3)⟩); int8 rows: tolerance from the quantization step
    t = train[0].double()
    dense = torch.stack([t @ val[0].double(), t @ val[1:].double().mean(0)], 1).max(1).values
    step = (train[0].abs().max(1).values.double() / 127)
    tol = float((step[:, None] * val.double().abs().sum(1).max()).max()) / 2 * 1.01
    assert (dense[got.rows] - got.scores.double()).abs().max() <= tol
    del want


def test_less_select_bad_input(tmp_path, gen):
    _, paths = make_stores(tmp_path, gen, n=10, ckpts=1)
    val = torch.randn(6, 24, generator=gen)
    with pytest.raises(ValueError, match="n_subtasks"):
        less_select(paths, [val], n_subtasks=4, percentage=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        less_select(paths, [val], n_subtasks=3)
    with pytest.raises(ValueError, match="percentage"):
        less_select(paths, [val], n_subtasks=3, percentage=1.5)
    with pytest.raises(ValueError, match=r"\[Q, 24\]"):
        less_select(paths, [torch.randn(6, 5)], n_subtasks=3, percentage=0.5)
    with pytest.raises(ValueError, match="one validation set per"):
        less_select(paths, [val, val], n_subtasks=3, percentage=0.5)


def test_less_select_cli_reads_less_pt_validation(tmp_path, gen):
    train, paths = make_stores(tmp_path, gen, n=40, ckpts=1)
    (tmp_path / "val").mkdir()
    val = torch.randn(6, 24, generator=gen)
    torch.save(val, tmp_path / "val" / "all_orig.pt")
    res = CliRunner().invoke(main, ["less-select", "--train", str(paths[0]), "--val", str(tmp_path / "val"),
                                    "--n-subtasks", "2", "--max-samples", "4", "--out", str(tmp_path / "sel.jsonl")])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "sel.jsonl").read_text().splitlines()]
    _, want_rows = less_dense(train, [val], [1.0], 2, 4)
    assert len(lines) == 4 and {x["row"] for x in lines} <= set(range(40))
    assert lines[0]["row"] == int(want_rows[0]) or abs(lines[0]["score"] - lines[1]["score"]) < 1e-5
    bad = CliRunner().invoke(main, ["less-select", "--train", str(paths[0]), "--val", str(tmp_path / "val"),
                                    "--n-subtasks", "4", "--max-samples", "4"])
    assert bad.exit_code == 1 and "n_subtasks" in bad.output and "Traceback" not in bad.output
