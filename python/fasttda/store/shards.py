"""Shard files: raw row data NumPy can memory-map, their scales, norms and ids.

A shard named ``shard-000007`` is a set of files in ``<store>/shards/``, each a plain
little-endian array with no header (so ``np.memmap`` maps it with zero copy):

=============  ==============================  ==========================================
role           file                            contents
=============  ==============================  ==========================================
data           ``shard-000007.data``           ``[rows, width]`` stored rows (see DISK_DTYPE)
scale          ``shard-000007.scale``          ``[rows]`` float32, scaled formats only
norms          ``shard-000007.norms``          ``[rows]`` float32 L2 norms before quantization
ids            ``shard-000007.ids``            ``[rows]`` int64 (id_kind "int"), or the
                                               UTF-8 bytes of the ids back to back ("str")
ids_end        ``shard-000007.ids_end``        ``[rows]`` int64 end offset of each id in
                                               ``.ids`` (id_kind "str" only)
=============  ==============================  ==========================================

Files only grow: rows are appended, never rewritten, so bytes a manifest has committed
never change, and a reader mapping a committed prefix is safe while a writer appends.
The writer keeps a running SHA-256 per file, so committing costs no re-read.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from fasttda import formats
from fasttda.ops.quantize import FP8, SCALED_QMAX, stored_width
from fasttda.store.errors import CorruptStoreError

# numpy has no bf16/fp8: their bits go to disk as int16/uint8 and are viewed back in torch.
DISK_DTYPE = {"fp32": "<f4", "bf16": "<i2", "fp16": "<f2", "int8": "i1", "fp8_e4m3": "u1", "int4": "u1"}
TORCH_DTYPE = formats.TORCH_DTYPE
ROLE_DTYPE = {"scale": "<f4", "norms": "<f4", "ids_end": "<i8"}
SHARD_NAME = re.compile(r"^shard-(\d{6,})\.(data|scale|norms|ids|ids_end)$")
CHUNK = 1 << 24  # bytes per read when re-hashing a file


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def roles(fmt: str, id_kind: str | None) -> tuple[str, ...]:
    """The files a shard of this format and id kind has."""
    out = ["data"] + (["scale"] if fmt in SCALED_QMAX else []) + ["norms"]
    if id_kind == "int":
        out.append("ids")
    elif id_kind == "str":
        out += ["ids", "ids_end"]
    return tuple(out)


def role_dtype(role: str, fmt: str, id_kind: str | None) -> np.dtype:
    if role == "data":
        return np.dtype(DISK_DTYPE[fmt])
    if role == "ids":
        return np.dtype("<i8" if id_kind == "int" else "u1")
    return np.dtype(ROLE_DTYPE[role])


def expected_bytes(role: str, rows: int, fmt: str, dim: int, id_kind: str | None) -> int | None:
    """Committed size of a role's file, or None where only the manifest knows (str ids)."""
    if role == "data":
        return rows * stored_width(fmt, dim) * np.dtype(DISK_DTYPE[fmt]).itemsize
    if role == "ids" and id_kind == "str":
        return None
    return rows * role_dtype(role, fmt, id_kind).itemsize


def to_disk_array(t: torch.Tensor, fmt: str | None = None) -> np.ndarray:
    """A CPU tensor's bytes as the numpy array the file stores (no copy when contiguous)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif FP8 is not None and t.dtype == FP8:
        t = t.view(torch.uint8)
    return t.numpy()


def hash_file(path: Path, nbytes: int) -> "hashlib._Hash":
    """SHA-256 state over the first ``nbytes`` of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = nbytes
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


