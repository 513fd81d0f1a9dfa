"""A TRAK projector backed by fasttda: ``TRAKer(..., projector=FastTDAProjector(...))``.

Differences from TRAK's own projectors, all in the user's favour:
* no multiple-of-512 output dims and no batch-of-32 limit (fast_jl's limits);
* bf16 gradients are accepted;
* the matrix for a (seed, model_id) is the same on every GPU model and on the CPU;
* dict gradients are projected per parameter, never concatenated.

LESS builds TRAK projectors directly, so the same class serves it. Matrices follow TRAK's
convention of seeding checkpoint ``model_id`` with ``seed + 10_000 * model_id``; they are
fasttda's counter-hash matrices, not TRAK's, so scores are equal in distribution, not bitwise.
"""
from __future__ import annotations

import torch

from fasttda.integrations._projector import kind_of, project_blocks

try:
    from trak.projectors import AbstractProjector as _TrakBase
except ImportError:  # TRAK not installed: same interface, no base class
    _TrakBase = object


class FastTDAProjector(_TrakBase):
    def __init__(self, grad_dim: int, proj_dim: int, seed: int = 0, proj_type="rademacher", device="cpu",
                 dtype: torch.dtype | None = None, *, backend: str = "auto", **_trak_only_options) -> None:
        if not isinstance(grad_dim, int) or grad_dim < 1:
            raise ValueError(f"grad_dim must be an int >= 1, got {grad_dim!r}")
        if not isinstance(proj_dim, int) or proj_dim < 1:
            raise ValueError(f"proj_dim must be an int >= 1, got {proj_dim!r}")
        self.grad_dim, self.proj_dim, self.seed = grad_dim, proj_dim, seed
        self.proj_type, self.device, self.dtype = proj_type, torch.device(device), dtype
        self.kind = kind_of(proj_type)
        self.backend = backend

    def project(self, grads, model_id: int = 0) -> torch.Tensor:
        """``[B, grad_dim]`` (or a dict of per-parameter blocks) -> ``[B, proj_dim]``."""
        first = next(iter(grads.values())) if isinstance(grads, dict) else grads
        out = project_blocks(grads, self.grad_dim, self.proj_dim, kind=self.kind,
                             seed=self.seed + 10_000 * int(model_id), backend=self.backend)
        return out.to(self.dtype or first.dtype)

    def free_memory(self) -> None:
        """Nothing to free: no matrix is ever held."""
