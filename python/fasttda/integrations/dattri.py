"""dattri's ``random_project`` contract, backed by fasttda.

``random_project(feature, feature_batch_size, proj_dim, proj_max_batch_size, proj_seed,
proj_type, device=...)`` returns ``fn(feature, ensemble_id=0) -> [B, proj_dim]``, so
``dattri.func.projection.random_project`` can be swapped for this one. Unlike dattri's CPU
path, "sjlt" works on the CPU, no dense matrix is materialized, and ``proj_max_batch_size``
imposes nothing (accepted for compatibility).
"""
from __future__ import annotations

from typing import Callable

import torch

from fasttda.integrations._projector import kind_of, project_blocks


def random_project(feature, feature_batch_size: int, proj_dim: int, proj_max_batch_size: int | None = None,
                   proj_seed: int = 0, proj_type: str = "normal", *, device="cpu",
                   backend: str = "auto") -> Callable:
    blocks = list(feature.values()) if isinstance(feature, dict) else [feature]
    feature_dim = sum(b.numel() // feature_batch_size for b in blocks)
    kind = kind_of(proj_type)

    def project(feature, ensemble_id: int = 0) -> torch.Tensor:
        first = next(iter(feature.values())) if isinstance(feature, dict) else feature
        out = project_blocks(feature, feature_dim, proj_dim, kind=kind, seed=proj_seed + 10_000 * int(ensemble_id),
                             backend=backend)
        return out.to(first.dtype)

    return project