class ShardWriter:
    """Appends rows to one shard's files, tracking committed and pending sizes and hashes."""

    def __init__(self, directory: Path, index: int, roles_: tuple[str, ...], entry: dict | None = None):
        self.directory = directory
        self.name = shard_name(index)
        self.roles = roles_
        self.rows = 0
        self.sizes = {r: 0 for r in roles_}
        self.hashes = {r: hashlib.sha256() for r in roles_}
        self.created = entry is None
        self.dirty = False
        self.files = {}
        if entry is None:
            for r in roles_:
                self.files[r] = open(self.path(r), "wb")
        else:
            self._resume(entry)

    def path(self, role: str) -> Path:
        return self.directory / f"{self.name}.{role}"

    def _resume(self, entry: dict) -> None:
        """Reopen a committed shard: cut any uncommitted tail, re-hash the committed bytes."""
        self.rows = entry["rows"]
        for r in self.roles:
            meta = entry["files"][r]
            path = self.path(r)
            if not path.is_file() or path.stat().st_size < meta["bytes"]:
                have = path.stat().st_size if path.is_file() else "missing"
                raise CorruptStoreError(f"shard file {path} is truncated: manifest commits {meta['bytes']} bytes, "
                                        f"file has {have}", [str(path)])
            h = hash_file(path, meta["bytes"])
            if h.hexdigest() != meta["sha256"]:
                raise CorruptStoreError(f"shard file {path} fails its SHA-256 checksum (bit flip or overwrite)",
                                        [str(path)])
            f = open(path, "r+b")
            f.truncate(meta["bytes"])
            f.seek(meta["bytes"])
            self.files[r] = f
            self.sizes[r] = meta["bytes"]
            self.hashes[r] = h

    def write(self, arrays: dict, rows: int) -> None:
        """Append ``rows`` rows: ``arrays`` maps each role to its values (str ids as a list)."""
        if "ids_end" in self.roles:
            encoded = [s.encode("utf-8") for s in arrays["ids"]]
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            arrays = dict(arrays, ids=np.frombuffer(b"".join(encoded), dtype=np.uint8),
                          ids_end=self.sizes["ids"] + np.cumsum(lengths))
        for r in self.roles:
            view = memoryview(np.ascontiguousarray(arrays[r])).cast("B")
            self.files[r].write(view)
            self.hashes[r].update(view)
            self.sizes[r] += view.nbytes
        self.rows += rows
        self.dirty = True

    def checkpoint(self) -> tuple:
        return self.rows, dict(self.sizes), {r: h.copy() for r, h in self.hashes.items()}

    def rollback(self, state: tuple) -> None:
        """Undo writes back to ``state`` (a failed append must not leave half a batch)."""
        self.rows, self.sizes, self.hashes = state[0], dict(state[1]), {r: h.copy() for r, h in state[2].items()}
        for r, f in self.files.items():
            f.flush()
            f.truncate(self.sizes[r])
            f.seek(self.sizes[r])

    def sync(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
        self.dirty = False

    def entry(self) -> dict:
        files = {r: {"file": self.path(r).name, "bytes": self.sizes[r], "sha256": self.hashes[r].hexdigest()}
                 for r in self.roles}
        return {"name": self.name, "rows": self.rows, "files": files}

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}


def remove_uncommitted(directory: Path, committed: set[str]) -> bool:
    """Delete shard files no committed shard owns (a crashed writer's new shards)."""
    removed = False
    if not directory.is_dir():
        return False
    for p in directory.iterdir():
        m = SHARD_NAME.match(p.name)
        if m and f"shard-{m.group(1)}" not in committed:
            p.unlink()
            removed = True
    return removed


class ShardReader:
    """Zero-copy maps of one shard's committed rows (copy-on-write, so torch may wrap them)."""

    def __init__(self, directory: Path, entry: dict, fmt: str, dim: int, id_kind: str | None):
        self.directory = directory
        self.entry = entry
        self.rows = entry["rows"]
        self.fmt, self.dim, self.id_kind = fmt, dim, id_kind
        self._maps: dict[str, np.ndarray] = {}

    def array(self, role: str) -> np.ndarray:
        if role not in self._maps:
            meta = self.entry["files"][role]
            dtype = role_dtype(role, self.fmt, self.id_kind)
            count = meta["bytes"] // dtype.itemsize
            path = self.directory / meta["file"]
            if count == 0:
                arr = np.empty(0, dtype=dtype)
            else:
                arr = np.memmap(path, dtype=dtype, mode="c", shape=(count,))
            if role == "data":
                arr = arr.reshape(self.rows, stored_width(self.fmt, self.dim))
            self._maps[role] = arr
        return self._maps[role]

    def tensor(self, role: str, lo: int, hi: int) -> torch.Tensor:
        t = torch.from_numpy(self.array(role)[lo:hi])
        return t.view(TORCH_DTYPE[self.fmt]) if role == "data" else t

    def ids(self, lo: int, hi: int):
        if self.id_kind == "int":
            return self.array("ids")[lo:hi]
        ends = self.array("ids_end")
        blob = self.array("ids")
        starts = np.concatenate(([0 if lo == 0 else ends[lo - 1]], ends[lo:hi - 1])) if hi > lo else []
        return [bytes(blob[s:e]).decode("utf-8") for s, e in zip(starts, ends[lo:hi])]
