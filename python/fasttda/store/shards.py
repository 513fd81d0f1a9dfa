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
from fasttda.store import _fs
from fasttda.store.errors import CorruptStoreError

# numpy has no bf16/fp8: their bits go to disk as int16/uint8 and are viewed back in torch.
DISK_DTYPE = {"fp32": "<f4", "bf16": "<i2", "fp16": "<f2", "int8": "i1", "fp8_e4m3": "u1", "int4": "u1"}
TORCH_DTYPE = formats.TORCH_DTYPE
ROLE_DTYPE = {"scale": "<f4", "norms": "<f4", "ids_end": "<i8"}
SHARD_NAME = re.compile(r"^shard-(\d{6,})\.(data|scale|norms|ids|ids_end)$")


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


def parse_shard_file(name: str) -> tuple[int, str] | None:
    """``(index, role)`` of a file name the store itself generates, else None (strict)."""
    m = SHARD_NAME.match(name)
    if m is None or shard_name(int(m.group(1))) != f"shard-{m.group(1)}":
        return None
    return int(m.group(1)), m.group(2)


class ShardWriter:
    """Appends rows to one shard's files, tracking committed and pending sizes and hashes.

    Files are raw descriptors written with ``pwrite`` at the sizes tracked here, so after a
    failed write (a full disk) nothing stale stays buffered, and a rollback holds even when
    the truncation that tidies the file fails too: the next write lands at the right offset.
    """

    def __init__(self, directory: Path, index: int, roles_: tuple[str, ...], entry: dict | None = None):
        self.directory = directory
        self.name = shard_name(index)
        self.roles = roles_
        self.rows = 0
        self.sizes = {r: 0 for r in roles_}
        self.hashes = {r: hashlib.sha256() for r in roles_}
        self.created = entry is None
        self.dirty = False
        self.fds: dict[str, int] = {}
        try:
            with _fs.shard_dir(directory) as dfd:
                if entry is None:
                    self._create(dfd)
                else:
                    self._resume(dfd, entry)
        except BaseException:
            self.close()
            raise

    def path(self, role: str) -> Path:
        return self.directory / f"{self.name}.{role}"

    def _create(self, dfd: int) -> None:
        for r in self.roles:
            name = f"{self.name}.{r}"
            _fs.unlink_quietly(dfd, name)  # an uncommitted leftover: its index is past the committed shards
            self.fds[r] = _fs.open_file(dfd, self.directory, name, os.O_RDWR | os.O_CREAT | os.O_EXCL)

    def _resume(self, dfd: int, entry: dict) -> None:
        """Reopen a committed shard: cut any uncommitted tail, re-hash the committed bytes."""
        self.rows = entry["rows"]
        for r in self.roles:
            nbytes, path = entry["files"][r]["bytes"], self.path(r)
            fd = self.fds[r] = _fs.open_file(dfd, self.directory, path.name, os.O_RDWR)
            have = os.fstat(fd).st_size
            if have < nbytes:
                raise CorruptStoreError(f"shard file {path} is truncated: manifest commits {nbytes} bytes, "
                                        f"file has {have}", [str(path)])
            h = _fs.hash_fd(fd, nbytes)
            if h.hexdigest() != entry["files"][r]["sha256"]:
                raise CorruptStoreError(f"shard file {path} fails its SHA-256 checksum (bit flip or overwrite)",
                                        [str(path)])
            os.ftruncate(fd, nbytes)
            self.sizes[r] = nbytes
            self.hashes[r] = h

    def write(self, arrays: dict, rows: int) -> None:
        """Append ``rows`` rows: ``arrays`` maps each role to its values (str ids as a list)."""
        if "ids_end" in self.roles:
            encoded = [s.encode("utf-8") for s in arrays["ids"]]
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            arrays = dict(arrays, ids=np.frombuffer(b"".join(encoded), dtype=np.uint8),
                          ids_end=self.sizes["ids"] + np.cumsum(lengths))
        self.dirty = True
        for r in self.roles:
            view = memoryview(np.ascontiguousarray(arrays[r])).cast("B")
            _fs.write_all(self.fds[r], view, self.sizes[r])
            self.hashes[r].update(view)
            self.sizes[r] += view.nbytes
        self.rows += rows

    def checkpoint(self) -> tuple:
        return self.rows, dict(self.sizes), {r: h.copy() for r, h in self.hashes.items()}

    def rollback(self, state: tuple) -> None:
        """Undo writes back to ``state`` (a failed append must not leave half a batch).

        The sizes are what count (later writes go there); cutting the files is tidying, and
        a failure to cut is ignored: bytes past the committed sizes are never read, and the
        next resume cuts them.
        """
        self.rows, self.sizes, self.hashes = state[0], dict(state[1]), {r: h.copy() for r, h in state[2].items()}
        for r, fd in self.fds.items():
            try:
                os.ftruncate(fd, self.sizes[r])
            except OSError:
                pass

    def sync(self) -> None:
        for fd in self.fds.values():
            os.fsync(fd)
        self.dirty = False

    def entry(self) -> dict:
        files = {r: {"file": self.path(r).name, "bytes": self.sizes[r], "sha256": self.hashes[r].hexdigest()}
                 for r in self.roles}
        return {"name": self.name, "rows": self.rows, "files": files}

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            os.close(fd)

    def delete(self) -> None:
        """Close and remove this never-committed shard's files."""
        self.close()
        with _fs.shard_dir(self.directory) as dfd:
            for r in self.roles:
                _fs.unlink_quietly(dfd, f"{self.name}.{r}")


