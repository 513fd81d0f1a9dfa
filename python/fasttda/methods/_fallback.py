"""TEMPORARY stand-in for `fasttda.score` and `fasttda.precondition.fit`, used only until
scoring lands: a dense float64 matmul over whole stores and torch.topk."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_preconditioner(store, damping: float) -> torch.Tensor:
    """``(GᵀG/N + λI)⁻¹`` with λ = damping · mean diagonal, float64."""
    g = store.read(0, len(store)).double()
    h = g.T @ g / len(g)
    lam = damping * h.diagonal().mean().clamp_min(1e-30)
    return torch.linalg.inv(h + lam * torch.eye(len(h), dtype=h.dtype))


def score(queries, stores, *, k, weights, normalize, preconditioner=None):
    total = None
    preconditioners = preconditioner if isinstance(preconditioner, (list, tuple)) else [preconditioner] * len(stores)
    for q, store, w, pre in zip(queries, stores, weights, preconditioners):
        rows = store.read(0, len(store)).double()
        q = q.double()
        if pre is not None:
            q = q @ pre.double()
        if normalize:
            rows = F.normalize(rows, dim=1)
            q = F.normalize(q, dim=1)
        part = w * (q @ rows.T)
        total = part if total is None else total + part
    values, indices = torch.topk(total, min(k, total.shape[1]), dim=1)
    return values.float(), indices
