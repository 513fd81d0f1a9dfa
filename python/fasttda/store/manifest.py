"""The manifest: the one file that says what a store holds, and its atomic commit.

A store is committed when ``manifest.json`` names it. Writers append to shard files first,
fsync them and their directory, and only then replace the manifest (write a temp file,
fsync, ``os.replace``, fsync the directory). A reader that loads the manifest therefore
never sees a row whose bytes are not durably on disk, and a crash at any instant leaves
either the old manifest or the new one.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from fasttda.ops.quantize import FORMATS
from fasttda.store import _fs, schema
from fasttda.store.errors import CorruptStoreError, StoreNotFoundError

FORMAT_NAME = "fasttda.feature_store"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
LOCK = "writer.lock"
ID_KINDS = schema.ID_KINDS


# -- durability helpers ----------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (new, renamed or removed files)."""
    if sys.platform == "win32":  # directories cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``obj`` as JSON so that a crash leaves the old or the new file."""
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
    _fs.write_atomic(path.parent, path.name, text)


def canonical(obj: Any) -> str:
    """One JSON spelling per value, for equality checks and hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_value(value: Any, name: str) -> Any:
    """``value`` as plain JSON (round-tripped), or a TypeError naming ``name``."""
    if value is None:
        return None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        import dataclasses

        value = dataclasses.asdict(value)
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"{name} must be JSON-serializable (dicts, lists, str, finite numbers): {exc}") from None


# -- what goes in -----------------------------------------------------------------------------
def new_manifest(dim: int, fmt: str, *, meta=None, spec=None, fingerprint=None, shard_rows: int) -> dict:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(shard_rows, int) or isinstance(shard_rows, bool) or shard_rows < 1:
        raise ValueError(f"shard_rows must be an int >= 1, got {shard_rows!r}")
    spec = json_value(spec, "spec")
    if spec is not None:
        if not isinstance(spec, dict):
            raise TypeError(f"spec must be a mapping (see fasttda.pipeline.CaptureConfig.spec), "
                            f"got {type(spec).__name__}")
        out_dim = spec.get("out_dim", dim)
        if out_dim != dim:
            raise ValueError(f"spec['out_dim']={out_dim} does not match the store's dim={dim}")
    fingerprint = json_value(fingerprint, "fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, dict) and "sha256" in fingerprint):
        raise TypeError("fingerprint must be a mapping with at least 'name' and 'sha256' "
                        "(see fasttda.store.model_fingerprint)")
    meta = json_value(meta, "meta") or {}
    for what, value in (("meta", meta), ("spec", spec), ("fingerprint", fingerprint)):
        if schema.depth(value) > schema.MAX_DEPTH:
            raise ValueError(f"{what} is nested more than {schema.MAX_DEPTH} levels deep")
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
    now = _now()
    return {
        "format": FORMAT_NAME,
        "version": VERSION,
        "dim": dim,
        "fmt": fmt,
        "byteorder": "little",
        "rows": 0,
        "shard_rows": shard_rows,
        "id_kind": None,
        "spec": spec,
        "fingerprint": fingerprint,
        "meta": meta,
        "shards": [],
        "commits": 0,
        "created": now,
        "updated": now,
        "library": _library(),
    }


def stamp(manifest: dict) -> dict:
    manifest["commits"] += 1
    manifest["updated"] = _now()
    manifest["library"] = _library()
    return manifest


# -- what comes out ---------------------------------------------------------------------------
def load_manifest(root: Path) -> dict:
    """Read ``root/manifest.json`` and check it against the schema before any field is used.

    The file is opened without following links and bounded in size; JSON that is invalid,
    nested too deep, holds NaN/Infinity, or does not fit the schema raises `CorruptStoreError`.
    """
    path = root / MANIFEST
    if not root.is_dir():
        raise StoreNotFoundError(f"no feature store at {root}: not a directory")
    try:
        with _fs.open_dir(root) as dfd:
            fd = _fs.open_file(dfd, root, MANIFEST)
            try:
                raw = _fs.read_all(fd, schema.MAX_MANIFEST_BYTES, path)
            finally:
                os.close(fd)
    except CorruptStoreError as exc:
        if str(exc).endswith(": missing"):
            raise StoreNotFoundError(f"{root} is not a fasttda feature store: {MANIFEST} is missing (a store is "
                                     "usable only once FeatureStore.create has committed it)") from None
        raise
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptStoreError(f"{path} is not valid JSON: {exc}", [str(path)]) from None
    except RecursionError:
        raise CorruptStoreError(f"{path} is not a manifest: JSON nested too deeply", [str(path)]) from None
    try:
        schema.validate(manifest, FORMAT_NAME, VERSION)
    except schema.SchemaError as exc:
        raise CorruptStoreError(f"{path}: {exc}", [str(path)]) from None
    if sys.byteorder != "little":
        raise CorruptStoreError(f"{path}: stores are little-endian; this machine is {sys.byteorder}-endian",
                                [str(path)])
    return manifest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def default_shard_rows(row_bytes: int, target_bytes: int = 1 << 30) -> int:
    """Rows per shard so that a shard's data file is about ``target_bytes`` (1 GiB)."""
    return max(1, target_bytes // max(1, row_bytes))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _library() -> str:
    from fasttda import __version__

    return f"fasttda {__version__}"
