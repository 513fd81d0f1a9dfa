"""Checks on stores: files against the manifest (sizes, SHA-256), values, and compatibility.

``open`` runs the cheap size check on every shard file (catches truncation and missing
files); ``verify()`` re-hashes every committed byte (catches bit flips) and checks that
no non-finite scale, norm or float value was stored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fasttda.store.errors import CorruptStoreError, IncompatibleStoresError
from fasttda.store.shards import expected_bytes, hash_file, roles

VALUE_CHUNK_ROWS = 1 << 16


def check_files(directory: Path, manifest: dict, *, checksums: bool) -> list[str]:
    """Problems with the shard files of ``manifest`` (empty when they are sound)."""
    fmt, dim, id_kind = manifest["fmt"], manifest["dim"], manifest.get("id_kind")
    problems = []
    for shard in manifest["shards"]:
        want_roles = set(roles(fmt, id_kind))
        if set(shard["files"]) != want_roles:
            problems.append(f"{shard.get('name')}: manifest lists files {sorted(shard['files'])}, "
                            f"expected {sorted(want_roles)}")
            continue
        for role, meta in shard["files"].items():
            path = directory / meta["file"]
            want = expected_bytes(role, shard["rows"], fmt, dim, id_kind)
            if want is not None and meta["bytes"] != want:
                problems.append(f"{path}: manifest records {meta['bytes']} bytes, {shard['rows']} rows need {want}")
                continue
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            size = path.stat().st_size
            if size < meta["bytes"]:
                problems.append(f"{path}: truncated, {size} bytes on disk but {meta['bytes']} committed")
            elif checksums and hash_file(path, meta["bytes"]).hexdigest() != meta["sha256"]:
                problems.append(f"{path}: SHA-256 mismatch (bit flip or overwrite)")
    return problems


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
