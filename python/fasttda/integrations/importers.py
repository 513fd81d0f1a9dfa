"""Other tools' gradient indexes into a `FeatureStore`: resumable, verified, nothing unpickled.

* ``trak``: a TRAKer ``save_dir``. TRAK writes ``<save_dir>/<model_id>/{grads,features}.mmap``
  with numpy's ``open_memmap`` (``.npy`` files: header + raw rows), plus ``_is_featurized.mmap``.
  ``grads`` are the projected per-example gradients, ``features`` the finalized
  ``grads (GᵀG)⁻¹`` rows TRAK scores with. Read with ``np.load(mmap_mode="r", allow_pickle=False)``.
* ``bergson``: a Bergson index folder, ``info.json`` (``num_grads``, ``grad_sizes``,
  ``base_dtype``) + ``gradients.bin`` (raw ``[num_grads, Σ grad_sizes]`` rows), or a folder of
  such shards (sorted by name), as ``bergson.data.create_index`` / ``load_gradients`` define it.
* ``less``: LESS's ``grads-<n>.pt`` shards / ``all_orig.pt`` (``torch.load(weights_only=True)``).
* ``dattri-llm``: a ``GradientStorageManager`` directory written with ``disk_format="memmap"``
  (its default): ``[rank_<r>/]index.jsonl`` lists ``batch_<i>.mmap`` groups, each a raw
  ``.mmap.bin`` plus a ``.mmap.meta`` of primitives (``torch.load(weights_only=True)``, as
  dattri-llm reads it). Rows are per-example ("batch"-indexed), materialized layers
  concatenated in the record's layer order; ids are dattri-llm's sample hashes.

Each import appends in chunks and commits each one, so an interrupted import resumes after
the last committed row (the store records the source; a different source is refused). At
the end the store is verified: row count, SHA-256 of every committed byte, each row's stored
fp32 norm against the source row's norm, and, for lossless formats, every value.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fasttda.store import FeatureStore

CHUNK_ROWS = 8192
LOSSLESS = {"fp32": (torch.float32, torch.float16, torch.bfloat16), "fp16": (torch.float16,), "bf16": (torch.bfloat16,)}


class Source:
    """Rows of another tool's index: ``n`` rows of ``dim`` values, read in order."""

    def __init__(self, kind: str, path: Path, n: int, dim: int, dtype: torch.dtype, chunks, info: dict):
        self.kind, self.path, self.n, self.dim, self.dtype, self._chunks, self.info = kind, path, n, dim, dtype, chunks, info

    def chunks(self, start: int = 0) -> Iterator[tuple[int, torch.Tensor, list | None]]:
        """``(first_row, rows [m, dim], ids or None)`` from row ``start`` on."""
        return self._chunks(start)


