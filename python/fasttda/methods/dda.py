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


def attribute(base: str | os.PathLike, checkpoints: Sequence[str | os.PathLike],
              data: str | os.PathLike | Sequence[Example], queries: str | os.PathLike | Sequence[Example],
              out: str | os.PathLike, *, mode: str = "dda", beta: float = 1.0, lr: Sequence[float] | None = None,
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

    A query line carrying ``"reference"`` (the correct output; its span ``"reference_target"``)
    makes the queries contrastive, g(response) − g(reference) (see `pipeline.query_features`):
    ``contrast=None`` decides by the presence of references, True requires them on every
    query, False ignores them."""
    fields = fields or {}
    train = data if not isinstance(data, (str, os.PathLike)) else load_jsonl(data, **fields)
    qs = queries if not isinstance(queries, (str, os.PathLike)) else \
        load_jsonl(queries, **fields, target_field=target_field, reference_field="reference",
                   reference_target_field="reference_target")
    contrast = resolve_contrast(contrast, qs)  # fails before any indexing
    if not checkpoints:
        raise ValueError("give at least one fine-tuned checkpoint")
    paths = [Path(base)] + [Path(c) for c in checkpoints]
    for p in paths:
        if not p.is_dir():
            raise pipeline.CheckpointError(f"model directory not found: {p}")
    plan = combination(mode, len(checkpoints), beta=beta, lr=lr)
    config = pipeline.CaptureConfig(projection, list(modules) if modules else None, max_length, batch_size, seed)
    out = Path(out)
    pipeline.check_same_tokenizer(paths)
    loaded = [pipeline.load_checkpoint(paths[c], device=device) for c, _ in plan]
    stores, q_feats, index_s, score_prep = [], [], 0.0, 0.0
    for (c, _), ckpt in zip(plan, loaded):
        t0 = time.perf_counter()
        store = pipeline.index(ckpt, train, out / "stores" / f"ckpt{c}", config, fmt=fmt, resume=resume,
                               progress=progress)
        index_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        q_feats.append(pipeline.query_features(ckpt, qs, config, contrast=contrast, progress=progress))
        score_prep += time.perf_counter() - t0
        stores.append(store)
    t0 = time.perf_counter()
    pre = [pipeline.fit_preconditioner(s, damping) for s in stores] if precondition else None
    values, indices = pipeline.score_stores(q_feats, stores, [w for _, w in plan], k=k, normalize=normalize,
                                            preconditioners=pre, progress=progress)
    result = pipeline.Attribution([q.id for q in qs], values, indices, [ex.id for ex in train], index_s,
                                  score_prep + time.perf_counter() - t0, queries=qs, train=train,
                                  contrast=contrast)
    result.write_jsonl(out / "results.jsonl", text=text)
    (out / "config.json").write_text(json.dumps({
        "mode": mode, "beta": beta, "lr": lr, "normalize": normalize, "precondition": precondition,
        "damping": damping, "k": k, "projection": str(config.projection), "seed": seed, "format": fmt,
        "query_loss": "span" if any(q.target is not None for q in qs) else "response",
        "query_form": "contrast" if contrast else "plain",
        "checkpoints": [str(p) for p in paths], "weights": {str(paths[c]): w for c, w in plan}}, indent=2))
    return result
