"""Other tools' gradient indexes into a `FeatureStore`: resumable, verified, nothing unpickled.

The formats (TRAK, Bergson, LESS, dattri-llm) and how each is read and checked are in
`fasttda.integrations.sources`; `fasttda.integrations.foreign.ForeignIndex` scores the
formats that allow it in place, without this copy.

Each import appends in chunks and commits each one, so an interrupted import resumes after
the last committed row (the store records the source; a different source is refused). At
the end the store is verified: row count, SHA-256 of every committed byte, each row's stored
fp32 norm against the source row's norm, and, for lossless formats, every value.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fasttda.integrations.sources import (CHUNK_ROWS, SOURCES, Source, bergson_source,  # noqa: F401 (re-exported)
                                          dattri_llm_source, less_source, trak_source)
from fasttda.store import FeatureStore

LOSSLESS = {"fp32": (torch.float32, torch.float16, torch.bfloat16), "fp16": (torch.float16,), "bf16": (torch.bfloat16,)}


def import_index(kind: str, path, store_path, *, fmt: str = "fp16", verify: bool = True, chunk_rows: int = CHUNK_ROWS,
                 **options) -> FeatureStore:
    """Convert another tool's index at ``path`` into the store at ``store_path`` (resumes if it exists),
    committing every ``chunk_rows`` rows."""
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
        for first, rows, ids in source.chunks(len(store), chunk_rows):
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
