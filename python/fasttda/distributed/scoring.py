"""`fasttda.score` over several ranks: each rank scores a part, the top-k are merged.

Two ways to split, chosen from the shapes (``split="auto"``) or by the caller:

* ``"rows"``: each rank scores all queries against a contiguous range of the stores' rows,
  then the per-rank top-k are gathered and merged. The ranges start on the chunk
  boundaries a single process uses, so every row's score is computed by the same op on
  the same chunk, and the merge uses the same total order (higher score, then lower row):
  the result is identical to one process, ties included.
* ``"queries"``: each rank scores a slice of the queries against every row, and the
  slices are gathered. It reads the whole store on every rank but gathers no k-lists,
  so it wins when the store is small and the queries are many. Scores agree with one
  process up to the float rounding of a query batch of another size (a GEMM may sum in
  another order for another number of rows), so near-ties can order differently.

``auto`` takes ``"queries"`` only when it pays: stores of at most ``QUERY_SPLIT_MAX_BYTES``
and at least ``QUERY_SPLIT_MIN_QUERIES`` queries per rank; otherwise ``"rows"`` (ranks whose
range is empty, when the store has fewer chunks than ranks, just contribute nothing).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from fasttda.distributed import comm

QUERY_SPLIT_MAX_BYTES = 1 << 30  # a store this small is read fast enough by every rank
QUERY_SPLIT_MIN_QUERIES = 64     # per rank: fewer queries gain nothing from a query split
SPLITS = ("auto", "rows", "queries")


class DistTopK(NamedTuple):
    """`fasttda.scoring.TopK` plus how the work was split (``"rows"`` or ``"queries"``)."""

    values: torch.Tensor
    indices: torch.Tensor
    ids: np.ndarray
    split: str


def chunk_starts(store, chunk_rows: int) -> list[int]:
    """The first row of every chunk a single-process `fasttda.score` reads from ``store``
    (chunks never cross a shard boundary, so they restart at each shard)."""
    starts, s0 = [], 0
    for entry in store.manifest["shards"]:
        starts.extend(range(s0, s0 + entry["rows"], chunk_rows))
        s0 += entry["rows"]
    return starts


def row_ranges(starts: list[int], n_rows: int, world: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, one per rank, cut only at chunk starts, balanced by rows."""
    bounds = [0]
    for r in range(1, world):
        target = n_rows * r // world
        # the chunk start closest to the even split, never before the previous bound
        best = min((s for s in starts if s >= bounds[-1]), key=lambda s: abs(s - target), default=n_rows)
        bounds.append(best)
    bounds.append(n_rows)
    return [(bounds[i], bounds[i + 1]) for i in range(world)]


def choose_split(n_queries: int, store_bytes: int, world: int) -> str:
    if store_bytes <= QUERY_SPLIT_MAX_BYTES and n_queries >= QUERY_SPLIT_MIN_QUERIES * world:
        return "queries"
    return "rows"


class _RowView:
    """Rows ``[lo, hi)`` of a store, read with the store's own chunking and global row numbers."""

    def __init__(self, store, lo: int, hi: int):
        self.store, self.lo, self.hi = store, lo, hi
        self.dim, self.fmt, self.path = store.dim, store.fmt, store.path

    def __len__(self) -> int:
        return self.hi - self.lo

    def iter_chunks(self, rows: int = 65536, start: int | None = None, stop: int | None = None):
        start = self.lo if start is None else start
        stop = self.hi if stop is None else stop
        return self.store.iter_chunks(rows, start=start, stop=stop)


def score(queries, stores, *, k: int, split: str = "auto", chunk_rows: int, group=None, **kwargs) -> DistTopK:
    """`fasttda.score` with the work split over the ranks of ``group``; every rank returns
    the same global result. Every rank must call it with the same queries and stores."""
    from fasttda.scoring import score as local_score

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    multi = isinstance(stores, (list, tuple))
    store_list = list(stores) if multi else [stores]
    query_list = list(queries) if isinstance(queries, (list, tuple)) else [queries]
    rank, world = comm.rank_world(group)
    n_rows, n_q = len(store_list[0]), int(query_list[0].shape[0])
    comm.check_same([n_q, int(k), n_rows, len(store_list), chunk_rows] + [len(s) for s in store_list]
                    + [int(q.shape[1]) for q in query_list], "the queries, stores and k", group)
    _check_combinable(store_list)
    starts = chunk_starts(store_list[0], chunk_rows)
    store_bytes = sum(_nbytes(s) for s in store_list)
    chosen = choose_split(n_q, store_bytes, world) if split == "auto" else split
    if chosen == "queries":
        return _by_queries(local_score, queries, stores, multi, query_list, n_q, k, chunk_rows, rank, world,
                           group, kwargs)
    return _by_rows(local_score, queries, store_list, multi, starts, n_rows, n_q, k, chunk_rows, rank, world,
                    group, kwargs)


