"""DDA: Debias and Denoise Attribution over fine-tuning checkpoints (Wu et al., 2024).

With θ₀ the base model and θ₁…θ_N the checkpoints saved after each fine-tuning epoch,
and IS(θ) = <g_q(θ), g_z(θ)> (or its cosine, or a preconditioned form):

    if       IS(θ_N)
    debias   IS(θ_N) − β·IS(θ₀)
    denoise  Σ_i w_i·IS(θ_i),            w_i = 1/N (or learning-rate weights)
    dda      Σ_i w_i·IS(θ_i) − β·IS(θ₀)
    base     IS(θ₀) alone: a diagnostic. When it already finds the sources, debiasing
             subtracts the signal (see METHODS.md section 7) and a small β is better.

Each IS is a dot product of per-checkpoint features, so every mode is one weighted pass
over one store per checkpoint. DDA itself is only the weights (`combination`); `attribute`
runs them through `fasttda.pipeline` (one store per checkpoint, `pipeline.score_stores`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from fasttda import pipeline
from fasttda.data import Example, load_jsonl, resolve_contrast
from fasttda.methods.comparison import comparison_scores  # noqa: F401  (the comparison-model form)
from fasttda.methods.dda_diagnostics import auto_beta, candidates, predicts_harm

MODES = ("if", "debias", "denoise", "dda", "base")


# -- weights ----------------------------------------------------------------------------------
def combination(mode: str, n_epochs: int, *, beta: float = 1.0,
                lr: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """``[(checkpoint, weight), ...]`` with checkpoint 0 the base θ₀ and i ≥ 1 epoch i.

    ``lr`` (one learning rate per epoch) replaces the 1/N of denoise and dda by
    ``lr_i / Σ lr``, so a constant schedule gives 1/N and β keeps its meaning. Zero
    weights are dropped: their stores are never read.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(n_epochs, int) or n_epochs < 1:
        raise ValueError(f"n_epochs must be an int >= 1, got {n_epochs!r}")
    beta = float(beta)
    if not torch.isfinite(torch.tensor(beta)):
        raise ValueError(f"beta must be finite, got {beta}")
    if lr is None:
        epoch_w = [1.0 / n_epochs] * n_epochs
    else:
        lr = [float(x) for x in lr]
        if len(lr) != n_epochs or any(not (x >= 0) for x in lr) or sum(lr) <= 0:
            raise ValueError(f"lr must hold {n_epochs} non-negative learning rates with a positive sum, got {lr}")
        epoch_w = [x / sum(lr) for x in lr]
    if mode == "if":
        pairs = [(n_epochs, 1.0)]
    elif mode == "debias":
        pairs = [(n_epochs, 1.0), (0, -beta)]
    elif mode == "denoise":
        pairs = [(i + 1, w) for i, w in enumerate(epoch_w)]
    elif mode == "dda":
        pairs = [(i + 1, w) for i, w in enumerate(epoch_w)] + [(0, -beta)]
    else:
        pairs = [(0, 1.0)]
    return [(c, w) for c, w in pairs if w != 0.0]


def inputs(base, checkpoints, data, queries, mode: str, beta, lr, fields: dict | None, target_field: str | None):
    """The training examples, queries, checkpoint paths (θ₀ first) and the plan (β = 1 for
    ``beta="auto"``, decided later), every argument checked before any work."""
    fields = fields or {}
    train = data if not isinstance(data, (str, os.PathLike)) else load_jsonl(data, **fields)
    qs = queries if not isinstance(queries, (str, os.PathLike)) else \
        load_jsonl(queries, **fields, target_field=target_field, reference_field="reference",
                   reference_target_field="reference_target")
    if not checkpoints:
        raise ValueError("give at least one fine-tuned checkpoint")
    paths = [Path(base)] + [Path(c) for c in checkpoints]
    for p in paths:
        if not p.is_dir():
            raise pipeline.CheckpointError(f"model directory not found: {p}")
    if beta == "auto" and mode not in ("dda", "debias"):
        raise ValueError(f"--beta auto needs a mode that subtracts θ₀ (dda or debias), not {mode!r}")
    return train, qs, paths, combination(mode, len(checkpoints), beta=1.0 if beta == "auto" else beta, lr=lr)


def dense_scores(parts: Sequence[tuple[torch.Tensor, object, float]], *, normalize: bool) -> torch.Tensor:
    """``[Q, N]`` float64: Σ w·IS over ``(query features, store, weight)`` parts, every row
    (one scorer pass with k = N; a diagnostic, so it holds Q×N scores in memory)."""
    q, stores, w = zip(*parts)
    values, indices = pipeline.score_stores(list(q), list(stores), list(w), k=len(stores[0]), normalize=normalize)
    return torch.empty(values.shape, dtype=torch.float64).scatter_(1, indices.long(), values.double())


def debias_diagnosis(by_ckpt: dict, plan: Sequence[tuple[int, float]], *, normalize: bool) -> dict:
    """The label-free statistics (`fasttda.methods.dda_diagnostics`) of θ₀'s scores against
    the fine-tuned side of ``plan`` (its positive-weight checkpoints), and the prediction."""
    tuned = dense_scores([(by_ckpt[c][1], by_ckpt[c][0], w) for c, w in plan if c != 0], normalize=normalize)
    base = dense_scores([(by_ckpt[0][1], by_ckpt[0][0], 1.0)], normalize=normalize)
    stats = candidates(base, tuned)
    stats["predicts"] = "harm" if predicts_harm(stats["top_lift"]) else "help"
    return stats


