"""`ForeignIndex`: another tool's index scored in place by `fasttda.score`, with no copy on disk.

    from fasttda.integrations.foreign import ForeignIndex
    index = ForeignIndex.open("trak:results/save_dir")          # or bergson:DIR, dattri-llm:DIR
    top = fasttda.score(target_features, index, k=10)          # the same one-pass scorer and top-k

A read-only view with the chunk interface `fasttda.score` streams from (``dim``, ``fmt``,
``len``, ``iter_chunks``, ``ids_at``): each chunk's rows are a zero-copy float16 / bfloat16 /
float32 view of the tool's own memory map, and its fp32 row norms (for ``normalize=True``)
are computed as the chunk is read. What lies where, and what is checked before a byte is
read (sizes, offsets, shapes, dtypes from the tool's metadata; no file outside the folder),
is in `fasttda.integrations.sources`.

In place where the format allows:

* TRAK ``features.mmap`` / ``grads.mmap`` and Bergson ``gradients.bin``: rows are views.
* dattri-llm per-rank memmaps: rows are views when a record holds one layer; a record of
  several layers stores them apart, so each chunk's rows are assembled in memory from them
  (still nothing written, nothing imported).
* LESS ``.pt`` shards: not in place. They are zip archives of pickled tensors; fasttda never
  unpickles, it reads them with ``torch.load(weights_only=True)``, which is a copy, so
  ``fasttda import less`` them once. float64 indexes are refused too (not a score format).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from fasttda.integrations.sources import SOURCES, Source

FMT_OF = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class ForeignChunk:
    """Rows ``[start, start + len)`` of a foreign index, as `fasttda.score` takes them."""

    scale = None

    def __init__(self, start: int, data: torch.Tensor, fmt: str, ids):
        self.start, self.data, self.fmt, self._ids = start, data, fmt, ids

    @cached_property
    def norms(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.data, dim=1, dtype=torch.float32)

    @property
    def ids(self):
        return self._ids() if self._ids is not None else np.arange(self.start, self.start + self.data.shape[0])

    def dequantize(self) -> torch.Tensor:
        return self.data.to(torch.float32)


class ForeignIndex:
    """A TRAK, Bergson or dattri-llm index as a read-only, score-able view (see the module doc)."""

    def __init__(self, source: Source):
        if source.in_place is not None:
            raise ValueError(f"{source.path}: cannot be scored in place: {source.in_place}")
        if source.dtype not in FMT_OF:
            raise ValueError(f"{source.path}: {source.dtype} rows are not a score format")
        self.source, self.kind, self.path = source, source.kind, source.path
        self.dim, self.fmt = source.dim, FMT_OF[source.dtype]
        self._starts = np.cumsum([0] + [s.n for s in source.segments])

    @classmethod
    def open(cls, spec, **options) -> "ForeignIndex":
        """``"KIND:PATH"`` (``trak``, ``bergson``, ``dattri-llm``), or ``open(KIND, PATH)``;
        ``options``: TRAK's ``model_id`` and ``array`` (``"features"`` or ``"grads"``)."""
        kind, sep, path = str(spec).partition(":")
        if not sep or kind not in SOURCES:
            raise ValueError(f"index must be KIND:PATH with KIND one of {sorted(SOURCES)}, got {spec!r}")
        return cls(SOURCES[kind](Path(path), **options))

    def __len__(self) -> int:
        return self.source.n

    def __repr__(self) -> str:
        return f"ForeignIndex({self.kind}:{self.path}, rows={len(self)}, dim={self.dim}, fmt={self.fmt})"

    def __enter__(self) -> "ForeignIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release beyond the maps, which close with the last reference."""

    # -- what fasttda.score reads ---------------------------------------------------------------
    def iter_chunks(self, rows: int = 65536, start: int = 0, stop: int | None = None):
        """`ForeignChunk` s of at most ``rows`` rows over ``[start, stop)``, never across a segment."""
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise ValueError(f"rows must be an int >= 1, got {rows!r}")
        start, stop = self._range(start, stop)
        for seg, s0 in zip(self.source.segments, self._starts):
            lo_seg, hi_seg = max(start, s0), min(stop, s0 + seg.n)
            for lo in range(lo_seg, hi_seg, rows):
                hi = min(lo + rows, hi_seg)
                a, b = int(lo - s0), int(hi - s0)
                ids = None if seg.ids(0, 0) is None else (lambda seg=seg, a=a, b=b: np.asarray(seg.ids(a, b),
                                                                                             dtype=object))
                yield ForeignChunk(int(lo), seg.rows(a, b), self.fmt, ids)

    def ids(self, start: int = 0, stop: int | None = None):
        """Row ids: the tool's own (dattri-llm's sample hashes), else running row numbers."""
        start, stop = self._range(start, stop)
        parts = [c.ids for c in self.iter_chunks(1 << 16, start, stop)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def ids_at(self, rows) -> list:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range for {len(self)} rows")
        seg_of = np.searchsorted(self._starts, rows, side="right") - 1
        out = []
        for r, s in zip(rows.tolist(), seg_of.tolist()):
            local = r - int(self._starts[s])
            got = self.source.segments[s].ids(local, local + 1)
            out.append(r if got is None else got[0])
        return out

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``[start, stop)`` as float32 ``[n, dim]`` (a copy)."""
        parts = [c.dequantize() for c in self.iter_chunks(1 << 16, *self._range(start, stop))]
        return torch.cat(parts) if parts else torch.empty(0, self.dim)

    def norms(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        parts = [c.norms for c in self.iter_chunks(1 << 16, *self._range(start, stop))]
        return torch.cat(parts) if parts else torch.empty(0)

    def _range(self, start, stop) -> tuple[int, int]:
        n = len(self)
        stop = n if stop is None else stop
        if not (0 <= start <= stop <= n):
            raise IndexError(f"rows [{start}, {stop}) out of range for {n} rows")
        return start, stop