def _by_rows(local_score, queries, store_list, multi, starts, n_rows, n_q, k, chunk_rows, rank, world, group,
             kwargs) -> DistTopK:
    k_out = min(int(k), n_rows)
    lo, hi = row_ranges(starts, n_rows, world)[rank]
    views = [_RowView(s, lo, hi) for s in store_list]
    ok, message, values, rows = True, "", None, None
    try:
        part = local_score(queries, views if multi else views[0], k=k, chunk_rows=chunk_rows, distributed=False,
                           **kwargs)
        values, rows = part.values.float(), part.indices.long()
    except Exception as exc:  # every rank must hear of it, or the others hang in all_gather
        ok, message = False, f"{type(exc).__name__}: {exc}"
    comm.agree(ok, message, group)
    device = values.device
    pad_v = torch.full((n_q, k_out), float("-inf"), device=device)
    pad_r = torch.full((n_q, k_out), n_rows, dtype=torch.int64, device=device)  # sorts after every real row
    pad_v[:, : values.shape[1]] = values
    pad_r[:, : rows.shape[1]] = rows
    all_v = comm.all_gather(pad_v, group).permute(1, 0, 2).reshape(n_q, -1)
    all_r = comm.all_gather(pad_r, group).permute(1, 0, 2).reshape(n_q, -1)
    # higher score first, then lower row: sort by row, then stably by score
    order = torch.argsort(all_r, dim=1, stable=True)
    all_v, all_r = all_v.gather(1, order), all_r.gather(1, order)
    order = torch.argsort(all_v, dim=1, descending=True, stable=True)[:, :k_out]
    values, rows = all_v.gather(1, order), all_r.gather(1, order)
    ids = _ids_of(store_list[0], rows)
    return DistTopK(values, rows, ids, "rows")


def _by_queries(local_score, queries, stores, multi, query_list, n_q, k, chunk_rows, rank, world, group,
                kwargs) -> DistTopK:
    per = -(-n_q // world)
    lo, hi = min(rank * per, n_q), min((rank + 1) * per, n_q)
    mine = [q[lo:hi] for q in query_list]
    ok, message, part = True, "", None
    try:
        part = local_score(mine if multi else mine[0], stores, k=k, chunk_rows=chunk_rows, distributed=False,
                           **kwargs)
    except Exception as exc:
        ok, message = False, f"{type(exc).__name__}: {exc}"
    comm.agree(ok, message, group)
    k_out = part.values.shape[1]
    pad_v = torch.zeros((per, k_out), device=part.values.device)
    pad_r = torch.zeros((per, k_out), dtype=torch.int64, device=part.values.device)
    pad_v[: hi - lo], pad_r[: hi - lo] = part.values, part.indices
    values = comm.all_gather(pad_v, group).reshape(world * per, k_out)[:n_q]
    rows = comm.all_gather(pad_r, group).reshape(world * per, k_out)[:n_q]
    store0 = stores[0] if multi else stores
    return DistTopK(values, rows, _ids_of(store0, rows), "queries")


def _ids_of(store, rows: torch.Tensor) -> np.ndarray:
    if rows.numel() == 0:
        return np.empty(tuple(rows.shape), dtype=np.int64)
    flat = store.ids_at(rows.reshape(-1))
    if store.id_kind == "str":
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
    else:
        out = np.asarray(flat, dtype=np.int64)
    return out.reshape(tuple(rows.shape))


def _check_combinable(stores) -> None:
    if len(stores) > 1 and all(hasattr(s, "ids_digest") for s in stores):
        from fasttda.store import check_compatible

        check_compatible(stores, same_fingerprint=False, same_rows=True)


def _nbytes(store) -> int:
    return sum(m["bytes"] for e in store.manifest["shards"] for m in e["files"].values())
