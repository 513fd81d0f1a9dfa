"""The three rooms DDA is composed from, behind three thin functions.

* `capture`: per-example projected gradients (``fasttda.GradientCapture``).
* `create_store` / `open_store`: ``fasttda.FeatureStore``.
* `score` / `fit_preconditioner`: ``fasttda.score`` and ``fasttda.precondition.fit``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from fasttda.methods._checkpoints import ProjectionSpec


def implementation() -> dict[str, str]:
    """Which implementation each room uses (recorded in reports)."""
    return {"capture": "GradientCapture", "store": "FeatureStore", "scoring": "fasttda.score"}


# -- capture ---------------------------------------------------------------------------------
@contextmanager
def capture(model: torch.nn.Module, *, projection: ProjectionSpec, modules: Sequence[str] | None = None,
            lora_only: bool = False) -> Iterator:
    """Yield an object whose ``features(input_ids=, attention_mask=, labels=)`` returns
    ``[B, dim]`` float32 projected per-example gradients of the mean response loss."""
    from fasttda.capture import Dense, Factored, GradientCapture

    if projection.kind == "factored":
        proj = Factored(projection.k_in, projection.k_out)
    elif projection.kind == "none":
        proj = None
    else:
        proj = Dense(projection.dim, kind=projection.kind)
    with GradientCapture(model, modules=modules, projection=proj, seed=projection.seed, lora_only=lora_only) as cap:
        yield cap


# -- stores ------------------------------------------------------------------------------------
def create_store(path, dim: int, fmt: str, meta: dict, *, spec: dict | None = None,
                 fingerprint: dict | None = None):
    """``spec`` is what makes rows comparable (stores combine only when specs agree);
    ``fingerprint`` (``{"name", "sha256"}``) names the weights behind the rows."""
    from fasttda.store import FeatureStore

    return FeatureStore.create(path, dim, fmt, meta=meta, spec=spec, fingerprint=fingerprint)


def open_store(path, mode: str = "r"):
    from fasttda.store import FeatureStore

    return FeatureStore.open(path, mode=mode)


def store_meta(store) -> dict:
    return dict(store.meta or {})


# -- scoring ----------------------------------------------------------------------------------
def score(queries: Sequence[torch.Tensor], stores: Sequence, *, k: int, weights: Sequence[float],
          normalize: bool, preconditioner=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``Σ_c w_c <q_c, r_c[n]>`` over the rows n shared by the stores, in one pass."""
    from fasttda.scoring import score as fast_score

    result = fast_score(list(queries), list(stores), k=k, weights=list(weights), normalize=normalize,
                        preconditioner=preconditioner)
    return result.values, result.indices


def fit_preconditioner(store, damping: float):
    """``(GᵀG/N + λI)⁻¹`` with λ = ``damping`` times the mean of GᵀG/N's diagonal, so
    one damping suits features of any scale."""
    from fasttda.precondition import fit

    norms = store.norms(0, len(store)).double()
    mean_diag = float((norms ** 2).mean()) / store.dim
    return fit(store, damping * max(mean_diag, 1e-30))


def store_ids(store) -> list[str]:
    """Row ids as written by ``append(..., ids=)`` (row numbers when none were)."""
    ids = store.ids()
    return [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(store))]
