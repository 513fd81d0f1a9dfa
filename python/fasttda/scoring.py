"""`fasttda.score`: stream feature stores chunk by chunk, keep only the top k per query.

    result = fasttda.score(queries, store, k=100)                   # one store
    result = fasttda.score([q1, q2, q0], [s1, s2, s0], k=100,       # DDA: one pass over
                           weights=[0.5, 0.5, -1.0], normalize=True)  # three checkpoints

Each chunk of rows is scored by `fasttda.ops.score_topk` (which also fuses the stores'
weighted combination), and its top k is merged into a running top k with the same total
order as the op (higher score, then lower row index), so the result equals one call of
the op over all rows. Peak memory is one chunk per store (zero-copy views of the store's
memory maps on the CPU) plus the op's bounded buffers plus ``Q × k``, whatever N is.

On a GPU the next chunk is read and copied host → device (pinned buffer, side stream) on
a background thread while the current one is scored; see `_prefetch_to_device`. The loop
makes no host sync per chunk: the op's value checks come back as device flags, combined
on the device and read once at the end, and ids are looked up once, for the final rows.
"""
from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import numpy as np
import torch

from fasttda.ops.score import NOT_FINITE, score_topk, score_topk_deferred
from fasttda.topk import merge_topk_indexed, pack_keys_at, unpack_keys
from fasttda.precondition import as_preconditioner

DEFAULT_CHUNK_ROWS = 65536


class TopK(NamedTuple):
    """``values [Q, k]`` float32, ``indices [Q, k]`` global row positions, ``ids [Q, k]``
    the stores' row ids (an int64 array, or an object array of str ids)."""

    values: torch.Tensor
    indices: torch.Tensor
    ids: np.ndarray


def score(queries, stores, *, k: int, weights=None, normalize: bool = False, preconditioner=None,
          query_precision: str = "fp32", chunk_rows: int = DEFAULT_CHUNK_ROWS, device=None, backend: str | None = "auto",
          distributed: bool | None = None, split: str = "auto", group=None, on_chunk=None) -> TopK:
    """Global top-k of ``queries`` against every row of ``stores``.

    Args:
        queries: ``[Q, d]``, or a list of C tensors (one per store).
        stores: a `fasttda.FeatureStore`, or a list of C stores holding the same rows
            (checkpoints of one run), combined as Σ_c w_c · score_c in one pass.
        k: rows kept per query (``k > N`` keeps all N).
        weights: one float per store (default 1.0).
        normalize: cosine per store, with the stored fp32 row norms.
        preconditioner: applied to the queries once: a `fasttda.precondition.Preconditioner`,
            a ``[d, d]`` H⁻¹, a ``[d]`` diagonal, or a list of those (None entries allowed), one per store.
        query_precision: ``"fp32"``, or ``"int8"`` for one int8/int4 store: queries rounded
            to int8 per query, exact integer dot products (`fasttda.ops.score_topk`).
        chunk_rows: rows read per chunk (memory: about ``chunk_rows × row bytes`` per store).
        device: where scoring runs (default: the queries' device). With ``"cuda"`` and stores
            on disk, chunks are prefetched to the GPU while the previous one is scored.
        backend: the op's backend (`fasttda.ops.score_topk`).
        distributed: split the work over the ranks of ``group`` (a ``torch.distributed``
            process group, default the world) and return the same global result on every
            rank; every rank must then make the same call. None (default): on when a
            process group with more than one rank is initialized (e.g. under ``torchrun``);
            pass False to score locally on each rank anyway.
        split: under ``distributed``: ``"rows"``, ``"queries"`` or ``"auto"`` (from the
            shapes); see `fasttda.distributed.scoring`. The result then also carries ``split``.
        on_chunk: called with the number of rows after each chunk is merged (progress bars).
    """
    if distributed is None:
        from fasttda.distributed.comm import is_active

        distributed = is_active(group)
    if distributed:
        from fasttda.distributed.scoring import score as distributed_score

        return distributed_score(queries, stores, k=k, weights=weights, normalize=normalize,
                                 preconditioner=preconditioner, chunk_rows=chunk_rows, device=device,
                                 backend=backend, split=split, group=group, query_precision=query_precision)
    multi = isinstance(stores, (list, tuple))
    store_list = list(stores) if multi else [stores]
    if isinstance(queries, (list, tuple)) != multi:
        raise TypeError("queries and stores must both be single or both be lists (one query tensor per store)")
    query_list = list(queries) if multi else [queries]
    if not store_list:
        raise ValueError("stores is empty")
    if len(query_list) != len(store_list):
        raise ValueError(f"{len(query_list)} query tensors for {len(store_list)} stores")
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
    _check_same_rows(store_list)
    device = torch.device(device) if device is not None else query_list[0].device
    query_list = _precondition(query_list, preconditioner, len(store_list), device)
    for c, (q, s) in enumerate(zip(query_list, store_list)):
        if q.dim() != 2 or q.shape[1] != s.dim:
            raise ValueError(f"queries{f'[{c}]' if multi else ''} must be [Q, {s.dim}] for its store, got {tuple(q.shape)}")

    merger = _RunningTopK(k, getattr(store_list[0], "ids_at", None))
    chunks = _aligned_chunks(store_list, chunk_rows)
    if device.type == "cuda":
        chunks = _prefetch_to_device(chunks, device)
    ok = None
    for group in chunks:
        values, local, chunk_ok = score_topk_deferred(query_list if multi else query_list[0], **_chunk_args(
            group, multi, k=k, weights=weights, normalize=normalize, query_precision=query_precision,
            backend=backend))
        ok = chunk_ok if ok is None else ok & chunk_ok  # combined on the device: no host sync per chunk
        merger.add(values, local + group[0].start, group[0])
        if on_chunk is not None:
            on_chunk(group[0].data.shape[0])
    if ok is not None and not bool(ok):  # the run's one check; on failure, find the chunk and say what is wrong
        for group in _aligned_chunks(store_list, chunk_rows):
            qs = [q.to(group[0].data.device) for q in query_list]  # the chunks as read: on the host for a GPU run
            score_topk(qs if multi else qs[0], **_chunk_args(group, multi, k=k, weights=weights, normalize=normalize,
                                                                   query_precision=query_precision, backend=backend))
        raise ValueError(NOT_FINITE)
    return merger.result(query_list[0].shape[0], device)


