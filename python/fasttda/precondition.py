"""Preconditioners for scoring, in projected space: q ← q · H⁻¹, applied to the queries once.

* `fit(store, damping)`: H = GᵀG / N + λ·I over the store's rows G (dequantized), the
  damped Gauss-Newton / Fisher inverse TRAK and LoGra use. GᵀG is accumulated in float64
  a chunk at a time (memory: one chunk plus d×d float64), then inverted by Cholesky.
* `fit(store, damping, kind="diagonal")`: only the diagonal of GᵀG / N, plus λ.
* `diagonal(values)` / `from_adam(exp_avg_sq)`: a given diagonal, e.g. LESS's Adam
  second moment (q ← q / (√v + ε)), already in the store's (projected) coordinates.

Because H is symmetric, preconditioning the queries is the same as preconditioning every
row: ⟨q·H⁻¹, r⟩ = ⟨q, r·H⁻¹⟩, so the store is never rewritten.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

KINDS = ("full", "diagonal")


@dataclass
class Preconditioner:
    """``inverse`` is H⁻¹: ``[d, d]`` float64 (``kind="full"``) or its diagonal ``[d]`` (``"diagonal"``)."""

    kind: str
    inverse: torch.Tensor
    damping: float = 0.0
    rows: int = 0

    @property
    def dim(self) -> int:
        return self.inverse.shape[0]

    def apply(self, queries: torch.Tensor) -> torch.Tensor:
        """``queries [Q, d]`` times H⁻¹, computed in float64, returned as float32."""
        if not isinstance(queries, torch.Tensor) or queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}] for this preconditioner, got "
                             f"{getattr(queries, 'shape', type(queries).__name__)}")
        q = queries.to(device=self.inverse.device, dtype=torch.float64)
        out = q @ self.inverse if self.kind == "full" else q * self.inverse
        return out.to(device=queries.device, dtype=torch.float32)

    def save(self, path) -> None:
        """``<path>.safetensors`` (H⁻¹) and ``<path>.json`` (kind, damping, rows)."""
        from safetensors.torch import save_file

        path = Path(path)
        save_file({"inverse": self.inverse.contiguous().cpu()}, str(path.with_suffix(".safetensors")))
        path.with_suffix(".json").write_text(json.dumps({"kind": self.kind, "damping": self.damping, "rows": self.rows}))

    @classmethod
    def load(cls, path) -> "Preconditioner":
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(meta["kind"], load_file(str(path.with_suffix(".safetensors")))["inverse"], meta["damping"], meta["rows"])


def fit(store, damping: float, *, kind: str = "full", chunk_rows: int = 16384) -> Preconditioner:
    """Stream ``store`` once and return the inverse of GᵀG / N + damping·I.

    ``store`` is anything with ``iter_chunks(rows)`` yielding chunks with ``data``,
    ``scale`` and ``fmt`` (a `fasttda.FeatureStore`), plus ``dim``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(damping, (int, float)) or isinstance(damping, bool) or not math.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite float >= 0, got {damping!r}")
    from fasttda.ops.quantize import dequantize

    dim = store.dim
    gram = torch.zeros((dim, dim) if kind == "full" else (dim,), dtype=torch.float64)
    rows = 0
    for chunk in store.iter_chunks(chunk_rows):
        g = dequantize(chunk.data, chunk.scale, chunk.fmt, dim=dim).to(device="cpu", dtype=torch.float64)
        if kind == "full":
            gram.addmm_(g.T, g)
        else:
            gram += (g * g).sum(dim=0)
        rows += g.shape[0]
    if rows == 0:
        raise ValueError("the store has no rows to fit a preconditioner on")
    gram /= rows
    if kind == "diagonal":
        h = gram + damping
        if (h <= 0).any():
            raise ValueError("GᵀG/N has zero entries on its diagonal and damping is 0; give damping > 0")
        return Preconditioner("diagonal", 1.0 / h, float(damping), rows)
    h = gram + damping * torch.eye(dim, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(h)
    # A singular h can still factor, its last pivots rounding noise (whether LAPACK then
    # reports it depends on the machine's BLAS): a pivot below the rounding of the largest
    # diagonal entry counts as zero, so the answer is the same everywhere.
    floor = dim * torch.finfo(torch.float64).eps * float(h.diagonal().abs().max())
    if info.item() != 0 or not bool((chol.diagonal() ** 2 > floor).all()):
        raise ValueError(f"GᵀG/N + {damping}·I is not positive definite ({rows} rows, dim {dim}); "
                         "increase damping")
    return Preconditioner("full", torch.cholesky_inverse(chol), float(damping), rows)


def diagonal(values: torch.Tensor) -> Preconditioner:
    """A diagonal preconditioner q ← q · values (``values`` is the diagonal of H⁻¹, [d])."""
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"values must be a 1-D tensor [d], got {getattr(values, 'shape', type(values).__name__)}")
    values = values.to(torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError("values must be finite")
    return Preconditioner("diagonal", values)


def from_adam(exp_avg_sq: torch.Tensor, eps: float = 1e-8) -> Preconditioner:
    """LESS's Adam preconditioner: H⁻¹ = diag(1 / (√v + ε)), from Adam's second moment v."""
    if not isinstance(exp_avg_sq, torch.Tensor) or exp_avg_sq.dim() != 1 or (exp_avg_sq < 0).any():
        raise ValueError("exp_avg_sq must be a 1-D tensor of Adam second moments (>= 0)")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    return diagonal(1.0 / (exp_avg_sq.to(torch.float64).sqrt() + eps))


def as_preconditioner(value) -> Preconditioner | None:
    """None, a `Preconditioner`, a ``[d, d]`` H⁻¹ or a ``[d]`` diagonal of H⁻¹."""
    if value is None or isinstance(value, Preconditioner):
        return value
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return diagonal(value)
    if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[0] == value.shape[1]:
        return Preconditioner("full", value.to(torch.float64))
    raise TypeError("preconditioner must be a Preconditioner, a [d, d] inverse or a [d] diagonal, got "
                    f"{getattr(value, 'shape', type(value).__name__)}")
