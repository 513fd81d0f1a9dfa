"""dattri's ``random_project`` contract, backed by fasttda.

Both of dattri's signatures are accepted:

* dattri ≤ 0.3: ``random_project(feature, feature_batch_size, proj_dim, proj_max_batch_size,
  proj_seed=0, proj_type="normal", *, device="cpu")``;
* dattri's main branch (PR #248): ``random_project(feature, proj_params=RandomProjectionParams(...))``.

`installed_signature()` says which one the installed dattri uses. Either way the result is
``fn(feature, ensemble_id=0) -> [B, proj_dim]`` in the feature's dtype, with dattri's
conventions: dense kinds scaled by 1/sqrt(proj_dim), SJLT / ``random_mask`` / ``grass``
raw; ensemble ``e`` uses seed ``proj_seed + 100_000 * e``; ``"grass_N"`` keeps N·proj_dim
coordinates (on average: fasttda's GraSS mask is a streaming Bernoulli mask, see
`fasttda.ops.project_grass`). Unlike dattri's CPU path, ``"sjlt"`` and ``"grass"`` work on
the CPU, no dense matrix is materialized, float64 features are projected in float32, and
``proj_max_batch_size`` imposes nothing (accepted for compatibility).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from fasttda.integrations._projector import kind_of, project_blocks
from fasttda.ops._checks import check_seed

ENSEMBLE_STRIDE = 100_000  # dattri: seed + int(1e5) * ensemble_id


def installed_signature() -> str | None:
    """``"proj_params"`` (dattri main), ``"positional"`` (dattri ≤ 0.3), or None if dattri is absent."""
    try:
        from dattri.func.projection import random_project as host
    except ImportError:
        return None
    return "proj_params" if "proj_params" in inspect.signature(host).parameters else "positional"


def random_project(feature, feature_batch_size: int | None = None, proj_dim: int | None = None,
                   proj_max_batch_size: int | None = None, proj_seed: int = 0, proj_type: str = "normal", *,
                   device="cpu", proj_params=None, backend: str = "auto") -> Callable:
    if proj_params is not None:
        if feature_batch_size is not None or proj_dim is not None:
            raise TypeError("give either proj_params or feature_batch_size/proj_dim, not both")
        feature_batch_size, proj_dim = proj_params.feature_batch_size, proj_params.proj_dim
        proj_seed, proj_type = proj_params.proj_seed, proj_params.proj_type
        device = getattr(proj_params, "device", device)
    if feature_batch_size is None or proj_dim is None:
        raise TypeError("random_project needs feature_batch_size and proj_dim (or proj_params)")
    blocks = list(feature.values()) if isinstance(feature, dict) else [feature]
    feature_dim = sum(b.numel() // feature_batch_size for b in blocks)
    kind = kind_of(proj_type)
    seed = check_seed(proj_seed)

    def project(feature, ensemble_id: int = 0) -> torch.Tensor:
        first = next(iter(feature.values())) if isinstance(feature, dict) else feature
        out = project_blocks(feature, feature_dim, proj_dim, kind=kind, seed=seed + ENSEMBLE_STRIDE * int(ensemble_id),
                             backend=backend, scaled=True)
        return out.to(first.dtype)

    return project
