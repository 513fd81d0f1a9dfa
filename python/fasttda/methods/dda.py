"""DDA: Debias and Denoise Attribution over fine-tuning checkpoints (Wu et al., 2024).

With θ₀ the base model and θ₁…θ_N the checkpoints saved after each fine-tuning epoch,
and IS(θ) = <g_q(θ), g_z(θ)> (or its cosine, or a preconditioned form):

    if       IS(θ_N)
    debias   IS(θ_N) − β·IS(θ₀)
    denoise  Σ_i w_i·IS(θ_i),            w_i = 1/N (or learning-rate weights)
    dda      Σ_i w_i·IS(θ_i) − β·IS(θ₀)
    base     IS(θ₀) alone: a diagnostic. When it already finds the sources, debiasing
             subtracts the signal (see METHODS.md section 7) and a small β is better.

Each IS is a dot product of per-checkpoint features, so every mode is one weighted pass
over one store per checkpoint: `index` builds a store, `query_features` computes the
queries' features, `score_checkpoints` combines them, and `attribute` does it all.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from fasttda.data import Example, batches, data_fingerprint, encode, load_jsonl, pad_id_of
from fasttda.methods import _backend
from fasttda.methods._checkpoints import (Checkpoint, CheckpointError, ProjectionSpec, check_same_tokenizer,
                                          load_checkpoint)

MODES = ("if", "debias", "denoise", "dda", "base")
DEFAULT_PROJECTION = "factored:16x16"


class StoreMismatch(ValueError):
    """A store that does not belong to this model, projection or data set."""


# -- weights ----------------------------------------------------------------------------------
def combination(mode: str, n_epochs: int, *, beta: float = 1.0,
                lr: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """``[(checkpoint, weight), ...]`` with checkpoint 0 the base θ₀ and i ≥ 1 epoch i.

    ``lr`` (one learning rate per epoch) replaces the 1/N of denoise and dda by
    ``lr_i / Σ lr``, so a constant schedule gives 1/N and β keeps its meaning. Zero
    weights are dropped: their stores are never read.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(n_epochs, int) or n_epochs < 1:
        raise ValueError(f"n_epochs must be an int >= 1, got {n_epochs!r}")
    beta = float(beta)
    if not torch.isfinite(torch.tensor(beta)):
        raise ValueError(f"beta must be finite, got {beta}")
    if lr is None:
        epoch_w = [1.0 / n_epochs] * n_epochs
    else:
        lr = [float(x) for x in lr]
        if len(lr) != n_epochs or any(not (x >= 0) for x in lr) or sum(lr) <= 0:
            raise ValueError(f"lr must hold {n_epochs} non-negative learning rates with a positive sum, got {lr}")
        epoch_w = [x / sum(lr) for x in lr]
    if mode == "if":
        pairs = [(n_epochs, 1.0)]
    elif mode == "debias":
        pairs = [(n_epochs, 1.0), (0, -beta)]
    elif mode == "denoise":
        pairs = [(i + 1, w) for i, w in enumerate(epoch_w)]
    elif mode == "dda":
        pairs = [(i + 1, w) for i, w in enumerate(epoch_w)] + [(0, -beta)]
    else:
        pairs = [(0, 1.0)]
    return [(c, w) for c, w in pairs if w != 0.0]


# -- features and stores ------------------------------------------------------------------------
@dataclass
class CaptureConfig:
    """Everything that fixes what a feature row means; stored in each store's manifest."""
    projection: ProjectionSpec = field(default_factory=lambda: ProjectionSpec.parse(DEFAULT_PROJECTION))
    modules: list[str] | None = None
    max_length: int = 512
    batch_size: int = 16

    def to_meta(self) -> dict:
        return {"projection": self.projection.to_dict(), "projection_str": str(self.projection),
                "modules": self.modules, "max_length": self.max_length}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, dynamic_ncols=True, leave=False)


def _features(checkpoint: Checkpoint, examples: Sequence[Example], config: CaptureConfig, *,
              start: int = 0, progress: bool = False, desc: str = "features"):
    """Yield ``(row_start, [B, dim] float32)`` for ``examples[start:]`` in order."""
    encoded = encode(checkpoint.tokenizer, examples, config.max_length)
    pad = pad_id_of(checkpoint.tokenizer)
    device = next(checkpoint.model.parameters()).device
    with _backend.capture(checkpoint.model, projection=config.projection, modules=config.modules,
                          lora_only=checkpoint.is_lora) as cap, \
            _progress(len(examples) - start, desc, progress) as bar:
        row = start
        for batch in batches(encoded, config.batch_size, pad, start=start):
            feats = cap.features(**{k: v.to(device) for k, v in batch.items()})
            feats = feats.detach().to("cpu", torch.float32)
            if not torch.isfinite(feats).all():
                raise FloatingPointError(f"non-finite gradient features in rows {row}..{row + len(feats) - 1} "
                                         f"at {checkpoint.path}")
            yield row, feats
            row += len(feats)
            bar.update(len(feats))


