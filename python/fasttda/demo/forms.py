"""The demo's DDA forms beyond plain per-checkpoint gradients (issue 18).

- **contrast**: each query's feature is g(hallucination) − g(reference), the reference being
  the same summary with the true entity back in place (its loss on that entity when the
  query's loss is on the hallucinated one); the first-order form of the authors' procedure.
- **comparison**: the authors' procedure itself (`fasttda.methods.dda_comparison`): per
  checkpoint and swap pair, a ground copy fine-tuned on the pair's references and an error
  copy on its hallucinations; a training example scores L(ground) − L(error), standardized
  per checkpoint. A pair's queries act as one query (they share one pair of copies), so all
  queries of a pair get the same ranking.

And the label-free debias statistic (`fasttda.methods.dda_diagnostics`) per form: θ₀'s
scores against the epoch mean's, with the sign of (dda − denoise) it predicts.
"""
from __future__ import annotations

import dataclasses
import re
import time

import torch

from fasttda import pipeline
from fasttda.methods import dda
from fasttda.methods import dda_comparison as comp
from fasttda.methods import dda_diagnostics as diag

# name -> (mode, normalize, beta (None: the demo's β), description), all on contrastive queries
CONTRAST_METHODS = {
    "grad_dot_contrast": ("if", False, 0.0, "gradient dot, last checkpoint, contrastive query g(error) − g(reference)"),
    "denoise_contrast": ("denoise", True, 0.0, "epoch mean, per-checkpoint cosine, contrastive query"),
    "dda_contrast": ("dda", True, None, "epoch mean − β·θ₀, per-checkpoint cosine, contrastive query"),
}
# name -> (mode, beta (None: the demo's β), description), comparison-model scores
COMPARISON_METHODS = {
    "comparison": ("if", 0.0, "comparison models (LoRA, 3 Adam steps), last checkpoint"),
    "comparison_denoise": ("denoise", 0.0, "comparison models, epoch mean of standardized scores"),
    "comparison_dda": ("dda", None, "comparison models, epoch mean − β·θ₀"),
    "comparison_base": ("base", 0.0, "comparison models at θ₀ alone (diagnostic)"),
}
# form -> (denoise method, dda method): the pairs whose sign the label-free statistic predicts
DIAGNOSED = {"cosine": ("denoise", "dda"), "dot": ("denoise_dot", "dda_dot"),
             "contrast": ("denoise_contrast", "dda_contrast"), "comparison": ("comparison_denoise", "comparison_dda")}


def contrast_examples(queries, corpus, span: bool):
    """The queries with their references: the response with the swap's true entity back."""
    out = []
    for q in queries:
        source, target = corpus.pairs[q.pair]
        reference = re.sub(rf"\b{re.escape(target)}\b", source, q.example.response)
        out.append(dataclasses.replace(q.example, reference=reference, reference_target=source if span else None))
    return out


def pair_groups(queries) -> list[list[int]]:
    pairs = sorted({q.pair for q in queries})
    return [[i for i, q in enumerate(queries) if q.pair == p] for p in pairs]


def comparison_stores(paths, train, examples, groups, out, config, tune: comp.TuneConfig):
    """One comparison-score store per checkpoint (reused when present); ``(stores, cost per checkpoint)``."""
    stores, costs = [], []
    for c, path in enumerate(paths):
        ckpt = pipeline.load_checkpoint(path)
        store, cost = comp.comparison_store(ckpt, train, examples, groups, tune, out / "comparison" / f"ckpt{c}",
                                            batch_size=config.index_batch_size, max_length=config.max_length)
        stores.append(store)
        costs.append(cost)
    return stores, costs


def dense(feats, stores, plan, normalize: bool) -> torch.Tensor:
    """``[Q, N]`` float64 scores of a plan (every row ranked)."""
    return dda.dense_scores([(feats[c], stores[c], w) for c, w in plan], normalize=normalize)


def score_plans(methods: dict, feats, stores, epochs: int, beta: float, *, normalize_of=None):
    """Yield ``(name, description, plan, normalize, dense scores, seconds)`` for ``methods``."""
    for name, spec in methods.items():
        mode, description = spec[0], spec[-1]
        normalize = normalize_of(spec) if normalize_of else False
        b = spec[-2]
        plan = dda.combination(mode, epochs, beta=beta if b is None else b)
        t0 = time.perf_counter()
        scores = dense(feats, stores, plan, normalize)
        yield name, description, plan, normalize, scores, time.perf_counter() - t0


def diagnosis(feats, stores, epochs: int, normalize: bool) -> dict:
    """The label-free statistics of one form: θ₀'s scores against the epoch mean's."""
    tuned = dense(feats, stores, dda.combination("denoise", epochs), normalize)
    base = dense(feats, stores, [(0, 1.0)], normalize)
    return diag.candidates(base, tuned)


def judge(stats: dict, methods: dict, form: str) -> dict:
    """Did the statistic predict the sign of (dda − denoise)? Adds the labelled outcome."""
    denoise, with_debias = DIAGNOSED[form]
    diff = methods[with_debias]["auc"] - methods[denoise]["auc"]
    predicted = "harm" if diag.predicts_harm(stats["top_lift"]) else "help"
    out = dict(stats, predicts=predicted, dda_minus_denoise=diff, debias=("helps" if diff > 0 else "hurts"))
    for key in ("top_lift", "agreement_top", "agreement_all", "top_overlap"):
        # every candidate read the same way: a high value predicts harm (overlap: above chance, 2·top share)
        threshold = diag.THRESHOLD if key != "top_overlap" else 2 * stats["top_rows"] / stats["n"]
        out[f"correct_{key}"] = (stats[key] > threshold) == (diff <= 0)
    out["correct"] = out["correct_top_lift"]
    return out
