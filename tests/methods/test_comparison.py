"""DDA's comparison-model form: S(z) = L(z; ground) − L(z; error), checked against an explicit
float64 loop (one example at a time, no padding, log-softmax written out)."""
from __future__ import annotations

import pytest
import torch

from fasttda.data import Example
from fasttda.pipeline import load_checkpoint, sampled_fingerprint
from fasttda.methods.comparison import comparison_scores, example_losses
from comparison_oracle import comparison64, loss64
from tiny_models import make_checkpoints, make_rows, one_thread  # noqa: F401

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("comparison")
    ckpt = load_checkpoint(make_checkpoints(root / "models", n_epochs=0, seed=4)[0])
    train = [Example(r["id"], r["prompt"], r["response"]) for r in make_rows(31, 9)]
    refs = make_rows(33, 3)
    queries = [Example(r["id"], r["prompt"], r["response"], target=r["response"].split()[0] if i == 0 else None,
                       reference=f["response"]) for i, (r, f) in enumerate(zip(make_rows(32, 3), refs))]
    return ckpt, train, queries


def test_comparison_scores_match_explicit_loop(tiny):
    ckpt, train, queries = tiny
    before = sampled_fingerprint(ckpt.model)
    got = comparison_scores(ckpt.model, ckpt.tokenizer, train, queries, steps=2, lr=0.5, lora_rank=None,
                            optimizer="sgd", batch_size=4, max_length=64)
    assert sampled_fingerprint(ckpt.model) == before  # the checkpoint itself is never trained
    expected, loss_max = comparison64(ckpt.model, ckpt.tokenizer, train, queries, 2, 0.5)
    # float32 forward: sums over at most max(vocab, hidden, tokens) terms per output, through
    # two SGD steps (the weights move by lr·grad, so their error feeds the losses again)
    n_sum = max(ckpt.model.config.vocab_size, ckpt.model.config.hidden_size, 64)
    tol = 8 * n_sum * EPS32 * loss_max
    assert (got.double() - expected).abs().max() <= tol
    assert expected.abs().max() > 100 * tol  # the fine-tunes moved the losses well beyond the tolerance


def test_example_losses_batched_equals_one_at_a_time(tiny):
    ckpt, train, _ = tiny
    got = example_losses(ckpt.model, ckpt.tokenizer, train, batch_size=4, max_length=64)
    with torch.no_grad():
        expected = torch.stack([loss64(ckpt.model, ckpt.tokenizer, z) for z in train])
    n_sum = max(ckpt.model.config.vocab_size, ckpt.model.config.hidden_size, 64)
    assert (got.double() - expected).abs().max() <= 4 * n_sum * EPS32 * float(expected.abs().max())


def test_comparison_lora_default(tiny):
    ckpt, train, queries = tiny
    zero = comparison_scores(ckpt.model, ckpt.tokenizer, train, queries, steps=0, max_length=64)
    assert torch.equal(zero, torch.zeros(len(train)))  # no step: ground and error are the same model
    moved = comparison_scores(ckpt.model, ckpt.tokenizer, train, queries, steps=3, lr=1e-2, max_length=64)
    assert torch.isfinite(moved).all() and moved.abs().max() > 0
    with pytest.raises(ValueError, match="needs a 'reference' on every query"):
        comparison_scores(ckpt.model, ckpt.tokenizer, train, [Example("q", "p", "r .")])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        comparison_scores(ckpt.model, ckpt.tokenizer, train, queries, optimizer="lbfgs")
