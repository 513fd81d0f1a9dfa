"""Contrastive queries (issue 18 item 1): a query's feature is g(response) − g(reference), so
its score in every DDA mode equals the plain score of the response minus that of the
reference, through the same stores and the one-pass scorer."""
from __future__ import annotations

import json

import pytest
import torch

from fasttda import pipeline
from fasttda.data import DataError, Example, contrast_references, load_jsonl, resolve_contrast
from fasttda.methods import dda
from fasttda.pipeline import load_checkpoint
from tiny_models import make_checkpoints, make_rows, one_thread, write_jsonl  # noqa: F401

EPS32 = torch.finfo(torch.float32).eps


def _queries() -> list[Example]:
    rows, refs = make_rows(21, 4), make_rows(22, 4)
    out = []
    for i, (r, ref) in enumerate(zip(rows, refs)):
        words = ref["response"].split()
        out.append(Example(r["id"], r["prompt"], r["response"],
                           target=r["response"].split()[0] if i == 1 else None,  # a span on the response
                           reference=ref["response"],
                           reference_target=words[0] if i in (1, 2) else None))  # and on the reference
    return out


@pytest.fixture(scope="module")
def contrasted(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrast")
    paths = make_checkpoints(root / "models", n_epochs=2, seed=7)
    train = [Example(r["id"], r["prompt"], r["response"]) for r in make_rows(23, 17)]
    queries = _queries()
    config = pipeline.CaptureConfig("factored:4x4", None, 64, batch_size=3, seed=3)
    stores, resp, ref, both = [], [], [], []
    for c, path in enumerate(paths):
        ckpt = load_checkpoint(path)
        stores.append(pipeline.index(ckpt, train, root / "stores" / f"c{c}", config, fmt="fp32"))
        resp.append(pipeline.query_features(ckpt, queries, config))
        ref.append(pipeline.query_features(ckpt, [q.reference_example() for q in queries], config))
        both.append(pipeline.query_features(ckpt, queries, config, contrast=True))
    return paths, train, queries, stores, resp, ref, both, root


def _dense(values, indices, n):
    return torch.empty(values.shape[0], n, dtype=torch.float64).scatter_(1, indices.long(), values.double())


def _scores(feats, stores, plan, n):
    v, i = pipeline.score_stores([feats[c] for c, _ in plan], [stores[c] for c, _ in plan], [w for _, w in plan],
                                 k=n, normalize=False)
    return _dense(v, i, n)


@pytest.mark.parametrize("mode, beta", [("if", 1.0), ("debias", 0.7), ("denoise", 1.0), ("dda", 1.0), ("dda", 0.4)])
def test_contrast_score_is_difference_of_plain_scores(contrasted, mode, beta):
    _, train, _, stores, resp, ref, both, _ = contrasted
    n = len(train)
    plan = dda.combination(mode, 2, beta=beta)
    contrast = _scores(both, stores, plan, n)
    difference = _scores(resp, stores, plan, n) - _scores(ref, stores, plan, n)
    oracle, bound = torch.zeros_like(contrast), torch.zeros_like(contrast)
    for c, w in plan:  # float64 oracle from the same float32 feature rows
        g = stores[c].read(0, n).double()
        oracle += w * ((resp[c].double() - ref[c].double()) @ g.T)
        bound += abs(w) * ((resp[c].double().abs() + ref[c].double().abs()) @ g.abs().T)
    dim = stores[0].dim
    # one rounding for the difference, a float32 sum of `dim` terms per score, per store
    tol = (dim + 2) * EPS32 * bound * 2
    assert torch.all((contrast - oracle).abs() <= tol)
    assert torch.all((difference - oracle).abs() <= tol)
    assert (oracle.abs() > 100 * tol).any()  # the scores are not all lost in the tolerance
    # and the contrast is not the plain response score
    assert ((contrast - _scores(resp, stores, plan, n)).abs() > 100 * tol).any()


def test_contrast_uses_reference_span(contrasted):
    *_, queries, stores, resp, ref, both, _ = contrasted
    whole = [Example(q.id, q.prompt, q.reference) for q in queries]
    ckpt = load_checkpoint(contrasted[0][0])
    config = pipeline.CaptureConfig("factored:4x4", None, 64, batch_size=3, seed=3)
    g_whole = pipeline.query_features(ckpt, whole, config)
    spans = [i for i, q in enumerate(queries) if q.reference_target is not None]
    others = [i for i, q in enumerate(queries) if q.reference_target is None]
    torch.testing.assert_close(ref[0][others], g_whole[others], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref[0][spans], g_whole[spans])


def test_contrast_needs_references():
    qs = _queries()
    qs[2] = Example(qs[2].id, qs[2].prompt, qs[2].response)
    with pytest.raises(DataError, match=r"1 of 4 have none \(first: id 'ex2'\)"):
        contrast_references(qs)
    assert resolve_contrast(False, qs) is False
    with pytest.raises(DataError, match="first: id 'ex2'"):
        resolve_contrast(None, qs)  # automatic: references on some queries means all of them
    plain = [Example(q.id, q.prompt, q.response) for q in qs]
    assert resolve_contrast(None, plain) is False


def test_load_jsonl_reads_references(tmp_path):
    rows = [{"id": "a", "prompt": "p", "response": "Paris is in Italy .", "reference": "Paris is in France .",
             "reference_target": "France"}, {"id": "b", "prompt": "p", "response": "x ."}]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    got = load_jsonl(path, reference_field="reference", reference_target_field="reference_target")
    assert got[0].reference == "Paris is in France ." and got[0].reference_target == "France"
    assert got[1].reference is None and got[1].reference_target is None
    assert load_jsonl(path)[0].reference is None  # without the field name: ignored
    rows[0]["reference_target"] = "Spain"
    with pytest.raises(DataError, match="line 1: reference_target 'Spain' does not occur in field 'reference'"):
        load_jsonl(write_jsonl(tmp_path / "bad.jsonl", rows), reference_field="reference",
                   reference_target_field="reference_target")
    rows[0]["reference"] = " "
    with pytest.raises(DataError, match="line 1: field 'reference' must be a non-empty string"):
        load_jsonl(write_jsonl(tmp_path / "bad2.jsonl", rows), reference_field="reference")


def test_attribute_contrast_end_to_end(contrasted):
    paths, train, queries, stores, resp, ref, both, root = contrasted
    data = write_jsonl(root / "train.jsonl", [{"id": e.id, "prompt": e.prompt, "response": e.response} for e in train])
    records = [{k: v for k, v in dict(id=q.id, prompt=q.prompt, response=q.response, target=q.target,
                                      reference=q.reference, reference_target=q.reference_target).items()
                if v is not None} for q in queries]
    qs = write_jsonl(root / "queries.jsonl", records)
    kwargs = dict(mode="dda", beta=0.5, normalize=False, k=len(train), projection="factored:4x4", seed=3,
                  fmt="fp32", max_length=64, batch_size=3)
    out = root / "attr"
    result = dda.attribute(paths[0], paths[1:], data, qs, out, **kwargs)  # automatic: references present
    assert result.contrast
    assert json.loads((out / "config.json").read_text())["query_form"] == "contrast"
    plan = dda.combination("dda", 2, beta=0.5)
    expected = _scores(both, stores, plan, len(train))
    got = _dense(result.values, result.indices, len(train))
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, atol=1e-5, rtol=0)
    plain = dda.attribute(paths[0], paths[1:], data, qs, out, contrast=False, **kwargs)  # stores reused
    assert not plain.contrast
    torch.testing.assert_close(_dense(plain.values, plain.indices, len(train)) / scale,
                               _scores(resp, stores, plan, len(train)) / scale, atol=1e-5, rtol=0)
