"""The Influcoder distillation loss on a block of k anchors × m candidates.

With S the student's cosine similarities and Y the teacher's (both ``[k, m]``):

    L = α · (1 − Pearson(S, Y))                                   over the whole block
      + (1 − α) · mean_a KL(softmax(Y[a]/τ) ‖ softmax(S[a]/τ))     per anchor row

The Pearson term matches the block's linear structure (which candidates are more alike for
which anchors); the KL term matches each anchor's ranking, sharpened by τ. Both are zero
exactly when S is a positive affine image of Y with the same row softmaxes, e.g. S = Y.
"""
from __future__ import annotations

import torch

DEFAULT_ALPHA = 0.5
DEFAULT_TAU = 0.05


def pearson(s: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation of all entries of two same-shape tensors (differentiable)."""
    s = s.reshape(-1).to(torch.float32)
    y = y.reshape(-1).to(torch.float32)
    sc, yc = s - s.mean(), y - y.mean()
    return (sc * yc).sum() / (sc.norm() * yc.norm()).clamp_min(eps)


def row_kl(s: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(y/τ) ‖ softmax(s/τ))."""
    log_p = torch.log_softmax(y.to(torch.float32) / tau, dim=1)
    log_q = torch.log_softmax(s.to(torch.float32) / tau, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def influcoder_loss(s: torch.Tensor, y: torch.Tensor, *, alpha: float = DEFAULT_ALPHA,
                    tau: float = DEFAULT_TAU) -> torch.Tensor:
    """The loss of one ``[k, m]`` block (a scalar); ``y`` carries no gradient."""
    check_loss_args(s, y, alpha, tau)
    y = y.detach()
    total = s.new_zeros((), dtype=torch.float32)
    if alpha > 0:
        total = total + alpha * (1.0 - pearson(s, y))
    if alpha < 1:
        total = total + (1.0 - alpha) * row_kl(s, y, tau)
    return total


def check_loss_args(s, y, alpha, tau) -> None:
    if not isinstance(s, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("s and y must be tensors")
    if s.dim() != 2 or s.shape != y.shape:
        raise ValueError(f"s and y must be the same [anchors, candidates] block, got {tuple(s.shape)} and "
                         f"{tuple(y.shape)}")
    if s.numel() < 2:
        raise ValueError(f"a block needs at least 2 entries, got {tuple(s.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not float(tau) > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("the teacher block y holds NaN or inf")
