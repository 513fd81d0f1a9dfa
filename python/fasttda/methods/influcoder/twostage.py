"""Two-stage attribution: the encoder shortlists, exact gradients decide.

1. `prefilter`: the student's query rows against the pool's encoder store give each query
   its top ``m`` candidates (`fasttda.score`, cosine).
2. `rerank`: gradient rows are obtained for the union of the candidates only (computed on
   the fly, or read from a gradient store), every query is scored exactly against its own
   ``m`` candidates (`fasttda.ops.score_dense`), and the top k is kept in the scorer's
   order (higher score, then lower row).

With ``m = N`` this is exact gradient scoring of the whole pool. `recall` measures how
much of the exact top k the two stages recover.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from fasttda.ops.score import pack_keys_at, score_dense, unpack_keys


def prefilter(query_rows: torch.Tensor, encoder_store, m: int) -> torch.Tensor:
    """``[Q, min(m, N)]`` candidate rows per query, best first."""
    from fasttda.scoring import score

    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ValueError(f"the number of candidates must be an int >= 1, got {m!r}")
    return score(query_rows, encoder_store, k=m, normalize=True).indices


def rerank(query_grads: torch.Tensor, candidates: torch.Tensor, gradient_rows: Callable[[torch.Tensor], torch.Tensor],
           *, k: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Exact scores of each query against its candidates only.

    ``gradient_rows(rows)`` returns the gradient features of the given (sorted, unique)
    pool rows: a float ``[len(rows), d]`` tensor, or `StoredRows` as a store holds them
    (scored exactly as `fasttda.score` scores the store). Returns ``(values [Q, k],
    indices [Q, k], rows computed)``.
    """
    if candidates.dim() != 2 or candidates.shape[0] != query_grads.shape[0]:
        raise ValueError(f"candidates must be [Q={query_grads.shape[0]}, m], got {tuple(candidates.shape)}")
    union, position = torch.unique(candidates, sorted=True, return_inverse=True)
    feats = gradient_rows(union)
    if not isinstance(feats, StoredRows):
        feats = StoredRows(feats.to(torch.float32), None, None, "fp32")
    if feats.data.shape[0] != len(union):
        raise ValueError(f"gradient_rows returned {feats.data.shape[0]} rows for {len(union)}")
    scores = score_dense(query_grads, feats.data, scales=feats.scale, norms=feats.norms, normalize=normalize,
                         fmt=feats.fmt)  # [Q, U]
    mine = torch.gather(scores, 1, position)  # [Q, m]: each query's own candidates
    keys = pack_keys_at(mine, candidates)
    top = torch.topk(keys, min(int(k), keys.shape[1]), dim=1).values
    values, indices = unpack_keys(top)
    return values, indices, len(union)


def recall(exact: torch.Tensor, approx: torch.Tensor) -> float:
    """Mean over queries of |exact top k ∩ approx top k| / k (rows ``[Q, k]``)."""
    if exact.shape[0] != approx.shape[0]:
        raise ValueError("exact and approx must have one row per query")
    hits = [len(set(e.tolist()) & set(a.tolist())) / max(1, len(e)) for e, a in zip(exact, approx)]
    return float(sum(hits) / max(1, len(hits)))


class StoredRows(NamedTuple):
    """Rows as a store holds them: stored data, per-row scales (or None), fp32 norms (or None)."""
    data: torch.Tensor
    scale: torch.Tensor | None
    norms: torch.Tensor | None
    fmt: str


def store_rows(store) -> Callable[[torch.Tensor], StoredRows]:
    """``gradient_rows`` reading the given rows of a store as stored (runs of consecutive rows at once)."""
    def read(rows: torch.Tensor) -> StoredRows:
        rows = rows.tolist()
        chunks, i = [], 0
        while i < len(rows):
            j = i
            while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
                j += 1
            chunks += list(store.iter_chunks(rows[j] + 1 - rows[i], start=rows[i], stop=rows[j] + 1))
            i = j + 1
        if not chunks:
            raise ValueError("no rows to read")
        scale = None if chunks[0].scale is None else torch.cat([c.scale for c in chunks])
        return StoredRows(torch.cat([c.data for c in chunks]), scale, torch.cat([c.norms for c in chunks]),
                          chunks[0].fmt)
    return read


def query_with_prefilter(encoder_store, queries, query_grads: torch.Tensor, gradient_store, *, k: int, m: int,
                         normalize: bool = True, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``fasttda query --prefilter influcoder:DIR``: the encoder store (rows of the same
    examples as ``gradient_store``) shortlists ``m`` rows per query, the gradient store's
    rows re-rank them. Returns ``(values [Q, k], indices [Q, k])``."""
    from fasttda.methods.influcoder.encode import embed, load_for_store

    if len(encoder_store) != len(gradient_store) or encoder_store.ids_digest() != gradient_store.ids_digest():
        raise ValueError(f"prefilter store {encoder_store.path} does not hold the rows of {gradient_store.path} "
                         "(different ids); encode the same data set")
    student = load_for_store(encoder_store, device=device)
    candidates = prefilter(embed(student, queries), encoder_store, m)
    values, indices, _ = rerank(query_grads, candidates, store_rows(gradient_store), k=k, normalize=normalize)
    return values, indices
