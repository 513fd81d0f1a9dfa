"""Scoring stores: one weighted streaming pass, preconditioners, and the ranked result."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from fasttda.data import Example
from fasttda.pipeline.features import StoreMismatch
from fasttda.precondition import Preconditioner, fit
from fasttda.scoring import score
from fasttda.store import FeatureStore


def score_stores(query_feats: Sequence[torch.Tensor], stores: Sequence[FeatureStore], weights: Sequence[float], *,
                 k: int, normalize: bool = False, preconditioners=None, query_precision: str = "fp32",
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One weighted pass over stores that index one data set (one per checkpoint, say):
    top-k of ``Σ_c w_c·<q_c, r_c[n]>`` (per-store cosine when ``normalize``), with k capped
    at the row count; returns ``(values [Q, k], row indices [Q, k])``. ``query_precision``:
    see `fasttda.score` (``"int8"``: one int8/int4 store, integer queries)."""
    if not (len(query_feats) == len(stores) == len(weights)):
        raise ValueError(f"need one query block and one weight per store, got {len(query_feats)} blocks, "
                         f"{len(stores)} stores, {len(weights)} weights")
    n_rows = {len(s) for s in stores}
    if len(n_rows) != 1:
        raise StoreMismatch(f"the stores hold different numbers of rows {sorted(n_rows)}; they must index one data set")
    k = min(int(k), n_rows.pop())
    from fasttda.progress import bar

    with bar(len(stores[0]), f"scoring {len(query_feats[0])} queries", enabled=progress, unit="rows") as rows:
        result = score(list(query_feats), list(stores), k=k, weights=list(weights), normalize=normalize,
                       preconditioner=preconditioners, query_precision=query_precision, on_chunk=rows.update)
    return result.values, result.indices


def fit_preconditioner(store: FeatureStore, damping: float) -> Preconditioner:
    """``(GᵀG/N + λI)⁻¹`` with λ = ``damping`` times the mean of GᵀG/N's diagonal, so
    one damping suits features of any scale."""
    norms = store.norms(0, len(store)).double()
    mean_diag = float((norms ** 2).mean()) / store.dim
    return fit(store, damping * max(mean_diag, 1e-30))


@dataclass
class Attribution:
    """Ranked training rows per query, plus the time spent. With ``queries`` and ``train``
    (the `Example`s, in query and row order) each JSONL row also carries the query's text
    and each result its training example's prompt and response."""
    query_ids: list[str]
    values: torch.Tensor
    indices: torch.Tensor
    train_ids: list[str]
    index_s: float = 0.0
    score_s: float = 0.0
    queries: Sequence[Example] | None = None
    train: Sequence[Example] | None = None
    contrast: bool = False  # contrastive queries: g(response) − g(reference)

    @classmethod
    def of_store(cls, query_ids: Sequence[str], values: torch.Tensor, indices: torch.Tensor,
                 store: FeatureStore) -> "Attribution":
        """Rows named by the ids ``store`` holds (row numbers where none were given)."""
        return cls(list(query_ids), values, indices, [str(i) for i in store.ids()])

    def rows(self, text: bool = True):
        """One dict per query: ``query_id``, ``query`` (its prompt, response and target, when
        the queries are known) and ``results`` (rank, id, row, score and, with ``text`` and
        the training examples known, their prompt and response)."""
        train = self.train if text else None
        for q, qid in enumerate(self.query_ids):
            row = {"query_id": qid}
            if self.queries is not None:
                ex = self.queries[q]
                row["query"] = {"prompt": ex.prompt, "response": ex.response, "target": ex.target}
            results = []
            for r, (v, i) in enumerate(zip(self.values[q].tolist(), self.indices[q].tolist())):
                hit = {"rank": r + 1, "id": self.train_ids[int(i)], "row": int(i), "score": float(v)}
                if train is not None:
                    hit["prompt"], hit["response"] = train[int(i)].prompt, train[int(i)].response
                results.append(hit)
            row["results"] = results
            yield row

    def write_jsonl(self, path: str | os.PathLike, text: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for row in self.rows(text):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path

    def write_html(self, path: str | os.PathLike, *, top: int = 20, title: str = "fasttda attribution",
                   meta: dict | None = None) -> Path:
        """A readable, self-contained report (`fasttda.html_report`): per query its text with
        the target span marked, and its top training examples with the words they share."""
        from fasttda import html_report

        return html_report.write(path, self.rows(True), top=top, title=title, meta=meta)
