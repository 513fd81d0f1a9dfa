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
from fasttda.store.errors import CorruptStoreError

FORMAT_NAME = "fasttda.feature_store"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
LOCK = "writer.lock"
ID_KINDS = ("index", "int", "str")


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
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


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
    except (TypeError, ValueError) as exc:
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
            raise TypeError(f"spec must be a mapping (see fasttda.pipeline.CaptureConfig.spec), got {type(spec).__name__}")
        out_dim = spec.get("out_dim", dim)
        if out_dim != dim:
            raise ValueError(f"spec['out_dim']={out_dim} does not match the store's dim={dim}")
    fingerprint = json_value(fingerprint, "fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, dict) and "sha256" in fingerprint):
        raise TypeError("fingerprint must be a mapping with at least 'name' and 'sha256' "
                        "(see fasttda.store.model_fingerprint)")
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
        "meta": json_value(meta, "meta") or {},
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
    """Read and check ``root/manifest.json``; a clear error when it is absent or malformed."""
    path = root / MANIFEST
    if not root.is_dir():
        raise FileNotFoundError(f"no feature store at {root}: not a directory")
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a fasttda feature store: {MANIFEST} is missing "
                                "(a store is usable only once FeatureStore.create has committed it)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStoreError(f"{path} is not valid JSON: {exc}", [str(path)]) from None
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(m: Any, path: Path) -> None:
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise CorruptStoreError(f"{path} is not a fasttda feature-store manifest", [str(path)])
    if m.get("version") != VERSION:
        raise CorruptStoreError(f"{path} has format version {m.get('version')!r}; this fasttda reads version "
                                f"{VERSION}", [str(path)])
    if m.get("byteorder") != "little" or sys.byteorder != "little":
        raise CorruptStoreError(f"{path}: stores are little-endian; this machine is {sys.byteorder}-endian",
                                [str(path)])
    required = {"dim": int, "fmt": str, "rows": int, "shard_rows": int, "shards": list}
    for key, typ in required.items():
        if not isinstance(m.get(key), typ):
            raise CorruptStoreError(f"{path}: field {key!r} is missing or not {typ.__name__}", [str(path)])
    if m["fmt"] not in FORMATS or m.get("id_kind") not in ID_KINDS + (None,):
        raise CorruptStoreError(f"{path}: unknown fmt {m['fmt']!r} or id_kind {m.get('id_kind')!r}", [str(path)])
    total = 0
    for shard in m["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("rows"), int)
                and isinstance(shard.get("files"), dict)):
            raise CorruptStoreError(f"{path}: malformed shard entry {shard!r}", [str(path)])
        total += shard["rows"]
    if total != m["rows"]:
        raise CorruptStoreError(f"{path}: shards hold {total} rows but the manifest says {m['rows']}", [str(path)])


def default_shard_rows(row_bytes: int, target_bytes: int = 1 << 30) -> int:
    """Rows per shard so that a shard's data file is about ``target_bytes`` (1 GiB)."""
    return max(1, target_bytes // max(1, row_bytes))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _library() -> str:
    from fasttda import __version__

    return f"fasttda {__version__}"
