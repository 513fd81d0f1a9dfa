"""Checks on stores: files against the manifest (sizes, SHA-256), values, and compatibility.

``open`` runs the cheap size check on every shard file (catches truncation and missing
files); ``verify()`` re-hashes every committed byte (catches bit flips) and checks that
no non-finite scale, norm or float value was stored.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fasttda.store.errors import CorruptStoreError, IncompatibleStoresError
from fasttda.store import _fs

VALUE_CHUNK_ROWS = 1 << 16


def check_files(directory: Path, manifest: dict, *, checksums: bool) -> list[str]:
    """Problems with the shard files of a schema-checked ``manifest`` (empty when they are sound).

    ``shards/`` and each file must be real (a link is refused, never followed) and hold at
    least its committed bytes; with ``checksums`` those bytes must match their SHA-256.
    """
    if not manifest["shards"]:
        return []
    problems = []
    try:
        with _fs.shard_dir(directory) as dfd:
            for shard in manifest["shards"]:
                for role, meta in shard["files"].items():
                    problems += _check_file(dfd, directory, f"{shard['name']}.{role}", meta, checksums)
    except FileNotFoundError:
        return [f"{directory}: missing"]
    except CorruptStoreError as exc:
        return [str(exc)]
    return problems


def _check_file(dfd: int, directory: Path, name: str, meta: dict, checksums: bool) -> list[str]:
    try:
        fd = _fs.open_file(dfd, directory, name)
    except CorruptStoreError as exc:
        return [str(exc)]
    try:
        size = os.fstat(fd).st_size
        if size < meta["bytes"]:
            return [f"{directory / name}: truncated, {size} bytes on disk but {meta['bytes']} committed"]
        if checksums and _fs.hash_fd(fd, meta["bytes"]).hexdigest() != meta["sha256"]:
            return [f"{directory / name}: SHA-256 mismatch (bit flip or overwrite)"]
        return []
    finally:
        os.close(fd)


def check_values(store) -> list[str]:
    """Non-finite or negative scales/norms, non-finite float rows, bad id offsets."""
    problems = []
    for reader in store._readers:
        name = reader.entry["name"]
        for role in ("scale", "norms"):
            if role in reader.entry["files"]:
                a = reader.array(role)
                if not (np.isfinite(a).all() and (a >= 0).all()):
                    problems.append(f"{name}.{role}: non-finite or negative values")
        if store.fmt in ("fp32", "bf16", "fp16", "fp8_e4m3"):
            for lo in range(0, reader.rows, VALUE_CHUNK_ROWS):
                data = reader.tensor("data", lo, min(reader.rows, lo + VALUE_CHUNK_ROWS))
                if not bool(data.float().isfinite().all()):
                    problems.append(f"{name}.data: non-finite values in rows [{lo}, {lo + VALUE_CHUNK_ROWS})")
                    break
        if store.id_kind == "str" and reader.rows:
            ends = reader.array("ids_end")
            if (np.diff(ends, prepend=0) < 0).any() or ends[-1] != reader.array("ids").size:
                problems.append(f"{name}.ids_end: offsets are not increasing or do not end at the ids' size")
            else:
                try:
                    for lo in range(0, reader.rows, VALUE_CHUNK_ROWS):
                        reader.ids(lo, min(reader.rows, lo + VALUE_CHUNK_ROWS))
                except CorruptStoreError as exc:
                    problems.append(str(exc))
    return problems


def raise_problems(root: Path, problems: list[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise CorruptStoreError(f"feature store {root} is corrupt ({len(problems)} problem(s)):\n  {shown}", problems)


def check_compatible(stores, *, same_fingerprint: bool = True, same_rows: bool = False) -> None:
    """Raise `IncompatibleStoresError` naming every difference that forbids combining ``stores``.

    Stores scored together must share ``dim`` and the projection spec. ``same_fingerprint``
    (row-wise parts of one training set, from one model) also requires the same model
    fingerprint; turn it off to combine checkpoints of one run (DDA). ``same_rows``
    (column-wise combination, one store per checkpoint) requires equal row counts and ids.
    """
    stores = list(stores)
    if len(stores) < 2:
        return
    first = stores[0]
    fields = [("dim", lambda s: s.dim), ("spec", lambda s: s.spec)]
    if same_fingerprint:
        fields.append(("fingerprint", lambda s: s.fingerprint))
    if same_rows:
        fields += [("row count", len), ("ids", lambda s: s.ids_digest())]
    differences = []
    for other in stores[1:]:
        for label, get in fields:
            a, b = get(first), get(other)
            if a != b:
                differences.append(f"{label} differs: {first.path} has {_describe(a, b)[0]}, "
                                   f"{other.path} has {_describe(a, b)[1]}")
    if differences:
        raise IncompatibleStoresError("stores cannot be combined:\n  " + "\n  ".join(differences))


def _describe(a, b) -> tuple[str, str]:
    """Short renderings of two differing values; for dicts, only the keys that differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return (", ".join(f"{k}={a.get(k)!r}" for k in keys), ", ".join(f"{k}={b.get(k)!r}" for k in keys))
    return repr(a), repr(b)