def _chunk_args(group, multi: bool, **kw) -> dict:
    pick = (lambda get: [get(g) for g in group]) if multi else (lambda get: get(group[0]))
    return dict(rows=pick(lambda g: g.data), scales=pick(lambda g: g.scale), norms=pick(lambda g: g.norms),
                fmt=pick(lambda g: g.fmt), **kw)


# -- stores -------------------------------------------------------------------------------
def _check_same_rows(stores) -> None:
    if len(stores) < 2:
        return
    from fasttda.store import check_compatible

    if all(hasattr(s, "ids_digest") for s in stores):
        check_compatible(stores, same_fingerprint=False, same_rows=True)
    lengths = [len(s) for s in stores]
    if len(set(lengths)) != 1:
        raise ValueError(f"stores combined in one score must hold the same rows, got lengths {lengths}")


def _aligned_chunks(stores, chunk_rows: int):
    """Tuples of one chunk per store over the same rows; the first store sets the boundaries."""
    followers = [_RangeReader(s, chunk_rows) for s in stores[1:]]
    for lead in stores[0].iter_chunks(chunk_rows):
        stop = lead.start + lead.data.shape[0]
        yield (lead, *(f.read(lead.start, stop) for f in followers))


class _Piece:
    """A chunk assembled from several (shard-bounded) chunks of one store."""

    def __init__(self, parts):
        self.start = parts[0].start
        self.fmt = parts[0].fmt
        self.data = torch.cat([p.data for p in parts])
        self.scale = None if parts[0].scale is None else torch.cat([p.scale for p in parts])
        self.norms = torch.cat([p.norms for p in parts])
        ids = [_chunk_ids(p) for p in parts]
        self.ids = None if any(i is None for i in ids) else np.concatenate(ids)


class _RangeReader:
    """Rows ``[start, stop)`` of a store, read in order: one zero-copy chunk when the
    range lies inside one of its shards, else the pieces concatenated."""

    def __init__(self, store, chunk_rows):
        self.store, self.chunk_rows = store, chunk_rows

    def read(self, start: int, stop: int):
        parts = list(self.store.iter_chunks(stop - start, start=start, stop=stop))
        return parts[0] if len(parts) == 1 else _Piece(parts)


def _chunk_ids(chunk):
    ids = getattr(chunk, "ids", None)
    if ids is None:
        return None
    if isinstance(ids, torch.Tensor):
        return ids.cpu().numpy()
    return ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=object)


# -- queries ------------------------------------------------------------------------------
def _precondition(queries, preconditioner, count, device):
    pcs = list(preconditioner) if isinstance(preconditioner, (list, tuple)) else [preconditioner] * count
    if len(pcs) != count:
        raise ValueError(f"preconditioner has {len(pcs)} entries for {count} stores")
    out = []
    for q, pc in zip(queries, pcs):
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"queries must be tensors, got {type(q).__name__}")
        if q.dim() == 2 and q.is_floating_point() and not torch.isfinite(q).all():
            raise ValueError("queries have non-finite values")
        pc = as_preconditioner(pc)
        out.append((q if pc is None else pc.apply(q)).to(device))
    return out