def describe_diagnosis(d: dict) -> str:
    return (f"will debiasing help? θ₀ ranks the fine-tuned top {d['top_rows']} rows at lift {d['top_lift']:+.3f} "
            f"(+1: θ₀'s own top, 0: chance; Spearman within them {d['agreement_top']:+.3f}, over all rows "
            f"{d['agreement_all']:+.3f}, top overlap {d['top_overlap']:.2f}): predicts that debias {'hurts (auto β = 0)' if d['predicts'] == 'harm' else 'helps (auto β = 1)'}")


def attribute(base: str | os.PathLike, checkpoints: Sequence[str | os.PathLike],
              data: str | os.PathLike | Sequence[Example], queries: str | os.PathLike | Sequence[Example],
              out: str | os.PathLike, *, mode: str = "dda", beta: float | str = 1.0, lr: Sequence[float] | None = None,
              normalize: bool = True, precondition: bool = False, damping: float = 1e-3, k: int = 50,
              projection: str = pipeline.DEFAULT_PROJECTION, seed: int = 0, fmt: str = "fp32",
              modules: Sequence[str] | None = None, batch_size: int = 16,
              max_length: int = 512, resume: bool = True, progress: bool = False, device: str = "cpu",
              fields: dict | None = None, target_field: str | None = "target",
              text: bool = True, contrast: bool | None = None) -> pipeline.Attribution:
    """Index ``data`` at every checkpoint the mode needs (stores under ``out/stores``), take
    the queries' features there, score in one pass and write ``out/results.jsonl``.

    A query line carrying ``target_field`` is attributed for that span of its response
    only (its loss is taken on the span's tokens); the training data ignores that field.
    Each results line carries the query's text and, unless ``text=False``, each training
    example's prompt and response.

    ``beta="auto"`` (dda and debias) chooses β from the label-free statistic of
    `fasttda.methods.dda_diagnostics`: 0 when it predicts that debiasing hurts, else 1. The
    statistic is computed whenever the mode subtracts θ₀ (``result.diagnosis``).

    A query line carrying ``"reference"`` (the correct output; its span ``"reference_target"``)
    makes the queries contrastive, g(response) − g(reference) (see `pipeline.query_features`):
    ``contrast=None`` decides by the presence of references, True requires them on every
    query, False ignores them."""
    train, qs, paths, plan = inputs(base, checkpoints, data, queries, mode, beta, lr, fields, target_field)
    auto = beta == "auto"
    contrast = resolve_contrast(contrast, qs)  # fails before any indexing
    config = pipeline.CaptureConfig(projection, list(modules) if modules else None, max_length, batch_size, seed)
    out = Path(out)
    pipeline.check_same_tokenizer(paths)
    by_ckpt: dict[int, tuple] = {}
    index_s, score_prep = 0.0, 0.0
    for c, _ in plan:
        ckpt = pipeline.load_checkpoint(paths[c], device=device)
        t0 = time.perf_counter()
        store = pipeline.index(ckpt, train, out / "stores" / f"ckpt{c}", config, fmt=fmt, resume=resume,
                               progress=progress)
        index_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        by_ckpt[c] = (store, pipeline.query_features(ckpt, qs, config, contrast=contrast, progress=progress))
        score_prep += time.perf_counter() - t0
        del ckpt
    t0 = time.perf_counter()
    diagnosis = None
    if any(c == 0 for c, w in plan) and any(c != 0 for c, w in plan):
        diagnosis = debias_diagnosis(by_ckpt, plan, normalize=normalize)
        if auto:
            beta = auto_beta(diagnosis["top_lift"])
            plan = combination(mode, len(checkpoints), beta=beta, lr=lr)
    stores = [by_ckpt[c][0] for c, _ in plan]
    q_feats = [by_ckpt[c][1] for c, _ in plan]
    score_prep += time.perf_counter() - t0
    t0 = time.perf_counter()
    pre = [pipeline.fit_preconditioner(s, damping) for s in stores] if precondition else None
    values, indices = pipeline.score_stores(q_feats, stores, [w for _, w in plan], k=k, normalize=normalize,
                                            preconditioners=pre, progress=progress)
    result = pipeline.Attribution([q.id for q in qs], values, indices, [ex.id for ex in train], index_s,
                                  score_prep + time.perf_counter() - t0, queries=qs, train=train,
                                  contrast=contrast)
    result.beta, result.diagnosis = beta, diagnosis
    result.write_jsonl(out / "results.jsonl", text=text)
    (out / "config.json").write_text(json.dumps({
        "mode": mode, "beta": beta, "lr": lr, "normalize": normalize, "precondition": precondition,
        "damping": damping, "k": k, "projection": str(config.projection), "seed": seed, "format": fmt,
        "query_loss": "span" if any(q.target is not None for q in qs) else "response",
        "query_form": "contrast" if contrast else "plain",
        "beta_auto": auto, "debias_diagnosis": diagnosis,
        "checkpoints": [str(p) for p in paths], "weights": {str(paths[c]): w for c, w in plan}}, indent=2))
    return result
