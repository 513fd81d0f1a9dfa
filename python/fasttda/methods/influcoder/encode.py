"""Serving: texts → the student → `fasttda.ops.encoder_epilogue` → a `FeatureStore`.

The learned encoding is one more way to make feature rows: ``encode`` writes them to a
store in any format (int8 by default) with the same manifest, ids and norms as a gradient
store, and ``fasttda.score`` ranks them against `embed`'s query rows (cosine).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from fasttda.methods.influcoder.student import Student, render
from fasttda.ops.encoder_epilogue import encoder_epilogue

STORE_KIND = "influcoder"


def texts_of(items, template: str) -> list[str]:
    """Strings stay as they are; examples (prompt/response) go through the template."""
    return [item if isinstance(item, str) else render(item, template) for item in items]


def _batches(student: Student, texts: Sequence[str], fmt: str, batch_size: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    was_training = student.training
    student.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(texts), desc=desc, unit="ex", disable=not progress,
                                          leave=False, dynamic_ncols=True) as bar:
            for lo in range(0, len(texts), batch_size):
                hidden, weights = student.hidden_and_weights(texts[lo: lo + batch_size])
                yield lo, encoder_epilogue(hidden, weights, fmt)
                bar.update(hidden.shape[0])
    finally:
        student.train(was_training)


def embed(student: Student, items, *, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """``[N, H]`` float32 L2-normalized rows (queries for `fasttda.score`), no gradient."""
    texts = texts_of(items, student.config.template)
    parts = [rows.data for _, rows in _batches(student, texts, "fp32", batch_size, progress, "embed")]
    return torch.cat(parts) if parts else torch.empty(0, student.dim)


def encode(student: Student, items, out: str | os.PathLike, *, fmt: str = "int8", ids: Sequence | None = None,
           batch_size: int = 64, progress: bool = False, meta: dict | None = None):
    """Write the rows of ``items`` (texts or examples) to a new store at ``out``; returns it
    opened for reading. ``ids`` default to the examples' ids (row numbers for texts)."""
    from fasttda.store import FeatureStore, model_fingerprint

    items = list(items)
    texts = texts_of(items, student.config.template)
    if ids is None:
        ids = [str(getattr(x, "id", i)) if not isinstance(x, str) else str(i) for i, x in enumerate(items)]
    if len(ids) != len(items):
        raise ValueError(f"{len(ids)} ids for {len(items)} items")
    fingerprint = model_fingerprint(student, name=str(student.path))
    record = {"kind": STORE_KIND, "encoder": student.path, "template": student.config.template,
              "pooling": student.config.pooling, "max_length": student.config.max_length,
              "n_examples": len(items), **(meta or {})}
    spec = {"kind": STORE_KIND, "dim": student.dim, "pooling": student.config.pooling,
            "template": student.config.template, "max_length": student.config.max_length}
    store = FeatureStore.create(Path(out), student.dim, fmt, meta=record, spec=spec,
                                fingerprint=fingerprint)
    with store:
        for lo, rows in _batches(student, texts, fmt, batch_size, progress, "encode"):
            store.append_quantized(rows.data, rows.scale, rows.norms, ids=list(ids[lo: lo + len(rows.norms)]))
            store.commit()
    return FeatureStore.open(Path(out))


def load_for_store(store, *, device: str = "cpu") -> Student:
    """The student an encoder store was written with (its manifest names the directory)."""
    meta = dict(store.meta or {})
    if meta.get("kind") != STORE_KIND or not meta.get("encoder"):
        raise ValueError(f"store {store.path} was not written by `fasttda influcoder encode` (no encoder recorded)")
    return Student.load(meta["encoder"], template=meta.get("template"), pooling=meta.get("pooling"),
                        max_length=meta.get("max_length"), device=device)