TORCH_OF = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _torch_rows(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    rows = torch.from_numpy(np.array(array, copy=True))  # one chunk copied out of the read-only map
    return rows.view(torch.bfloat16) if dtype_name == "bfloat16" else rows


def _array_chunks(arrays, dtype_name: str, ids_of=None):
    """Chunks over a list of 2-D arrays laid end to end."""
    def chunks(start):
        base = 0
        for a in arrays:
            lo = max(start - base, 0)
            for s in range(lo, a.shape[0], CHUNK_ROWS):
                e = min(s + CHUNK_ROWS, a.shape[0])
                yield base + s, _torch_rows(a[s:e], dtype_name), ids_of(base + s, base + e) if ids_of else None
            base += a.shape[0]
    return chunks


# -- TRAK ---------------------------------------------------------------------------------
def trak_source(save_dir, *, model_id: int = 0, array: str = "features") -> Source:
    root = Path(save_dir) / str(int(model_id))
    if array not in ("features", "grads"):
        raise ValueError(f"array must be 'features' or 'grads', got {array!r}")
    file = root / f"{array}.mmap"
    if not file.is_file():
        raise FileNotFoundError(f"path={str(file)!r}: no TRAK {array} memmap for model_id {model_id}")
    try:
        rows = np.load(file, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{file}: not a TRAK .npy memmap ({exc})") from None
    if rows.ndim != 2 or rows.dtype not in (np.float16, np.float32):
        raise ValueError(f"{file}: expected a 2-D float16/float32 array, got {rows.dtype} {rows.shape}")
    flags = root / "_is_featurized.mmap"
    if flags.is_file():
        done = np.load(flags, mmap_mode="r", allow_pickle=False)
        missing = int((np.asarray(done) == 0).sum())
        if missing:
            raise ValueError(f"{flags}: {missing} of {len(done)} training examples were never featurized; "
                             "finish traker.featurize first")
    return Source("trak", file, rows.shape[0], rows.shape[1], TORCH_OF[rows.dtype.name],
                  _array_chunks([rows], rows.dtype.name), {"model_id": int(model_id), "array": array})


# -- Bergson ------------------------------------------------------------------------------
BERGSON_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "bfloat16": np.uint16}


def _bergson_shard(root: Path):
    info_path = root / "info.json"
    try:
        info = json.loads(info_path.read_text())
        n, sizes = int(info["num_grads"]), info["grad_sizes"]
        name = info["base_dtype"] if "base_dtype" in info else np.dtype(info["dtype"]["formats"][0]).base.name
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{info_path}: not a Bergson index info.json ({type(exc).__name__}: {exc})") from None
    if info.get("attribute_tokens"):
        raise ValueError(f"{info_path}: a per-token Bergson index (attribute_tokens); import a per-example index")
    if name not in BERGSON_DTYPES:
        raise ValueError(f"{info_path}: base_dtype {name!r} is not one of {sorted(BERGSON_DTYPES)}")
    dim = sum(int(v) for v in sizes.values())
    binary = root / "gradients.bin"
    want = n * dim * np.dtype(BERGSON_DTYPES[name]).itemsize
    if not binary.is_file() or binary.stat().st_size != want:
        got = binary.stat().st_size if binary.is_file() else "missing"
        raise ValueError(f"{binary}: expected {want} bytes for {n} x {dim} {name}, got {got}")
    return np.memmap(binary, dtype=BERGSON_DTYPES[name], mode="r", shape=(n, dim)), name, sizes


def bergson_source(index_dir) -> Source:
    root = Path(index_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"path={str(root)!r}: no such Bergson index folder")
    roots = [root] if (root / "info.json").is_file() else sorted(p for p in root.iterdir() if (p / "info.json").is_file())
    if not roots:
        raise FileNotFoundError(f"path={str(root)!r} holds no info.json (and no shard folders with one)")
    shards = [_bergson_shard(r) for r in roots]
    names = {s[1] for s in shards}
    dims = {s[0].shape[1] for s in shards}
    if len(names) > 1 or len(dims) > 1:
        raise ValueError(f"{root}: shards disagree on dtype/width: {sorted(names)} {sorted(dims)}")
    name = names.pop()
    arrays = [s[0] for s in shards]
    return Source("bergson", root, sum(a.shape[0] for a in arrays), dims.pop(), TORCH_OF[name], _array_chunks(arrays, name),
                  {"grad_sizes": shards[0][2], "shards": [r.name for r in roots]})


# -- LESS ---------------------------------------------------------------------------------
def less_source(path) -> Source:
    from fasttda.integrations.less import less_shards, load_less_tensor

    files = less_shards(path)
    heads = [load_less_tensor(f) for f in files]  # LESS shards are small projected rows

    def chunks(start):
        base = 0
        for t in heads:
            for s in range(max(start - base, 0), t.shape[0], CHUNK_ROWS):
                yield base + s, t[s:s + CHUNK_ROWS], None
            base += t.shape[0]
    dims = {t.shape[1] for t in heads}
    if len(dims) > 1:
        raise ValueError(f"{path}: LESS shards disagree on dim: {sorted(dims)}")
    return Source("less", Path(path), sum(t.shape[0] for t in heads), dims.pop(), heads[0].dtype, chunks,
                  {"files": [f.name for f in files]})


# -- dattri-llm ---------------------------------------------------------------------------
def _load_meta(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: refused, it holds objects other than primitives ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != 2:
        raise ValueError(f"{path}: not a dattri-llm memmap meta of format 2")
    return payload


def _dattri_record_rows(root: Path, entry: dict, record: dict, meta_cache: dict) -> torch.Tensor:
    handle = entry["file"]
    if not handle.endswith(".mmap"):
        raise ValueError(f"{root / handle}: written with disk_format='pickle' (a pickle, never loaded); "
                         "re-collect with dattri-llm's default disk_format='memmap'")
    if handle not in meta_cache:
        meta_cache.clear()
        meta = _load_meta(root / f"{handle}.meta")
        binary = root / f"{handle}.bin"
        size = binary.stat().st_size
        buf = torch.from_file(str(binary), shared=False, size=size, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
        meta_cache[handle] = (meta, buf)
    meta, buf = meta_cache[handle]
    rec = meta["records"][int(record["idx"])]
    parts = []
    for name, layer in rec["layers"].items():
        if layer["kind"] != "dense" or rec["indexing"].get(name, "batch") != "batch":
            raise ValueError(f"{root / handle}: layer {name!r} is {layer['kind']}/{rec['indexing'].get(name)}; "
                             "only materialized per-example ('batch') layers import as rows")
        spec = layer["parts"]["data"]
        dtype = getattr(torch, spec["dtype"], None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"{root / handle}: layer {name!r} has dtype {spec['dtype']!r}")
        raw = buf[spec["byte_off"]:spec["byte_off"] + spec["nbytes"]]
        parts.append(raw.view(dtype).reshape(spec["shape"]).reshape(spec["shape"][0], -1))
    return torch.cat(parts, 1)


def dattri_llm_source(save_dir) -> Source:
    root = Path(save_dir)
    logs = ([root / "index.jsonl"] if (root / "index.jsonl").is_file() else []) + sorted(
        root.glob("rank_*/index.jsonl"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not logs:
        raise FileNotFoundError(f"path={str(root)!r}: no dattri-llm index.jsonl (nor rank_*/index.jsonl)")
    entries = []
    for log in logs:
        for lineno, line in enumerate(log.read_text().splitlines(), 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                    entries.extend((entry, r) for r in entry["records"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{log}:{lineno}: not a dattri-llm index line ({exc})") from None
    n = sum(len(r["hashes"]) for _, r in entries)
    cache: dict = {}
    first = _dattri_record_rows(root, *entries[0], cache)

    def chunks(start):
        base, local = 0, {}
        for entry, record in entries:
            m = len(record["hashes"])
            if base + m > start:
                rows = _dattri_record_rows(root, entry, record, local)
                if rows.shape[0] != m:
                    raise ValueError(f"{root / entry['file']}: record {record['idx']} holds {rows.shape[0]} rows, "
                                     f"the index lists {m}")
                lo = max(start - base, 0)
                yield base + lo, rows[lo:], list(record["hashes"][lo:])
            base += m
    return Source("dattri-llm", root, n, first.shape[1], first.dtype, chunks, {"logs": [str(p.relative_to(root)) for p in logs]})


SOURCES = {"trak": trak_source, "bergson": bergson_source, "less": less_source, "dattri-llm": dattri_llm_source}


def import_index(kind: str, path, store_path, *, fmt: str = "fp16", verify: bool = True, **options) -> FeatureStore:
    """Convert another tool's index at ``path`` into the store at ``store_path`` (resumes if it exists)."""
    if kind not in SOURCES:
        raise ValueError(f"kind must be one of {sorted(SOURCES)}, got {kind!r}")
    source = SOURCES[kind](path, **options)
    store_path = Path(store_path)
    origin = {"source": kind, "path": str(Path(path).resolve()), **source.info}
    if (store_path / "manifest.json").is_file():
        store = FeatureStore.open(store_path, mode="append")
        if store.meta.get("imported_from") != origin:
            store.close()
            raise ValueError(f"store at {store_path} was imported from {store.meta.get('imported_from')}, not {origin}")
        if store.dim != source.dim:
            store.close()
            raise ValueError(f"store at {store_path} has dim {store.dim}, the {kind} index has {source.dim}")
    else:
        store = FeatureStore.create(store_path, source.dim, fmt, meta={"imported_from": origin})
    with store:
        for first, rows, ids in source.chunks(len(store)):
            store.append(rows, ids=ids if ids is not None else list(range(first, first + rows.shape[0])))
            store.commit()
    result = FeatureStore.open(store_path)
    if verify:
        verify_import(source, result)
    return result


def verify_import(source: Source, store: FeatureStore) -> None:
    """Row count, committed bytes, row norms, and (lossless formats) every value against the source."""
    if len(store) != source.n:
        raise ValueError(f"{store.path}: holds {len(store)} rows, the {source.kind} index {source.n}")
    store.verify()
    exact = source.dtype in LOSSLESS.get(store.fmt, ())
    for first, rows, _ in source.chunks(0):
        stop = first + rows.shape[0]
        want_norms = rows.to(torch.float64).norm(dim=1)
        if not torch.allclose(store.norms(first, stop).to(torch.float64), want_norms, rtol=1e-5, atol=1e-30):
            raise ValueError(f"{store.path}: row norms in rows {first}..{stop - 1} differ from the {source.kind} index")
        if exact and not torch.equal(store.read(first, stop), rows.to(torch.float32)):
            raise ValueError(f"{store.path}: values in rows {first}..{stop - 1} differ from the {source.kind} index")