def query_features(checkpoint: Checkpoint, queries: Sequence[Example], config: CaptureConfig,
                   *, progress: bool = False) -> torch.Tensor:
    """``[Q, dim]`` float32 features of the queries at one checkpoint: the gradient of the
    loss on each response, or on its ``target`` span alone where the query names one."""
    return torch.cat([f for _, f in _features(checkpoint, queries, config, progress=progress,
                                                  desc=f"queries @ {Path(checkpoint.path).name}")])


def index(checkpoint: Checkpoint, examples: Sequence[Example], out: str | os.PathLike, config: CaptureConfig,
          *, fmt: str = "fp32", resume: bool = False, progress: bool = False):
    """Write every example's features at ``checkpoint`` into a new store at ``out`` (or
    finish one after a crash with ``resume=True``); returns the store opened for reading."""
    out = Path(out)
    meta = dict(config.to_meta(), model=checkpoint.fingerprint, model_path=str(checkpoint.path),
                tokenizer=checkpoint.tokenizer_fingerprint, data=data_fingerprint(examples),
                n_examples=len(examples), lora_only=checkpoint.is_lora)
    if out.exists():
        if not resume:
            raise FileExistsError(f"store already exists: {out} (pass resume to finish it, or choose another path)")
        store = _backend.open_store(out, mode="append")
        check_store(store, out, checkpoint=checkpoint, projection=config.projection, data=meta["data"])
        start = len(store)
    else:
        dim = _feature_dim(checkpoint, examples, config)
        spec = dict(config.projection.to_dict(), out_dim=dim, modules=config.modules, max_length=config.max_length,
                    lora_only=checkpoint.is_lora)
        store = _backend.create_store(out, dim, fmt, meta, spec=spec,
                                      fingerprint={"name": str(checkpoint.path), "sha256": meta["model"]})
        start = 0
    with store:
        for row, feats in _features(checkpoint, examples, config, start=start, progress=progress,
                                    desc=f"index @ {Path(checkpoint.path).name}"):
            store.append(feats, ids=[ex.id for ex in examples[row: row + len(feats)]])
            store.commit()
    return _backend.open_store(out, mode="r")


def _feature_dim(checkpoint: Checkpoint, examples: Sequence[Example], config: CaptureConfig) -> int:
    one = CaptureConfig(config.projection, config.modules, config.max_length, batch_size=1)
    _, feats = next(_features(checkpoint, examples[:1], one))
    return feats.shape[1]


def check_store(store, path, *, checkpoint: Checkpoint | None = None, projection: ProjectionSpec | None = None,
                data: str | None = None) -> dict:
    """Raise `StoreMismatch` unless ``store`` was built with this model, projection and data."""
    meta = _backend.store_meta(store)
    if projection is not None and meta.get("projection") != projection.to_dict():
        raise StoreMismatch(f"store {path} was built with projection {meta.get('projection_str', '?')}, "
                            f"not {projection} (seed {projection.seed}); rebuild it or use the same projection")
    if checkpoint is not None and meta.get("model") != checkpoint.fingerprint:
        raise StoreMismatch(f"store {path} was built from another model ({meta.get('model_path', '?')}), "
                            f"not {checkpoint.path}")
    if data is not None and meta.get("data") != data:
        raise StoreMismatch(f"store {path} was built from another data set; rebuild it for this one")
    if "n_examples" in meta and len(store) != meta["n_examples"] and data is None:
        raise StoreMismatch(f"store {path} is incomplete ({len(store)} of {meta['n_examples']} rows); "
                            "finish it with resume")
    return meta


def store_projection(store) -> ProjectionSpec:
    meta = _backend.store_meta(store)
    if "projection" not in meta:
        raise StoreMismatch(f"store {getattr(store, 'path', '')} records no projection; it was not built by "
                            "fasttda's index")
    return ProjectionSpec(**meta["projection"])


