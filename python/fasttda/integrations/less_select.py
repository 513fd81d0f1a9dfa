"""LESS's data selection (Xia et al., 2024), streamed: no ``N × Q`` score matrix.

LESS (``less/data_selection/matching.py`` and ``write_selected_data.py``) scores training
example n against validation example q of a target task as ``Σ_c w_c ⟨g_c(n), v_c(q)⟩`` over
checkpoints c (w_c: checkpoint weights, renormalized to sum to 1; the stored gradients are
usually unit-normalized, making it an lr-weighted cosine), reshapes the ``[N, Q]`` matrix to
``[N, subtasks, Q / subtasks]`` (validation examples grouped by subtask, contiguous, equal
counts), takes the mean over each subtask's examples, then the max over subtasks, and keeps
the top ``int(percentage * N)`` training examples.

The mean over a subtask is linear, so it moves onto the validation side:
``mean_q ⟨g, v_q⟩ = ⟨g, mean_q v_q⟩``. Each checkpoint's validation rows collapse to one
vector per subtask (``[T, k]``), the training stores stream chunk by chunk against those
T vectors (fasttda's scoring op, any stored format), and a running top-k keeps the best
rows: memory O(chunk × T + kept), never ``N × Q``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fasttda import ops
from fasttda.store import FeatureStore


@dataclass
class Selection:
    """Selected training rows, best first: ``rows`` (int64 store positions), ``ids`` and ``scores``."""

    rows: torch.Tensor
    scores: torch.Tensor
    ids: list


def subtask_means(val: torch.Tensor, n_subtasks: int | None = None, subtask_sizes=None,
                  normalize: bool = False) -> torch.Tensor:
    """``[Q, k]`` validation rows -> ``[T, k]`` float64 means per subtask (contiguous groups)."""
    val = val.to(torch.float64)
    if normalize:
        val = val / val.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    q = val.shape[0]
    if subtask_sizes is None:
        if not isinstance(n_subtasks, int) or n_subtasks < 1 or q % n_subtasks:
            raise ValueError(f"n_subtasks must divide the {q} validation rows (LESS reshapes them into equal "
                             f"groups), got {n_subtasks!r}")
        subtask_sizes = [q // n_subtasks] * n_subtasks
    sizes = [int(s) for s in subtask_sizes]
    if min(sizes) < 1 or sum(sizes) != q:
        raise ValueError(f"subtask_sizes must be positive and sum to the {q} validation rows, got {sizes}")
    return torch.stack([part.mean(0) for part in torch.split(val, sizes)])


def _rows_of(source) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source
    store = source if isinstance(source, FeatureStore) else FeatureStore.open(source)
    return store.read()


def less_select(train, val, *, n_subtasks: int | None = None, subtask_sizes=None, checkpoint_weights=None,
                percentage: float | None = None, max_samples: int | None = None, normalize: bool = False,
                chunk_rows: int = 65536) -> Selection:
    """LESS selection of training rows for one target task.

    Args:
        train: one training `FeatureStore` (or path) per checkpoint, all holding the same rows.
        val: one validation store, path or ``[Q, k]`` tensor per checkpoint (rows grouped by subtask).
        n_subtasks: LESS's ``N_SUBTASKS[task]`` (mmlu 57, bbh 27, tydiqa 9): Q splits into equal groups.
        subtask_sizes: explicit group sizes instead (in row order).
        checkpoint_weights: one weight per checkpoint (LESS: the learning rates), renormalized to sum 1.
        percentage / max_samples: how many to keep, ``int(percentage * N)`` as LESS does, or a count.
        normalize: cosine instead of the raw inner product (LESS stores unit-normalized gradients,
            so its raw product is already a cosine; set this for unnormalized stores).
        chunk_rows: training rows per chunk.
    """
    train = [train] if isinstance(train, (str, FeatureStore)) or hasattr(train, "__fspath__") else list(train)
    val = [val] if isinstance(val, (str, FeatureStore, torch.Tensor)) or hasattr(val, "__fspath__") else list(val)
    stores = [s if isinstance(s, FeatureStore) else FeatureStore.open(s) for s in train]
    if not stores or len(val) != len(stores):
        raise ValueError(f"need one validation set per training store, got {len(val)} for {len(stores)}")
    n = len(stores[0])
    for s in stores[1:]:
        if len(s) != n:
            raise ValueError(f"training stores hold different row counts: {n} and {len(s)} ({s.path})")
    weights = [1.0] * len(stores) if checkpoint_weights is None else [float(w) for w in checkpoint_weights]
    if len(weights) != len(stores) or not all(np.isfinite(weights)) or sum(weights) == 0:
        raise ValueError(f"checkpoint_weights must be {len(stores)} finite numbers with a nonzero sum, got {weights}")
    weights = [w / sum(weights) for w in weights]
    keep = _count(n, percentage, max_samples)
    means = []
    for store, v in zip(stores, val):
        rows = _rows_of(v)
        if rows.dim() != 2 or rows.shape[1] != store.dim:
            raise ValueError(f"validation rows must be [Q, {store.dim}] for {store.path}, got {tuple(rows.shape)}")
        means.append(subtask_means(rows, n_subtasks, subtask_sizes, normalize).to(torch.float32))
    best_scores = torch.empty(0, dtype=torch.float32)
    best_rows = torch.empty(0, dtype=torch.int64)
    iters = [s.iter_chunks(rows=chunk_rows) for s in stores]
    for group in zip(*iters):
        start = group[0].start
        total = None
        for w, mean, chunk in zip(weights, means, group):
            part = ops.score_dense(mean, chunk.data, scales=chunk.scale, norms=chunk.norms, fmt=chunk.fmt)  # [T, n]
            if normalize:
                part = part / chunk.norms.clamp_min(torch.finfo(torch.float32).tiny)
            total = part.mul_(w) if total is None else total.add_(part, alpha=w)
        if not torch.isfinite(total).all():
            raise ValueError(f"non-finite LESS score among training rows {start}..{start + total.shape[1] - 1}")
        per_row = total.max(0).values
        best_scores = torch.cat([best_scores, per_row])
        best_rows = torch.cat([best_rows, torch.arange(start, start + per_row.numel())])
        if best_scores.numel() > keep:
            best_scores, pick = torch.topk(best_scores, keep)
            best_rows = best_rows[pick]
    order = torch.argsort(best_scores, descending=True, stable=True)
    rows = best_rows[order]
    return Selection(rows, best_scores[order], stores[0].ids_at(rows.tolist()) if keep else [])


def _count(n: int, percentage, max_samples) -> int:
    if (percentage is None) == (max_samples is None):
        raise ValueError("give exactly one of percentage and max_samples")
    if percentage is not None:
        if not 0.0 <= float(percentage) <= 1.0:
            raise ValueError(f"percentage must be in [0, 1], got {percentage!r}")
        return int(float(percentage) * n)
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 0:
        raise ValueError(f"max_samples must be an int >= 0, got {max_samples!r}")
    return min(max_samples, n)