def remove_uncommitted(directory: Path, n_committed: int) -> bool:
    """Delete the files of shards past the ``n_committed`` committed ones (a crashed writer's).

    Only names the store itself generates are touched, only files (a link is removed, never
    followed), and never a file of a committed shard.
    """
    if not _fs.is_real_dir(directory):
        return False
    removed = False
    with _fs.shard_dir(directory) as dfd:
        for name in os.listdir(dfd):
            parsed = parse_shard_file(name)
            if parsed is not None and parsed[0] >= n_committed:
                _fs.unlink_quietly(dfd, name)
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
            nbytes = self.entry["files"][role]["bytes"]
            dtype = role_dtype(role, self.fmt, self.id_kind)
            count = nbytes // dtype.itemsize
            if count == 0:
                arr = np.empty(0, dtype=dtype)
            else:
                arr = self._map(role, dtype, count)
            if role == "data":
                arr = arr.reshape(self.rows, stored_width(self.fmt, self.dim))
            self._maps[role] = arr
        return self._maps[role]

    def _map(self, role: str, dtype: np.dtype, count: int) -> np.ndarray:
        path = self.directory / f"{self.entry['name']}.{role}"
        with _fs.shard_dir(self.directory) as dfd:
            fd = _fs.open_file(dfd, self.directory, path.name)
        with os.fdopen(fd, "rb") as f:
            have = os.fstat(fd).st_size
            if have < count * dtype.itemsize:
                raise CorruptStoreError(f"{path}: truncated, {have} bytes on disk but {count * dtype.itemsize} "
                                        "committed", [str(path)])
            return np.memmap(f, dtype=dtype, mode="c", shape=(count,))
    def tensor(self, role: str, lo: int, hi: int) -> torch.Tensor:
        t = torch.from_numpy(self.array(role)[lo:hi])
        return t.view(TORCH_DTYPE[self.fmt]) if role == "data" else t

    def ids(self, lo: int, hi: int):
        if self.id_kind == "int":
            return self.array("ids")[lo:hi]
        ends = self.array("ids_end")
        blob = self.array("ids")
        starts = np.concatenate(([0 if lo == 0 else ends[lo - 1]], ends[lo:hi - 1])) if hi > lo else []
        try:
            out = []
            for s, e in zip(starts, ends[lo:hi]):
                if not 0 <= s <= e <= blob.size:
                    raise ValueError(f"offsets [{s}, {e}) outside the {blob.size} bytes of ids")
                out.append(bytes(blob[s:e]).decode("utf-8"))
            return out
        except (ValueError, UnicodeDecodeError) as exc:
            path = self.directory / f"{self.entry['name']}.ids"
            raise CorruptStoreError(f"{path}: string ids are corrupt ({exc})", [str(path)]) from None