# -- scoring ------------------------------------------------------------------------------------
def score_checkpoints(query_feats: Sequence[torch.Tensor], stores: Sequence, weights: Sequence[float], *,
                      k: int, normalize: bool = False, preconditioners=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One weighted pass over the stores: top-k of ``Σ_c w_c·IS_c`` (per-store cosine when
    ``normalize``), ``(values [Q, k], row indices [Q, k])``."""
    if not (len(query_feats) == len(stores) == len(weights)):
        raise ValueError(f"need one query block and one weight per store, got {len(query_feats)} blocks, "
                         f"{len(stores)} stores, {len(weights)} weights")
    n_rows = {len(s) for s in stores}
    if len(n_rows) != 1:
        raise StoreMismatch(f"the stores hold different numbers of rows {sorted(n_rows)}; they must index one data set")
    k = min(int(k), n_rows.pop())
    return _backend.score(query_feats, stores, k=k, weights=weights, normalize=normalize,
                          preconditioner=preconditioners)


@dataclass
class Attribution:
    """Ranked training rows per query, plus the time spent."""
    query_ids: list[str]
    values: torch.Tensor
    indices: torch.Tensor
    train_ids: list[str]
    index_s: float = 0.0
    score_s: float = 0.0

    def rows(self):
        for q, qid in enumerate(self.query_ids):
            yield {"query_id": qid, "results": [
                {"rank": r + 1, "id": self.train_ids[int(i)], "row": int(i), "score": float(v)}
                for r, (v, i) in enumerate(zip(self.values[q].tolist(), self.indices[q].tolist()))]}

    def write_jsonl(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for row in self.rows():
                f.write(json.dumps(row) + "\n")
        return path


def attribute(base: str | os.PathLike, checkpoints: Sequence[str | os.PathLike], data: str | os.PathLike | Sequence[Example],
              queries: str | os.PathLike | Sequence[Example], out: str | os.PathLike, *, mode: str = "dda",
              beta: float = 1.0, lr: Sequence[float] | None = None, normalize: bool = True,
              precondition: bool = False, damping: float = 1e-3, k: int = 50, projection: str = DEFAULT_PROJECTION,
              seed: int = 0, fmt: str = "fp32", modules: Sequence[str] | None = None, batch_size: int = 16,
              max_length: int = 512, resume: bool = True, progress: bool = False, device: str = "cpu",
              fields: dict | None = None, target_field: str | None = "target") -> Attribution:
    """Index ``data`` at every checkpoint the mode needs (stores under ``out/stores``), take
    the queries' features there, score in one pass and write ``out/results.jsonl``.

    A query line carrying ``target_field`` is attributed for that span of its response
    only (its loss is taken on the span's tokens); the training data ignores that field."""
    fields = fields or {}
    train = data if not isinstance(data, (str, os.PathLike)) else load_jsonl(data, **fields)
    qs = queries if not isinstance(queries, (str, os.PathLike)) else \
        load_jsonl(queries, **fields, target_field=target_field)
    if not checkpoints:
        raise ValueError("give at least one fine-tuned checkpoint")
    paths = [Path(base)] + [Path(c) for c in checkpoints]
    for p in paths:
        if not p.is_dir():
            raise CheckpointError(f"model directory not found: {p}")
    plan = combination(mode, len(checkpoints), beta=beta, lr=lr)
    config = CaptureConfig(ProjectionSpec.parse(projection, seed=seed), list(modules) if modules else None,
                           max_length, batch_size)
    out = Path(out)
    check_same_tokenizer(paths)
    loaded = [load_checkpoint(paths[c], device=device) for c, _ in plan]
    stores, q_feats, index_s, score_prep = [], [], 0.0, 0.0
    for (c, _), ckpt in zip(plan, loaded):
        t0 = time.perf_counter()
        store = index(ckpt, train, out / "stores" / f"ckpt{c}", config, fmt=fmt, resume=resume, progress=progress)
        index_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        q_feats.append(query_features(ckpt, qs, config))
        score_prep += time.perf_counter() - t0
        stores.append(store)
    t0 = time.perf_counter()
    pre = [_backend.fit_preconditioner(s, damping) for s in stores] if precondition else None
    values, indices = score_checkpoints(q_feats, stores, [w for _, w in plan], k=k, normalize=normalize,
                                        preconditioners=pre)
    result = Attribution([q.id for q in qs], values, indices, [ex.id for ex in train], index_s,
                         score_prep + time.perf_counter() - t0)
    result.write_jsonl(out / "results.jsonl")
    (out / "config.json").write_text(json.dumps({
        "mode": mode, "beta": beta, "lr": lr, "normalize": normalize, "precondition": precondition,
        "damping": damping, "k": k, "projection": str(config.projection), "seed": seed, "format": fmt,
        "query_loss": "span" if any(q.target is not None for q in qs) else "response",
        "checkpoints": [str(p) for p in paths], "weights": {str(paths[c]): w for c, w in plan},
        "implementation": _backend.implementation()}, indent=2))
    return result
