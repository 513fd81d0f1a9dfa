"""fasttda.dda: the weights of each mode, and that one weighted pass over the stores
(fasttda.pipeline) equals the explicit sum of per-checkpoint scores."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fasttda.data import Example
from fasttda import pipeline
from fasttda.methods import dda
from fasttda.pipeline import load_checkpoint
from tiny_models import make_checkpoints, make_rows, one_thread, write_jsonl  # noqa: F401


def test_combination_weights_per_mode():
    assert dda.combination("if", 3) == [(3, 1.0)]
    assert dda.combination("debias", 3, beta=0.7) == [(3, 1.0), (0, -0.7)]
    assert dda.combination("denoise", 4) == [(i, 0.25) for i in (1, 2, 3, 4)]
    assert dda.combination("dda", 2, beta=2.0) == [(1, 0.5), (2, 0.5), (0, -2.0)]
    assert dda.combination("base", 2) == [(0, 1.0)]
    # β = 0 drops the base store entirely: dda becomes denoise, debias becomes if
    assert dda.combination("dda", 3, beta=0.0) == dda.combination("denoise", 3)
    assert dda.combination("debias", 3, beta=0.0) == dda.combination("if", 3)


def test_combination_learning_rate_weights():
    pairs = dda.combination("dda", 3, beta=0.5, lr=[3e-4, 2e-4, 1e-4])
    assert [c for c, _ in pairs] == [1, 2, 3, 0]
    assert [w for _, w in pairs] == pytest.approx([0.5, 1 / 3, 1 / 6, -0.5])
    assert dda.combination("denoise", 2, lr=[1e-3, 1e-3]) == dda.combination("denoise", 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="nope", n_epochs=2), "mode must be one of"),
    (dict(mode="dda", n_epochs=0), "n_epochs"),
    (dict(mode="dda", n_epochs=2, lr=[1.0]), "lr must hold 2"),
    (dict(mode="dda", n_epochs=2, lr=[1.0, -1.0]), "lr must hold 2"),
    (dict(mode="dda", n_epochs=2, beta=float("nan")), "beta must be finite"),
])
def test_combination_rejects_bad_arguments(kwargs, match):
    mode, n = kwargs.pop("mode"), kwargs.pop("n_epochs")
    with pytest.raises(ValueError, match=match):
        dda.combination(mode, n, **kwargs)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("dda")
    paths = make_checkpoints(root / "models", n_epochs=3, seed=3)
    train = [Example(r["id"], r["prompt"], r["response"]) for r in make_rows(11, 23)]
    queries = [Example(r["id"], r["prompt"], r["response"]) for r in make_rows(12, 5)]
    config = pipeline.CaptureConfig("factored:4x4", None, 64, batch_size=7, seed=5)
    stores, feats = [], []
    for c, path in enumerate(paths):
        ckpt = load_checkpoint(path)
        stores.append(pipeline.index(ckpt, train, root / "stores" / f"c{c}", config, fmt="fp32"))
        feats.append(pipeline.query_features(ckpt, queries, config))
    return paths, train, queries, stores, feats, root


def _dense(values, indices, n):
    return torch.empty(values.shape[0], n, dtype=torch.float64).scatter_(1, indices.long(), values.double())


@pytest.mark.parametrize("mode, beta, normalize, lr", [
    ("dda", 1.0, False, None), ("dda", 0.3, True, None), ("debias", 2.0, False, None),
    ("denoise", 1.0, True, [3.0, 2.0, 1.0]), ("if", 1.0, True, None), ("dda", 0.0, False, [1.0, 0.0, 2.0]),
])
def test_weighted_pass_equals_explicit_sum(indexed, mode, beta, normalize, lr):
    _, train, _, stores, feats, _ = indexed
    plan = dda.combination(mode, 3, beta=beta, lr=lr)
    values, indices = pipeline.score_stores([feats[c] for c, _ in plan], [stores[c] for c, _ in plan],
                                            [w for _, w in plan], k=len(train), normalize=normalize)
    got = _dense(values, indices, len(train))
    expected = torch.zeros_like(got)
    for c, w in plan:  # the explicit float64 sum of per-checkpoint scores
        q, r = feats[c].double(), stores[c].read(0, len(stores[c])).double()
        if normalize:
            q, r = F.normalize(q, dim=1), F.normalize(r, dim=1)
        expected += w * (q @ r.T)
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, atol=1e-5, rtol=0)
    assert torch.all(values[:, :-1] >= values[:, 1:])  # ranked


def test_features_differ_between_checkpoints(indexed):
    *_, feats, _ = indexed
    assert not torch.allclose(feats[0], feats[3])


def test_attribute_end_to_end_matches_scores(indexed):
    paths, train, queries, stores, feats, root = indexed
    data = write_jsonl(root / "train.jsonl", [{"id": e.id, "prompt": e.prompt, "response": e.response} for e in train])
    qs = write_jsonl(root / "queries.jsonl", [{"id": e.id, "prompt": e.prompt, "response": e.response} for e in queries])
    out = root / "attr"
    result = dda.attribute(paths[0], paths[1:], data, qs, out, mode="dda", beta=0.5, normalize=True, k=6,
                           projection="factored:4x4", seed=5, fmt="fp32", max_length=64, batch_size=7)
    plan = dda.combination("dda", 3, beta=0.5)
    v, i = pipeline.score_stores([feats[c] for c, _ in plan], [stores[c] for c, _ in plan], [w for _, w in plan],
                                 k=6, normalize=True)
    torch.testing.assert_close(result.values, v, atol=1e-5, rtol=1e-5)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["query_id"] for r in rows] == [q.id for q in queries]
    assert [x["id"] for x in rows[0]["results"]] == [train[j].id for j in i[0].tolist()]
    # a second run reuses the stores; a store from another projection is refused
    again = dda.attribute(paths[0], paths[1:], data, qs, out, mode="dda", beta=0.5, k=6, projection="factored:4x4",
                          seed=5, fmt="fp32", max_length=64, batch_size=7)
    torch.testing.assert_close(again.values, result.values)
    with pytest.raises(pipeline.StoreMismatch, match="projection"):
        dda.attribute(paths[0], paths[1:], data, qs, out, projection="factored:2x2", seed=5, max_length=64)


def test_exact_features_equal_per_example_gradients(indexed):
    """projection none: the features are the per-example gradients of the mean response loss."""
    paths, train, *_ = indexed
    ckpt = load_checkpoint(paths[2])
    config = pipeline.CaptureConfig("none", ["*mlp*"], 64, batch_size=4)
    feats = pipeline.query_features(ckpt, train[:4], config)
    from fasttda.data import collate, encode

    linears = [m for n, m in ckpt.model.named_modules() if "mlp" in n and isinstance(m, torch.nn.Linear)]
    for row, enc in enumerate(encode(ckpt.tokenizer, train[:4], 64)):
        batch = collate([enc], 0)
        ckpt.model.zero_grad()
        ckpt.model(**batch).loss.backward()  # HF loss: mean over this example's response tokens
        expected = torch.cat([m.weight.grad.flatten() for m in linears])
        torch.testing.assert_close(feats[row], expected, atol=1e-5, rtol=1e-4)
