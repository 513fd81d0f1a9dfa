"""`FeatureStore`: an on-disk, sharded, quantized, resumable and crash-safe row store.

Layout of a store directory (all metadata JSON, all arrays raw little-endian)::

    <store>/manifest.json        the committed state: format version, dim, fmt, projection
                                 spec, model fingerprint, meta, id kind, row count, and per
                                 shard its row count and each file's size and SHA-256
    <store>/writer.lock          held (flock) by the one open writer
    <store>/shards/shard-NNNNNN.{data,scale,norms,ids,ids_end}   see fasttda.store.shards

Commit protocol: rows are appended to the shard files; ``commit()`` flushes and fsyncs
them (and the shard directory when a shard was created), then atomically replaces the
manifest. Readers map only the rows the manifest they loaded commits, so they see a
consistent prefix while a writer appends. A writer killed at any instant leaves the last
committed store; ``open(path, mode="append")`` cuts the uncommitted tail and goes on.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from fasttda.ops.quantize import FLOAT_FORMATS, SCALED_QMAX, bytes_per_row, stored_width
from fasttda.store import manifest as mf
from fasttda.store._fs import is_real_dir, writer_lock
from fasttda.store._tensors import as_float_tensor, row_norms
from fasttda.store.chunk import Chunk
from fasttda.store.errors import CorruptStoreError, StoreError
from fasttda.store.ids import ids_digest, name_rows, normalize_ids
from fasttda.store.shards import TORCH_DTYPE, ShardReader, ShardWriter, remove_uncommitted, roles, to_disk_array
from fasttda.store.verify import check_files, check_values, raise_problems

MODES = ("r", "append")
VERIFY = ("none", "size", "full")


# Rows per chunk of `FeatureStore.read`: each is converted straight into the output.
READ_ROWS = 1 << 14


class FeatureStore:
    """Rows of features on disk. Make one with `create`, reopen it with `open`."""

    def __init__(self, root: Path, manifest: dict, mode: str, lock=None):
        self.path = root
        self.mode = mode
        self._manifest = manifest
        self._lock = lock
        self._writers: list[ShardWriter] = []
        self._pending = 0
        self._ids_digest = None
        self._build_readers()

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, dim: int, fmt: str, meta: dict | None = None, *, spec=None, fingerprint=None,
               shard_rows: int | None = None) -> "FeatureStore":
        """Create an empty store at ``path`` and return it open for appending.

        Args:
            dim: feature columns per row.
            fmt: ``fp32``, ``bf16``, ``fp16``, ``int8``, ``fp8_e4m3`` or ``int4`` (see `fasttda.ops.quantize`).
            meta: any JSON-serializable dict, kept in the manifest.
            spec: what makes rows comparable, a JSON mapping (`fasttda.pipeline.CaptureConfig.spec`:
                a `fasttda.capture.Projection` plus seed and width); stores combine only when specs agree.
            fingerprint: the model fingerprint (`model_fingerprint`) of the weights behind the rows.
            shard_rows: rows per shard file; defaults to about 1 GiB of data per shard.
        """
        root = Path(path)
        if shard_rows is None:
            mf.new_manifest(dim, fmt, shard_rows=1)  # argument checks before touching the disk
            shard_rows = mf.default_shard_rows(bytes_per_row(fmt, dim))
        manifest = mf.new_manifest(dim, fmt, meta=meta, spec=spec, fingerprint=fingerprint, shard_rows=shard_rows)
        if (root / mf.MANIFEST).exists():
            raise FileExistsError(f"a feature store already exists at {root}; open it with FeatureStore.open")
        if root.exists():
            if not root.is_dir():
                raise FileExistsError(f"{root} exists and is not a directory")
            strays = {p.name for p in root.iterdir()} - {mf.SHARD_DIR, mf.LOCK, mf.MANIFEST + ".tmp"}
            if strays:
                raise FileExistsError(f"{root} is not empty (holds {sorted(strays)[:5]}); "
                                      "give a new or empty directory")
        root.mkdir(parents=True, exist_ok=True)
        lock = writer_lock(root / mf.LOCK)
        try:
            if (root / mf.MANIFEST).exists():  # another create won the race for the lock
                raise FileExistsError(f"a feature store already exists at {root}; open it with FeatureStore.open")
            shards = root / mf.SHARD_DIR
            if os.path.lexists(shards) and not is_real_dir(shards):
                raise StoreError(f"{shards} is a symlink or not a directory; a store holds no links (refused, "
                                 "nothing was deleted)")
            shards.mkdir(exist_ok=True)
            remove_uncommitted(shards, 0)  # a crashed create's leftovers
            mf.write_json_atomic(root / mf.MANIFEST, manifest)
            mf.fsync_dir(root.parent)
        except BaseException:
            lock.release()
            raise
        return cls(root, manifest, "append", lock)

    @classmethod
    def open(cls, path, mode: str = "r", *, verify: str = "size") -> "FeatureStore":
        """Open a store for reading (``mode="r"``) or to go on appending (``mode="append"``).

        ``verify``: ``"size"`` (default) checks every shard file exists and holds its
        committed bytes; ``"full"`` also re-hashes them (SHA-256); ``"none"`` skips both.
        Appending always re-hashes the shard it appends to. Problems raise
        `CorruptStoreError` naming the files.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if verify not in VERIFY:
            raise ValueError(f"verify must be one of {VERIFY}, got {verify!r}")
        root = Path(path)
        if mode == "r":
            manifest = mf.load_manifest(root)
            if verify != "none":
                raise_problems(root, check_files(root / mf.SHARD_DIR, manifest, checksums=verify == "full"))
            return cls(root, manifest, "r")
        manifest = mf.load_manifest(root)  # a clear error before taking the lock
        lock = writer_lock(root / mf.LOCK)
        try:
            manifest = mf.load_manifest(root)  # re-read under the lock
            shards = root / mf.SHARD_DIR
            raise_problems(root, check_files(shards, manifest, checksums=verify == "full"))
            store = cls(root, manifest, "append", lock)
            store._resume()
        except BaseException:
            lock.release()
            raise
        return store

    def _resume(self) -> None:
        shards = self.path / mf.SHARD_DIR
        committed = self._manifest["shards"]
        if remove_uncommitted(shards, len(committed)):
            mf.fsync_dir(shards)
        if committed and committed[-1]["rows"] < self.shard_rows:
            writer = ShardWriter(shards, len(committed) - 1, roles(self.fmt, self.id_kind), committed[-1])
            self._writers.append(writer)
            writer.sync()  # make the cut of the uncommitted tail durable too

    # -- properties ----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._manifest["dim"]

    @property
    def fmt(self) -> str:
        return self._manifest["fmt"]

    @property
    def manifest(self) -> dict:
        """A copy of the committed manifest."""
        return copy.deepcopy(self._manifest)

    @property
    def spec(self) -> dict | None:
        return copy.deepcopy(self._manifest["spec"])

    @property
    def fingerprint(self) -> dict | None:
        return copy.deepcopy(self._manifest["fingerprint"])

    @property
    def meta(self) -> dict:
        return copy.deepcopy(self._manifest["meta"])

    @property
    def id_kind(self) -> str | None:
        """``"index"`` (ids are row indices), ``"int"``, ``"str"``, or None before the first append."""
        return self._manifest["id_kind"]

    @property
    def shard_rows(self) -> int:
        return self._manifest["shard_rows"]

    @property
    def num_pending(self) -> int:
        """Rows appended but not yet committed (they are not in ``len`` nor readable)."""
        return self._pending

    def __len__(self) -> int:
        """Committed rows."""
        return self._manifest["rows"]

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, rows={len(self)}, dim={self.dim}, fmt={self.fmt!r}, "
                f"mode={self.mode!r}{f', pending={self._pending}' if self._pending else ''})")

    # -- writing -------------------------------------------------------------------------------
    def append(self, features, ids=None) -> None:
        """Quantize and append rows ``[n, dim]`` (torch or numpy; float32, float64, float16 or
        bfloat16), with optional ids.

        ``ids``: a 1-D sequence of n ints or n strings (not a mix; strings valid UTF-8), fixed
        per store by its first successful append; None means running row indices. Rows with
        NaN/inf (or float64 beyond float32's range) are rejected by id, nothing is written.
        Rows become visible at the next `commit`. If writing fails (e.g. ``OSError`` ENOSPC),
        this batch is undone and rows appended before it stay pending.
        """
        self._check_writer()
        x = as_float_tensor(features)
        if x.dim() != 2:
            raise ValueError(f"features must be a 2-D floating array [n, {self.dim}], got {x.dtype} {tuple(x.shape)}")
        self._check_dim(x.shape[1])
        id_kind, id_values = self._normalize_ids(ids, x.shape[0])
        norms = row_norms(x)
        if x.dtype != torch.float32:  # float64 beyond float32's range becomes inf here, and is refused below
            x = x.to(torch.float32)
            norms = torch.where(torch.isfinite(x).all(dim=1), norms, torch.full_like(norms, float("inf")))
        bad = (~torch.isfinite(norms)).nonzero().flatten().tolist()  # NaN/inf rows, nothing else
        if bad:
            raise ValueError(f"features hold NaN or inf (or a norm beyond float32) in {len(bad)} row(s); rejected, "
                             f"nothing was appended. Offending ids: {self._name_rows(bad, id_values)}")
        if x.shape[0] == 0:
            return
        from fasttda.ops.quantize import quantize

        data, scale = quantize(x, self.fmt)
        self._write(id_kind, data, scale, norms, id_values)

    def append_quantized(self, data: torch.Tensor, scale: torch.Tensor | None, norms: torch.Tensor,
                         ids=None) -> None:
        """Append rows already in the store's format (e.g. from `fasttda.ops.project_quantized`)."""
        self._check_writer()
        expected = TORCH_DTYPE[self.fmt]
        allowed = (expected, torch.uint8) if self.fmt == "fp8_e4m3" else (expected,)
        if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.dtype not in allowed:
            raise TypeError(f"data must be a 2-D {expected} tensor for fmt={self.fmt!r}, got "
                            f"{getattr(data, 'dtype', type(data).__name__)} {tuple(getattr(data, 'shape', ()))}")
        n = data.shape[0]
        if data.shape[1] != stored_width(self.fmt, self.dim):
            raise ValueError(f"data has {data.shape[1]} stored columns; fmt={self.fmt!r} at dim={self.dim} needs "
                             f"{stored_width(self.fmt, self.dim)}")
        id_kind, id_values = self._normalize_ids(ids, n)
        for name, t, needed in (("scale", scale, self.fmt in SCALED_QMAX), ("norms", norms, True)):
            if not needed:
                if t is not None:
                    raise ValueError(f"scale must be None for fmt={self.fmt!r}")
                continue
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (n,):
                raise TypeError(f"{name} must be a float32 tensor [{n}], got "
                                f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
            bad = (~(torch.isfinite(t) & (t >= 0))).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"{name} is non-finite or negative in {len(bad)} row(s); nothing was appended. "
                                 f"Offending ids: {self._name_rows(bad, id_values)}")
        if self.fmt in FLOAT_FORMATS or self.fmt == "fp8_e4m3":
            values = data.view(TORCH_DTYPE[self.fmt]) if data.dtype == torch.uint8 else data
            bad = (~torch.isfinite(values.float()).all(dim=1)).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"data holds NaN or inf in {len(bad)} row(s); nothing was appended. "
                                 f"Offending ids: {self._name_rows(bad, id_values)}")
        if n:
            self._write(id_kind, data, scale, norms, id_values)

    def _write(self, id_kind, data, scale, norms, id_values) -> None:
        """Write a checked batch to the shards; on any error (a full disk) undo all of it."""
        n = data.shape[0]
        arrays = {"data": to_disk_array(data), "norms": to_disk_array(norms)}
        if scale is not None:
            arrays["scale"] = to_disk_array(scale.to(torch.float32))
        if id_values is not None:
            arrays["ids"] = id_values
        n_writers = len(self._writers)
        state = self._writers[-1].checkpoint() if self._writers else None
        try:
            pos = 0
            while pos < n:
                writer = self._open_writer(id_kind)
                take = min(n - pos, self.shard_rows - writer.rows)
                writer.write({r: arrays[r][pos:pos + take] for r in writer.roles if r != "ids_end"}, take)
                pos += take
        except BaseException:
            self._drop_writers(n_writers)
            if state is not None:
                self._writers[-1].rollback(state)
            raise
        self._manifest["id_kind"] = id_kind  # only once rows carrying it are written
        self._pending += n

    def _open_writer(self, id_kind: str) -> ShardWriter:
        if self._writers and self._writers[-1].rows < self.shard_rows:
            return self._writers[-1]
        writer = ShardWriter(self.path / mf.SHARD_DIR, self._next_shard_index(), roles(self.fmt, id_kind))
        self._writers.append(writer)
        return writer

    def _next_shard_index(self) -> int:
        names = {e["name"] for e in self._manifest["shards"]} | {w.name for w in self._writers}
        return len(names)

    def _drop_writers(self, keep: int) -> None:
        """Close and delete the shards opened after the first ``keep`` writers (never committed)."""
        dropped, self._writers[keep:] = self._writers[keep:], []
        for writer in dropped:
            try:
                writer.delete()
            except OSError:  # left for the next open(mode="append") to remove: their index is uncommitted
                writer.close()

    def commit(self) -> None:
        """Make every appended row durable and visible: fsync the shards, then replace the manifest.

        If this raises (e.g. ``OSError`` ENOSPC on a full disk), every pending row is dropped
        and the store stays as it was at the last commit, open for appending: append those
        rows again. (An fsync that failed once cannot be trusted to have written them.) The
        one exception: if only the final fsync of the directory failed, the new manifest is
        already in place, the rows are committed and ``len(self)`` counts them.
        """
        self._check_writer()
        if not self._pending:
            return
        try:
            self._sync_shards()
        except BaseException:
            self._discard_pending()
            raise
        entries = {e["name"]: e for e in self._manifest["shards"]}
        for writer in self._writers:
            entries[writer.name] = writer.entry()
        manifest = copy.deepcopy(self._manifest)
        manifest["shards"] = [entries[k] for k in sorted(entries)]
        manifest["rows"] = sum(e["rows"] for e in manifest["shards"])
        try:
            mf.write_json_atomic(self.path / mf.MANIFEST, mf.stamp(manifest))
        except BaseException as exc:
            if getattr(exc, "manifest_replaced", False):  # only the directory's fsync failed: committed
                self._adopt(manifest)
            else:  # the last commit stands
                self._discard_pending()
            raise
        self._adopt(manifest)

    def _sync_shards(self) -> None:
        created = False
        for writer in self._writers:
            if writer.dirty:
                writer.sync()
            created |= writer.created
        if created:
            mf.fsync_dir(self.path / mf.SHARD_DIR)

    def _adopt(self, manifest: dict) -> None:
        self._manifest = manifest
        self._pending = 0
        for writer in self._writers:
            writer.created = False
        for writer in self._writers[:-1]:
            writer.close()
        del self._writers[:-1]
        self._build_readers()

    def close(self) -> None:
        """Release the writer lock. Uncommitted rows are discarded (with a warning)."""
        if self.mode != "append" or self._lock is None:
            return
        if self._pending:
            warnings.warn(f"{self.path}: {self._pending} uncommitted row(s) discarded at close; call commit() "
                          "to keep them", stacklevel=2)
            self._discard_pending()
        for writer in self._writers:
            writer.close()
        self._writers = []
        self._lock.release()
        self._lock = None

    def _discard_pending(self) -> None:
        """Cut every file back to its committed size and delete never-committed shards."""
        committed = {e["name"]: e for e in self._manifest["shards"]}
        self._drop_writers(sum(1 for w in self._writers if w.name in committed))
        for writer in self._writers:
            entry = committed[writer.name]
            for r, fd in writer.fds.items():
                try:
                    os.ftruncate(fd, entry["files"][r]["bytes"])
                except OSError:  # bytes past the committed size are never read; the next resume cuts them
                    pass
            writer.close()
        self._writers = []
        self._pending = 0
        if not self._manifest["rows"]:
            self._manifest["id_kind"] = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Commit on a clean exit; on an exception keep only what was committed before it."""
        if self.mode == "append" and self._lock is not None:
            if exc_type is None:
                self.commit()
            else:
                self._discard_pending()
        self.close()

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Reload the manifest (readers see rows committed since they opened); returns ``len``."""
        if self.mode == "r":
            self._manifest = mf.load_manifest(self.path)
            self._build_readers()
        return len(self)

    def iter_chunks(self, rows: int = 65536, start: int = 0, stop: int | None = None):
        """Yield `Chunk` s of at most ``rows`` committed rows covering ``[start, stop)``.

        Chunks never cross a shard boundary (so each is a zero-copy view of one memory
        map); a chunk may therefore be shorter than ``rows`` at a shard's end.
        """
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise ValueError(f"rows must be an int >= 1, got {rows!r}")
        start, stop = self._range(start, stop)
        for reader, s0 in zip(self._readers, self._starts):
            lo_shard, hi_shard = max(start, s0), min(stop, s0 + reader.rows)
            for lo in range(lo_shard, hi_shard, rows):
                hi = min(lo + rows, hi_shard)
                a, b = lo - s0, hi - s0
                scale = reader.tensor("scale", a, b) if self.fmt in SCALED_QMAX else None
                yield Chunk(lo, reader.tensor("data", a, b), scale, reader.tensor("norms", a, b), self.fmt, self)

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Committed rows ``[start, stop)`` dequantized to float32 ``[n, dim]``."""
        start, stop = self._range(start, stop)
        out = torch.empty(stop - start, self.dim, dtype=torch.float32)
        for c in self.iter_chunks(READ_ROWS, start, stop):
            c.dequantize(out=out[c.start - start:c.stop - start])
        return out

    def norms(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Float32 L2 norms of rows ``[start, stop)`` before quantization."""
        start, stop = self._range(start, stop)
        parts = [c.norms for c in self.iter_chunks(1 << 20, start, stop)]
        return torch.cat(parts).clone() if parts else torch.empty(0)

    def ids(self, start: int = 0, stop: int | None = None):
        """Ids of rows ``[start, stop)``: an int64 array, or a list of str for string ids."""
        start, stop = self._range(start, stop)
        if self.id_kind in (None, "index"):
            return np.arange(start, stop, dtype=np.int64)
        parts = []
        for reader, s0 in zip(self._readers, self._starts):
            lo, hi = max(start, s0), min(stop, s0 + reader.rows)
            if lo < hi:
                parts.append(reader.ids(lo - s0, hi - s0))
        if self.id_kind == "int":
            return np.concatenate(parts) if parts else np.empty(0, np.int64)
        return [s for part in parts for s in part]

    def ids_at(self, rows) -> list:
        """Ids of the given global row indices (e.g. a top-k result), as a list."""
        idx = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row indices must be in [0, {len(self)}), got min {idx.min()} max {idx.max()}")
        if self.id_kind in (None, "index"):
            return idx.tolist()
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        out = []
        for i, s in zip(idx.tolist(), shard.tolist()):
            local = i - int(self._starts[s])
            got = self._readers[s].ids(local, local + 1)
            out.append(got[0].item() if self.id_kind == "int" else got[0])
        return out

    def ids_digest(self) -> str:
        """SHA-256 of the ids in row order, independent of how rows are sharded."""
        if self._ids_digest is None:
            self._ids_digest = ids_digest(self._readers, self.id_kind, len(self))
        return self._ids_digest

    def verify(self) -> dict:
        """Re-hash every committed byte and check stored values; raise `CorruptStoreError` naming the files.

        Returns a summary ``{"rows", "shards", "bytes"}`` when the store is sound.
        """
        problems = check_files(self.path / mf.SHARD_DIR, self._manifest, checksums=True)
        if not problems:
            problems = check_values(self)
        raise_problems(self.path, problems)
        nbytes = sum(m["bytes"] for e in self._manifest["shards"] for m in e["files"].values())
        return {"rows": len(self), "shards": len(self._manifest["shards"]), "bytes": nbytes}

    # -- helpers -------------------------------------------------------------------------------
    def _build_readers(self) -> None:
        shards = self.path / mf.SHARD_DIR
        entries = self._manifest["shards"]
        self._readers = [ShardReader(shards, e, self.fmt, self.dim, self.id_kind) for e in entries]
        self._starts = np.cumsum([0] + [e["rows"] for e in entries])[:-1].astype(np.int64)
        self._ids_digest = None

    def _range(self, start, stop) -> tuple[int, int]:
        n = len(self)
        stop = n if stop is None else stop
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= n):
            raise IndexError(f"need 0 <= start <= stop <= {n} (committed rows), got start={start!r} stop={stop!r}")
        return start, stop

    def _check_writer(self) -> None:
        if self.mode != "append":
            raise StoreError(f"{self.path} is open read-only; use FeatureStore.open(path, mode='append') to append")
        if self._lock is None:
            raise StoreError(f"{self.path}: this writer was closed")

    def _check_dim(self, d: int) -> None:
        if d != self.dim:
            raise ValueError(f"features have dim {d}, but the store at {self.path} holds rows of dim {self.dim}")

    def _normalize_ids(self, ids, n: int):
        return normalize_ids(ids, n, self.id_kind)

    def _name_rows(self, bad: list[int], id_values) -> str:
        return name_rows(bad, id_values, len(self) + self._pending)
