"""Will debiasing help? A label-free answer from the scores alone (issue 18, item 4).

DDA subtracts β·IS(θ₀) from the fine-tuned checkpoints' score F (the epoch mean for dda,
the last checkpoint for debias). That helps when θ₀'s score is a *bias* the fine-tuned
score shares with unrelated examples, and hurts when θ₀ already ranks the same examples at
the top as F does: then the subtraction removes the very signal F found (METHODS.md
section 7: when θ₀ knows the task, the sources are the only surprising examples at θ₀).

The statistic, ``top_lift``, per query: where θ₀ ranks the top of F's ranking (its ``top``
fraction, at least ``min_top`` rows), as 2·(mean percentile of θ₀'s score over all rows) − 1,
averaged over queries: +1 when θ₀ ranks F's top rows highest of all, 0 at chance, −1 lowest.

    top_lift > threshold (0)  ⇒  predict that debias hurts (``--beta auto`` picks β = 0)
    top_lift ≤ threshold      ⇒  predict that it helps (β = 1, the paper's)

Other candidates are computed for the report (`candidates`): the Spearman correlation of
θ₀'s and F's scores within F's top rows (``agreement_top``; the restricted range makes it
noisy), over every row (``agreement_all``), and the share of F's top rows that are also in
θ₀'s top (``top_overlap``). How often each predicted the sign of (dda − denoise) in the demo
is in the README.
"""
from __future__ import annotations

import torch

THRESHOLD = 0.0
TOP = 0.05
MIN_TOP = 20


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dim (ties broken by position; the scores are continuous)."""
    order = x.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks.scatter_(-1, order, torch.arange(x.shape[-1], dtype=torch.float64).expand_as(x).contiguous())
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.pow(2).sum(-1) * b.pow(2).sum(-1)).sqrt()
    return torch.where(den > 0, (a * b).sum(-1) / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(den))


def top_rows(n: int, top: float = TOP, min_top: int = MIN_TOP) -> int:
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    return max(2, min(n, max(int(min_top), round(top * n))))


def agreement(base: torch.Tensor, tuned: torch.Tensor, *, top: float = TOP, min_top: int = MIN_TOP) -> torch.Tensor:
    """``[Q]`` float64: Spearman correlation of ``base`` and ``tuned`` scores (``[Q, N]``)
    over the top rows of ``tuned``'s ranking."""
    base, tuned = _check(base, tuned)
    m = top_rows(base.shape[1], top, min_top)
    idx = tuned.topk(m, dim=1).indices
    return _pearson(_ranks(base.gather(1, idx)), _ranks(tuned.gather(1, idx)))


def top_lift(base: torch.Tensor, tuned: torch.Tensor, *, top: float = TOP, min_top: int = MIN_TOP) -> torch.Tensor:
    """``[Q]`` float64 in [−1, 1]: 2·(mean percentile, over all rows, of θ₀'s scores at the
    top rows of ``tuned``'s ranking) − 1."""
    base, tuned = _check(base, tuned)
    m = top_rows(base.shape[1], top, min_top)
    idx = tuned.topk(m, dim=1).indices
    percentile = _ranks(base) / (base.shape[1] - 1)
    return 2 * percentile.gather(1, idx).mean(dim=1) - 1


def candidates(base: torch.Tensor, tuned: torch.Tensor, *, top: float = TOP, min_top: int = MIN_TOP) -> dict:
    """Every candidate statistic, each averaged over queries."""
    base, tuned = _check(base, tuned)
    m = top_rows(base.shape[1], top, min_top)
    top_t = tuned.topk(m, dim=1).indices
    top_b = base.topk(m, dim=1).indices
    overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / m for a, b in zip(top_t, top_b)])
    return {"top_lift": float(top_lift(base, tuned, top=top, min_top=min_top).mean()),
            "agreement_top": float(agreement(base, tuned, top=top, min_top=min_top).mean()),
            "agreement_all": float(_pearson(_ranks(base), _ranks(tuned)).mean()),
            "top_overlap": float(overlap.mean()), "top_rows": m, "n": int(base.shape[1])}


def predicts_harm(stat: float, threshold: float = THRESHOLD) -> bool:
    return stat > threshold


def auto_beta(stat: float, threshold: float = THRESHOLD, beta: float = 1.0) -> float:
    """β for ``--beta auto``: 0 when the statistic predicts that debiasing hurts, else ``beta``."""
    return 0.0 if predicts_harm(stat, threshold) else beta


def _check(base: torch.Tensor, tuned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    base, tuned = torch.as_tensor(base, dtype=torch.float64), torch.as_tensor(tuned, dtype=torch.float64)
    if base.dim() == 1:
        base, tuned = base[None], tuned[None]
    if base.shape != tuned.shape or base.dim() != 2 or base.shape[1] < 2:
        raise ValueError(f"base and tuned scores must both be [Q, N>=2], got {tuple(base.shape)} and "
                         f"{tuple(tuned.shape)}")
    if not (torch.isfinite(base).all() and torch.isfinite(tuned).all()):
        raise ValueError("the scores hold NaN or inf")
    return base, tuned
