"""The manifest's schema, checked in full before any field of a loaded manifest is used.

A manifest may come from anywhere (a copied, damaged or crafted store), so nothing in it is
trusted: every count is a non-negative int (a bool is not an int), shard entries are named
``shard-000000``, ``shard-000001``, ... in order (the names the store itself generates, so
no two are alike and none reaches outside ``shards/``), each shard lists exactly the files
its format and id kind need, named ``<shard>.<role>``, with the byte counts its rows need,
the counts add up, and free-form fields (spec, fingerprint, meta) are bounded in nesting.
"""
from __future__ import annotations

import re
from typing import Any

from fasttda.ops.quantize import FORMATS
from fasttda.store.shards import expected_bytes, roles, shard_name

INT_MAX = (1 << 63) - 1  # every count must fit the int64 arithmetic readers do
MAX_DEPTH = 64  # nesting of the free-form fields
MAX_MANIFEST_BYTES = 1 << 28
SHA256 = re.compile(r"^[0-9a-f]{64}$")
ID_KINDS = ("index", "int", "str")
REQUIRED = {"format", "version", "byteorder", "dim", "fmt", "rows", "shard_rows", "id_kind", "spec", "fingerprint",
            "meta", "shards", "commits", "created", "updated"}


class SchemaError(ValueError):
    """What is wrong with a manifest (the caller adds the path)."""


def _int(value: Any, what: str, lo: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= INT_MAX:
        raise SchemaError(f"{what} must be an int in [{lo}, 2**63), got {_show(value)}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{what} must be a string, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def check_free_form(value: Any, what: str, *, mapping: bool) -> None:
    if value is None and mapping is not True:
        return
    if mapping and not isinstance(value, dict):
        raise SchemaError(f"{what} must be a JSON object, got {_show(value)}")
    if depth(value) > MAX_DEPTH:
        raise SchemaError(f"{what} is nested more than {MAX_DEPTH} levels deep")


def validate(m: Any, format_name: str, version: int) -> None:
    """Raise `SchemaError` saying what is wrong with manifest ``m``; return when it is sound."""
    if not isinstance(m, dict) or m.get("format") != format_name:
        raise SchemaError("not a fasttda feature-store manifest")
    if m.get("version") != version or isinstance(m.get("version"), bool):
        raise SchemaError(f"format version {_show(m.get('version'))}; this fasttda reads version {version}")
    if m.get("byteorder") != "little":
        raise SchemaError(f"byteorder {_show(m.get('byteorder'))}; stores are little-endian")
    missing = sorted(REQUIRED - set(m))
    if missing:
        raise SchemaError(f"fields {missing} are missing")
    dim = _int(m.get("dim"), "field 'dim'", 1)
    fmt = m.get("fmt")
    if fmt not in FORMATS:
        raise SchemaError(f"unknown fmt {_show(fmt)}")
    rows = _int(m.get("rows"), "field 'rows'")
    shard_rows = _int(m.get("shard_rows"), "field 'shard_rows'", 1)
    _int(m.get("commits"), "field 'commits'")
    id_kind = m.get("id_kind")
    if id_kind not in ID_KINDS + (None,):
        raise SchemaError(f"unknown id_kind {_show(id_kind)}")
    if rows and id_kind is None:
        raise SchemaError(f"{rows} rows but no id_kind")
    for key in ("created", "updated", "library"):
        if key in m:
            _str(m[key], f"field {key!r}")
    check_free_form(m.get("spec"), "field 'spec'", mapping=False)
    if m.get("spec") is not None and not isinstance(m["spec"], dict):
        raise SchemaError(f"field 'spec' must be a JSON object or null, got {_show(m['spec'])}")
    check_free_form(m.get("fingerprint"), "field 'fingerprint'", mapping=False)
    if m.get("fingerprint") is not None and not isinstance(m["fingerprint"], dict):
        raise SchemaError(f"field 'fingerprint' must be a JSON object or null, got {_show(m['fingerprint'])}")
    check_free_form(m.get("meta"), "field 'meta'", mapping=True)
    shards = m.get("shards")
    if not isinstance(shards, list):
        raise SchemaError(f"field 'shards' must be a list, got {_show(shards)}")
    want_roles = set(roles(fmt, id_kind))
    total = 0
    for i, shard in enumerate(shards):
        where = f"shard entry {i}"
        if not isinstance(shard, dict) or set(shard) != {"name", "rows", "files"}:
            raise SchemaError(f"{where} must be an object with exactly 'name', 'rows' and 'files'")
        name = shard["name"]
        if name != shard_name(i):
            raise SchemaError(f"{where} is named {_show(name)}; entry {i} must be {shard_name(i)!r}")
        n = _int(shard["rows"], f"{name} 'rows'", 1)
        if n > shard_rows:
            raise SchemaError(f"{name} holds {n} rows, more than shard_rows={shard_rows}")
        files = shard["files"]
        if not isinstance(files, dict) or set(files) != want_roles:
            got = sorted(files) if isinstance(files, dict) else _show(files)
            raise SchemaError(f"{name} lists files {got}; fmt {fmt} with id_kind {id_kind} needs {sorted(want_roles)}")
        for role, meta in files.items():
            what = f"{name}.{role}"
            if not isinstance(meta, dict) or set(meta) != {"file", "bytes", "sha256"}:
                raise SchemaError(f"{what} must be an object with exactly 'file', 'bytes' and 'sha256'")
            if meta["file"] != what:
                raise SchemaError(f"{what} names file {_show(meta['file'])}; the store names it {what!r}")
            nbytes = _int(meta["bytes"], f"{what} 'bytes'")
            want = expected_bytes(role, n, fmt, dim, id_kind)
            if want is not None and nbytes != want:
                raise SchemaError(f"{what}: manifest records {nbytes} bytes, {n} rows need {want}")
            if not (isinstance(meta["sha256"], str) and SHA256.match(meta["sha256"])):
                raise SchemaError(f"{what} 'sha256' must be 64 lowercase hex digits")
        total += n
    if total != rows:
        raise SchemaError(f"shards hold {total} rows but the manifest says {rows}")