# -- the running top-k ----------------------------------------------------------------------
class _RunningTopK:
    """Best k (score, row) pairs seen so far: ``Q × k`` packed keys on the scoring device.

    With ``lookup`` (the first store's ``ids_at``), chunks add keys only: no host sync per
    chunk; ids are looked up once, for the final rows. Without it (a duck-typed store
    whose chunks carry their ids), each chunk's ids are gathered on the host as it goes.
    """

    def __init__(self, k: int, lookup=None):
        self.k = k
        self.lookup = lookup
        self.keys = None
        self.ids = None  # per-chunk path: numpy [Q, k]

    def add(self, values, rows, chunk) -> None:
        keys = pack_keys_at(values, rows)
        self.keys, where = merge_topk_indexed(self.keys, keys, self.k)
        if self.lookup is None:
            chunk_ids = _chunk_ids(chunk)
            ids = rows.cpu().numpy() if chunk_ids is None else chunk_ids[(rows - chunk.start).cpu().numpy()]
            if self.ids is not None:
                ids = np.concatenate((self.ids, ids), axis=1)
            self.ids = np.take_along_axis(ids, where.cpu().numpy(), axis=1)

    def result(self, n_queries: int, device) -> TopK:
        if self.keys is None:  # a store with no rows
            empty = torch.empty(n_queries, 0, device=device)
            return TopK(empty, empty.long(), np.empty((n_queries, 0), dtype=np.int64))
        values, rows = unpack_keys(self.keys)
        if self.lookup is None:
            return TopK(values, rows, self.ids)
        found = self.lookup(rows.reshape(-1).cpu())  # the one device-to-host copy of the run
        ids = np.empty(len(found), dtype=object)
        ids[:] = found
        if all(isinstance(i, (int, np.integer)) for i in found):
            ids = ids.astype(np.int64)
        return TopK(values, rows, ids.reshape(rows.shape))


# -- GPU: overlap reading + host-to-device copies with scoring -------------------------------
def _prefetch_to_device(chunk_groups, device):
    """Yield chunk groups with tensors on ``device``, staged ahead on a background thread.

    NOT YET RUN ON A GPU (written in a session without one). The thread reads each group
    (the read from the memory map happens there), copies it into pinned host buffers, then
    to the device with ``non_blocking=True`` on a side stream, and records an event; the
    main thread only makes its stream wait on that event (no host sync) when it scores the
    group. Reading and pinning group i+1 thus overlap the scoring of group i on the host as
    well as on the device. At most two groups are staged ahead of the one being scored.
    """
    copy_stream = torch.cuda.Stream(device=device)
    current = torch.cuda.current_stream(device)

    def stage(group):
        with torch.cuda.stream(copy_stream):  # the thread's current stream (and device)
            moved = [_DeviceChunk(chunk, device) for chunk in group]
            ready = torch.cuda.Event()
            ready.record(copy_stream)
        return moved, ready

    for pending in _in_background(chunk_groups, stage):
        yield _wait(pending, current)


def _in_background(items, stage, depth: int = 1):
    """Yield ``stage(item)`` for each of ``items`` in order, computed on a background thread
    that runs up to ``depth`` + 1 items ahead of the caller (bounded memory). The iterator
    ``items`` itself is consumed on that thread. An exception there is raised here, after
    the items staged before it; closing this generator early stops the thread."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if stop.is_set() or not put((stage(item), None)):
                    return
        except BaseException as exc:  # handed to the caller, raised there
            put((None, exc))
            return
        put((done, None))

    thread = threading.Thread(target=work, name="fasttda-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value, exc = slots.get()
            if exc is not None:
                raise exc
            if value is done:
                return
            yield value
    finally:
        stop.set()
        thread.join()


def _wait(pending, stream):
    moved, ready = pending
    stream.wait_event(ready)
    for chunk in moved:  # tell the caching allocator these buffers are used on `stream` too
        for t in (chunk.data, chunk.scale, chunk.norms):
            if t is not None:
                t.record_stream(stream)
    return tuple(moved)


class _DeviceChunk:
    def __init__(self, chunk, device):
        self.start, self.fmt, self._source = chunk.start, chunk.fmt, chunk
        self.data = _to_device(chunk.data, device)
        self.scale = None if chunk.scale is None else _to_device(chunk.scale, device)
        self.norms = _to_device(chunk.norms, device)

    @property
    def ids(self):  # looked up only when asked for (a FeatureStore's are looked up once, at the end)
        return _chunk_ids(self._source)


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    if t.device.type == "cuda":
        return t
    pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    pinned.copy_(t)
    return pinned.to(device, non_blocking=True)
