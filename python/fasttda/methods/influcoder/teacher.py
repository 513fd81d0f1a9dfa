"""The teacher: a decoder's per-example gradient similarities, Y = cos(g_anchor, g_pool).

Features come from fasttda's capture pipeline (the same path as ``fasttda index``): the
gradient of the loss on the response tokens, LoRA adapters only for a PEFT checkpoint
(the paper: rank-16 LoRA on every linear layer) or every linear layer otherwise, sketched
with SJLT/CountSketch (``sjlt:K``) or any other projection the pipeline knows. The pool's
rows go into a `FeatureStore` (``<dir>/pool_store``, usable by ``fasttda query``); Y is
their cosine with the anchors' rows, computed by `fasttda.ops.score_dense`, and cached as
``<dir>/teacher.safetensors`` with the anchors and pool as JSONL beside it. No pickle.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from fasttda.data import Example, load_jsonl, write_jsonl
from fasttda import pipeline
from fasttda.ops.score import score_dense

DEFAULT_PROJECTION = "sjlt:8192"
TEACHER_FILE = "teacher.safetensors"
META_FILE = "teacher.json"
POOL_STORE = "pool_store"


@dataclass
class TeacherConfig:
    projection: str = DEFAULT_PROJECTION
    seed: int = 0
    modules: list[str] | None = None
    max_length: int = 512
    batch_size: int = 16
    fmt: str = "fp16"  # the pool store's format

    def capture(self) -> pipeline.CaptureConfig:
        return pipeline.CaptureConfig(self.projection, list(self.modules) if self.modules else None, self.max_length,
                                      self.batch_size, self.seed)


@dataclass
class Teacher:
    """Y ``[anchors, pool]`` float32 with the examples it was computed on."""
    y: torch.Tensor
    anchors: list[Example]
    pool: list[Example]
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def pool_store(self) -> Path | None:
        return None if self.path is None else self.path / POOL_STORE

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Teacher":
        path = Path(path)
        for name in (TEACHER_FILE, META_FILE, "anchors.jsonl", "pool.jsonl"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a teacher directory (no {name}); "
                                        "make one with `fasttda influcoder teacher`")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            y = load_file(str(path / TEACHER_FILE))["y"]
        except (SafetensorError, KeyError, OSError) as exc:
            raise ValueError(f"{path / TEACHER_FILE} is not a valid teacher file: {exc}") from None
        anchors, pool = load_jsonl(path / "anchors.jsonl"), load_jsonl(path / "pool.jsonl")
        if tuple(y.shape) != (len(anchors), len(pool)) or y.dtype != torch.float32:
            raise ValueError(f"{path / TEACHER_FILE}: y is {y.dtype} {list(y.shape)}, expected float32 "
                             f"[{len(anchors)}, {len(pool)}] for its anchors and pool")
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{path / TEACHER_FILE}: y holds NaN or inf")
        return cls(y, anchors, pool, path, json.loads((path / META_FILE).read_text()))


def gradient_features(checkpoint, examples: Sequence[Example], config: TeacherConfig, *,
                      progress: bool = False) -> torch.Tensor:
    """``[N, k]`` float32 sketched gradient rows, L2-normalized (a zero row stays zero)."""
    feats = pipeline.query_features(checkpoint, list(examples), config.capture(), progress=progress)
    norms = torch.linalg.vector_norm(feats, dim=1, keepdim=True)
    return feats / torch.where(norms > 0, norms, torch.ones_like(norms))


def similarity(anchor_rows: torch.Tensor, store) -> torch.Tensor:
    """Cosine ``[A, N]`` of anchor rows against every row of a store, chunk by chunk."""
    y = torch.empty(anchor_rows.shape[0], len(store), dtype=torch.float32)
    for chunk in store.iter_chunks(8192):
        y[:, chunk.start:chunk.stop] = score_dense(anchor_rows, chunk.data, scales=chunk.scale, norms=chunk.norms,
                                                   normalize=True, fmt=chunk.fmt)
    return y


def build_teacher(model: str | os.PathLike, anchors: Sequence[Example], pool: Sequence[Example],
                  out: str | os.PathLike, config: TeacherConfig | None = None, *, device: str = "cpu",
                  progress: bool = False, checkpoint=None) -> Teacher:
    """Index ``pool`` at ``model`` into ``out/pool_store``, take the anchors' features and
    cache Y = their cosine with the pool in ``out/teacher.safetensors``."""
    from safetensors.torch import save_file

    config = config or TeacherConfig()
    out = Path(out)
    if (out / TEACHER_FILE).exists():
        raise FileExistsError(f"a teacher already exists at {out}; choose another --out")
    if not anchors or not pool:
        raise ValueError("the teacher needs at least one anchor and one pool example")
    ckpt = checkpoint if checkpoint is not None else pipeline.load_checkpoint(model, device=device)
    t0 = time.perf_counter()
    store = pipeline.index(ckpt, list(pool), out / POOL_STORE, config.capture(), fmt=config.fmt, resume=True,
                      progress=progress)
    pool_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    anchor_rows = gradient_features(ckpt, anchors, config, progress=progress)
    anchor_s = time.perf_counter() - t0
    y = similarity(anchor_rows, store).contiguous()
    if not bool(torch.isfinite(y).all()):
        raise FloatingPointError("teacher similarities are not finite")
    write_jsonl(out / "anchors.jsonl", anchors)
    write_jsonl(out / "pool.jsonl", pool)
    save_file({"y": y}, str(out / TEACHER_FILE))
    meta = {"model": str(model), "model_fingerprint": ckpt.sampled_fingerprint, "config": asdict(config),
            "n_anchors": len(anchors), "n_pool": len(pool), "feature_dim": store.dim, "lora_only": ckpt.is_lora,
            "seconds_per_example": (pool_s + anchor_s) / (len(pool) + len(anchors)),
            "bytes_per_example": store_bytes_per_row(store)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return Teacher(y, list(anchors), list(pool), out, meta)


def store_bytes_per_row(store) -> int:
    """What one row costs on disk: data, scale and the float32 norm."""
    from fasttda.ops.quantize import bytes_per_row

    return bytes_per_row(store.fmt, store.dim) + 4
