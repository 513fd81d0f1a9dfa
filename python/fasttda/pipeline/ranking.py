"""Scoring stores: one weighted streaming pass, preconditioners, and the ranked result."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from fasttda.pipeline.features import StoreMismatch
from fasttda.precondition import Preconditioner, fit
from fasttda.scoring import score
from fasttda.store import FeatureStore


def score_stores(query_feats: Sequence[torch.Tensor], stores: Sequence[FeatureStore], weights: Sequence[float], *,
                 k: int, normalize: bool = False, preconditioners=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One weighted pass over stores that index one data set (one per checkpoint, say):
    top-k of ``Σ_c w_c·<q_c, r_c[n]>`` (per-store cosine when ``normalize``), with k capped
    at the row count; returns ``(values [Q, k], row indices [Q, k])``."""
    if not (len(query_feats) == len(stores) == len(weights)):
        raise ValueError(f"need one query block and one weight per store, got {len(query_feats)} blocks, "
                         f"{len(stores)} stores, {len(weights)} weights")
    n_rows = {len(s) for s in stores}
    if len(n_rows) != 1:
        raise StoreMismatch(f"the stores hold different numbers of rows {sorted(n_rows)}; they must index one data set")
    k = min(int(k), n_rows.pop())
    result = score(list(query_feats), list(stores), k=k, weights=list(weights), normalize=normalize,
                   preconditioner=preconditioners)
    return result.values, result.indices


def fit_preconditioner(store: FeatureStore, damping: float) -> Preconditioner:
    """``(GᵀG/N + λI)⁻¹`` with λ = ``damping`` times the mean of GᵀG/N's diagonal, so
    one damping suits features of any scale."""
    norms = store.norms(0, len(store)).double()
    mean_diag = float((norms ** 2).mean()) / store.dim
    return fit(store, damping * max(mean_diag, 1e-30))


@dataclass
class Attribution:
    """Ranked training rows per query, plus the time spent."""
    query_ids: list[str]
    values: torch.Tensor
    indices: torch.Tensor
    train_ids: list[str]
    index_s: float = 0.0
    score_s: float = 0.0

    @classmethod
    def of_store(cls, query_ids: Sequence[str], values: torch.Tensor, indices: torch.Tensor,
                 store: FeatureStore) -> "Attribution":
        """Rows named by the ids ``store`` holds (row numbers where none were given)."""
        return cls(list(query_ids), values, indices, [str(i) for i in store.ids()])

    def rows(self):
        for q, qid in enumerate(self.query_ids):
            yield {"query_id": qid, "results": [
                {"rank": r + 1, "id": self.train_ids[int(i)], "row": int(i), "score": float(v)}
                for r, (v, i) in enumerate(zip(self.values[q].tolist(), self.indices[q].tolist()))]}

    def write_jsonl(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for row in self.rows():
                f.write(json.dumps(row) + "\n")
        return path
