"""Bring LESS gradient features into a `FeatureStore`, safely and resumably.

LESS (Xia et al., 2024) writes projected gradients as ``<dir>/dim<k>/grads-<n>.pt`` shards
(and a merged ``all_orig.pt``) with ``torch.save``. Those files are pickles: they are read
here with ``torch.load(weights_only=True)`` only, so a shard holding anything but tensors is
refused rather than executed. Shards are appended in numeric order and committed one by one,
so an interrupted import resumes where it stopped (rows already in the store are skipped).

Once imported, LESS's cosine selection is ``fasttda.score(queries, [store], k=..., normalize=True)``
over the stored rows, streamed and top-k'd instead of sorted in full.
"""
from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import torch

from fasttda.store import FeatureStore

_SHARD = re.compile(r"^grads-(\d+)\.pt$")


def less_shards(path) -> list[Path]:
    """The LESS gradient files under ``path`` in row order: ``grads-<n>.pt`` by n, else ``all_orig.pt``."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"path={str(path)!r}: no such LESS gradient file or directory")
    shards = sorted((p for p in path.iterdir() if _SHARD.match(p.name)), key=lambda p: int(_SHARD.match(p.name)[1]))
    if shards:
        return shards
    merged = path / "all_orig.pt"
    if merged.is_file():
        return [merged]
    raise FileNotFoundError(f"path={str(path)!r} holds no grads-<n>.pt shards and no all_orig.pt")


def load_less_tensor(file: Path) -> torch.Tensor:
    """One LESS shard as a ``[n, k]`` float tensor, loaded without unpickling arbitrary objects."""
    try:
        value = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{file}: refused, it holds objects other than tensors ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as exc:  # a truncated or damaged file
        raise ValueError(f"{file}: not a readable torch file, truncated or damaged "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
        raise ValueError(f"{file}: expected a 2-D floating tensor [rows, dim], got "
                         f"{getattr(value, 'shape', type(value).__name__)}")
    return value


def source_record(shards: list[Path]) -> list[dict]:
    """What an import reads: each file's name, size and SHA-256, in row order."""
    record = []
    for file in shards:
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        record.append({"file": file.name, "bytes": file.stat().st_size, "sha256": h.hexdigest()})
    return record


def import_less_grads(path, store_path, *, fmt: str = "fp16", meta: dict | None = None) -> FeatureStore:
    """Append LESS gradient shards under ``path`` to the store at ``store_path`` (created if absent).

    Returns the store opened for reading. The store's meta records the files imported
    (names, sizes, SHA-256); re-running with the same files after an interruption resumes
    where it stopped, and re-running with any other files is refused.
    """
    shards = less_shards(path)
    store_path = Path(store_path)
    record = source_record(shards)
    first = load_less_tensor(shards[0])
    if (store_path / "manifest.json").is_file():
        store = FeatureStore.open(store_path, mode="append")
        try:
            _check_same_sources(store, store_path, path, record)
            if store.dim != first.shape[1]:
                raise ValueError(f"store at {store_path} has dim {store.dim}, LESS shards have dim {first.shape[1]}")
        except BaseException:
            store.close()
            raise
    else:
        info = {**(meta or {}), "source": "LESS", "files": record}
        store = FeatureStore.create(store_path, first.shape[1], fmt, meta=info)
    with store:
        done, seen = len(store), 0
        for file in shards:
            rows = first if file == shards[0] else load_less_tensor(file)
            if rows.shape[1] != store.dim:
                raise ValueError(f"{file}: dim {rows.shape[1]} differs from the first shard's {store.dim}")
            skip = min(max(done - seen, 0), rows.shape[0])
            if skip < rows.shape[0]:
                store.append(rows[skip:], ids=list(range(seen + skip, seen + rows.shape[0])))
                store.commit()
            seen += rows.shape[0]
    return FeatureStore.open(store_path)


def _check_same_sources(store: FeatureStore, store_path: Path, path, record: list[dict]) -> None:
    """Resume only from exactly the files the store was filled from (else rows would be skipped wrongly)."""
    old = store.meta.get("files")
    if store.meta.get("source") != "LESS" or not isinstance(old, list) or not all(isinstance(f, dict) for f in old):
        raise ValueError(f"store at {store_path} has no record of LESS files imported into it; import {path} "
                         "into a new store")
    if old == record:
        return
    names = [f.get("file") for f in old]
    for i, (a, b) in enumerate(zip(old, record)):
        if a != b:
            what = "another file" if a.get("file") != b["file"] else "the same name with other contents"
            raise ValueError(f"store at {store_path} was imported from other LESS files: file {i + 1} was "
                             f"{a.get('file')}, {path} has {what} ({b['file']}); refusing to resume, use a new "
                             "store")
    raise ValueError(f"store at {store_path} was imported from {len(old)} LESS file(s) ({', '.join(map(str, names))}); "
                     f"{path} holds {len(record)}; refusing to resume from different files, use a new store")
