"""TEMPORARY stand-ins for capture, store and scoring, used only until those rooms land.

They are exact and small, not fast: `LoopCapture` takes per-example gradients of the
selected linear layers from their inputs and output-gradients (the factored identity,
computed without projecting the weight gradient itself); `FileStore` keeps float32 rows
in one file with a JSON manifest; `score` is a dense matmul and torch.topk.
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from fasttda.data import IGNORE_INDEX


def select_linears(model: torch.nn.Module, patterns: Sequence[str] | None, lora_only: bool):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if lora_only and "lora_" not in name:
            continue
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        chosen.append((name, module))
    if not chosen:
        raise ValueError(f"no linear module matches modules={list(patterns or [])} (lora_only={lora_only})")
    return chosen


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each row's labelled tokens, ``[B]``."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    tokens = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
    count = (labels != IGNORE_INDEX).sum(1)
    if (count == 0).any():
        raise ValueError("an example has no response token to take the loss on")
    return tokens.sum(1) / count


class LoopCapture:
    def __init__(self, model, *, projection, modules=None, lora_only=False):
        self.model, self.spec = model, projection
        self.linears = select_linears(model, modules, lora_only)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._hooks, self._grad_flags = [], {}
        self._matrices = None

    def __enter__(self):
        for name, p in self.model.named_parameters():
            self._grad_flags[name] = p.requires_grad
            p.requires_grad_(False)
        for _, module in self.linears:
            module.weight.requires_grad_(True)
            self._hooks.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._grad_flags[name])
        return False

    def _hook(self, module, inputs, output):
        self._saved.append((inputs[0].detach(), output))

    @property
    def dim(self) -> int:
        spec = self.spec
        if spec.kind == "factored":
            return len(self.linears) * spec.k_in * spec.k_out
        if spec.kind == "none":
            return sum(m.weight.numel() for _, m in self.linears)
        return spec.dim

    def _factor_matrices(self):
        from fasttda.ops import projection_matrix

        if self._matrices is None:
            mats, off_in, off_out = [], 0, 0
            for _, m in self.linears:
                d_out, d_in = m.weight.shape
                p_in = projection_matrix(d_in, self.spec.k_in, seed=self.spec.seed, offset=off_in)
                p_out = projection_matrix(d_out, self.spec.k_out, seed=self.spec.seed + 1, offset=off_out)
                mats.append((p_in, p_out))
                off_in, off_out = off_in + d_in, off_out + d_out
            self._matrices = mats
        return self._matrices

    def features(self, input_ids, attention_mask=None, labels=None) -> torch.Tensor:
        self._saved.clear()
        with torch.enable_grad():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            loss = per_example_loss(logits, labels).sum()
            outputs = [y for _, y in self._saved]
            deltas = torch.autograd.grad(loss, outputs)
        pieces = []
        mats = self._factor_matrices() if self.spec.kind == "factored" else None
        for i, ((x, _), delta) in enumerate(zip(self._saved, deltas)):
            x, delta = x.float().flatten(1, -2), delta.float().flatten(1, -2)
            if mats is not None:
                p_in, p_out = mats[i]
                pieces.append(torch.einsum("btk,btj->bkj", delta @ p_out, x @ p_in).flatten(1))
            else:
                pieces.append(torch.einsum("btk,btj->bkj", delta, x).flatten(1))
        self._saved.clear()
        feats = torch.cat(pieces, 1)
        if self.spec.kind in ("rademacher", "gaussian", "sjlt"):
            from fasttda.ops import project

            feats = project(feats, self.spec.dim, kind=self.spec.kind, seed=self.spec.seed)
        return feats


class FileStore:
    """float32 rows in ``rows.f32``; ``manifest.json`` names how many are committed."""

    def __init__(self, path: Path, manifest: dict, mode: str):
        self.path, self.manifest, self.mode = path, manifest, mode
        self.dim, self.fmt, self.meta = manifest["dim"], manifest["fmt"], manifest["meta"]
        self._pending: list[torch.Tensor] = []

    @classmethod
    def create(cls, path, dim, fmt, meta=None):
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"store already exists: {path}")
        path.mkdir(parents=True)
        manifest = {"dim": int(dim), "fmt": fmt, "meta": meta or {}, "rows": 0, "ids": []}
        store = cls(path, manifest, "append")
        store._write_manifest()
        (path / "rows.f32").touch()
        return store

    @classmethod
    def open(cls, path, mode="r"):
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"no feature store at {path}")
        manifest = json.loads((path / "manifest.json").read_text())
        store = cls(path, manifest, mode)
        if mode == "append":  # drop rows written after the last commit
            with open(path / "rows.f32", "r+b") as f:
                f.truncate(manifest["rows"] * manifest["dim"] * 4)
        return store

    def __len__(self):
        return self.manifest["rows"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def append(self, features, ids=None):
        features = torch.as_tensor(features, dtype=torch.float32)
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [B, {self.dim}], got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or Inf")
        with open(self.path / "rows.f32", "ab") as f:
            f.write(features.contiguous().numpy().tobytes())
        self._pending.append(features)
        self.manifest["ids"].extend([str(i) for i in ids] if ids is not None
                                    else [str(len(self) + j) for j in range(len(features))])
        self.manifest["rows"] += len(features)

    def commit(self):
        with open(self.path / "rows.f32", "ab") as f:
            f.flush()
            os.fsync(f.fileno())
        self._write_manifest()

    def ids(self):
        return list(self.manifest["ids"])

    def read(self, start=0, stop=None):
        stop = len(self) if stop is None else stop
        with open(self.path / "rows.f32", "rb") as f:
            f.seek(start * self.dim * 4)
            raw = f.read((stop - start) * self.dim * 4)
        return torch.frombuffer(bytearray(raw), dtype=torch.float32).view(stop - start, self.dim).clone()

    def _write_manifest(self):
        tmp = self.path / "manifest.json.tmp"
        tmp.write_text(json.dumps(self.manifest))
        os.replace(tmp, self.path / "manifest.json")


def fit_preconditioner(store, damping: float) -> torch.Tensor:
    """``(GᵀG/N + λI)⁻¹`` with λ = damping · mean diagonal, float64."""
    g = store.read(0, len(store)).double()
    h = g.T @ g / len(g)
    lam = damping * h.diagonal().mean().clamp_min(1e-30)
    return torch.linalg.inv(h + lam * torch.eye(len(h), dtype=h.dtype))


def score(queries, stores, *, k, weights, normalize, preconditioner=None):
    total = None
    preconditioners = preconditioner if isinstance(preconditioner, (list, tuple)) else [preconditioner] * len(stores)
    for q, store, w, pre in zip(queries, stores, weights, preconditioners):
        rows = store.read(0, len(store)).double()
        q = q.double()
        if pre is not None:
            q = q @ pre.double()
        if normalize:
            rows = F.normalize(rows, dim=1)
            q = F.normalize(q, dim=1)
        part = w * (q @ rows.T)
        total = part if total is None else total + part
    values, indices = torch.topk(total, min(k, total.shape[1]), dim=1)
    return values.float(), indices
