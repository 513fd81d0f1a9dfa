"""How one module's per-token factors (x, dy) become its per-example feature block.

Three projections, each a pair of steps around the backward pass:

* `Factored` (LoGra): the forward step projects x to ``[B, N, k_in]`` right away, so only
  that is held until the backward step projects dy and sums ``pdyᵀ px`` over tokens.
  With ``hold_inputs=True`` x itself is held and the fused kernel
  `fasttda.ops.project_factored` does both projections and the sum in one pass (same
  features, more memory).
* `Dense`: the exact per-example gradient ``Σ_t dy xᵀ`` in the weight's layout, projected
  with `fasttda.ops.project` at the module's parameter offset, a few weight rows at a time;
  summed over modules this is the projection of the flattened gradient of all selected
  parameters.
* raw (``projection=None``): the exact per-example gradient itself, flattened.

Dense and raw hold each module's x from forward to backward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Functions are imported from their modules: once a submodule such as fasttda.ops.project
# is imported, the package attribute `fasttda.ops.project` is that module, not the function.
from fasttda.ops.project import project, projection_matrix
from fasttda.ops.project_factored import KINDS as FACTORED_KINDS
from fasttda.ops.project_factored import factored_seeds, project_factored

DENSE_CHUNK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class Factored:
    """LoGra-style ``k_out × k_in`` block per module (``k_out`` defaults to ``k_in``)."""

    k_in: int = 16
    k_out: int | None = None
    kind: str = "rademacher"

    def __post_init__(self):
        if self.k_out is None:
            object.__setattr__(self, "k_out", self.k_in)
        for name in ("k_in", "k_out"):
            k = getattr(self, name)
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"Factored.{name} must be an int >= 1, got {k!r}")
        if self.kind not in FACTORED_KINDS:
            raise ValueError(f"Factored.kind must be one of {FACTORED_KINDS}, got {self.kind!r}")

    def describe(self) -> dict:
        return {"type": "factored", "k_in": self.k_in, "k_out": self.k_out, "kind": self.kind}


@dataclass(frozen=True)
class Dense:
    """One ``[k]`` projection of the whole selected gradient (kinds of `fasttda.ops.project`)."""

    k: int
    kind: str = "rademacher"
    s: int = 1

    def __post_init__(self):
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"Dense.k must be an int >= 1, got {self.k!r}")
        if self.kind not in ("rademacher", "gaussian", "sjlt"):
            raise ValueError(f"Dense.kind must be 'rademacher', 'gaussian' or 'sjlt', got {self.kind!r}")
        if not isinstance(self.s, int) or isinstance(self.s, bool) or self.s < 1:
            raise ValueError(f"Dense.s must be an int >= 1, got {self.s!r}")

    def describe(self) -> dict:
        return {"type": "dense", "k": self.k, "kind": self.kind, "s": self.s}


def parse_projection(projection):
    """None (raw), `Factored`, `Dense`, "factored" (16×16), ("factored", k_in[, k_out]) or ("dense", k)."""
    if projection is None or isinstance(projection, (Factored, Dense)):
        return projection
    if projection == "factored":
        return Factored()
    if isinstance(projection, tuple) and projection and projection[0] in ("factored", "dense"):
        args = projection[1:]
        if projection[0] == "factored" and len(args) in (1, 2):
            return Factored(*args)
        if projection[0] == "dense" and len(args) == 1:
            return Dense(*args)
    raise ValueError(
        "projection must be None, 'factored', ('factored', k_in[, k_out]), ('dense', k), "
        f"fasttda.capture.Factored(...) or fasttda.capture.Dense(...); got {projection!r}"
    )


def describe(projection) -> dict:
    return {"type": "raw"} if projection is None else projection.describe()


def block_width(projection, block_numel: int) -> int:
    if projection is None:
        return block_numel
    if isinstance(projection, Factored):
        return projection.k_out * projection.k_in
    return projection.k


def block_shape(projection, kind: str, d_in: int, d_out: int) -> tuple[int, ...]:
    if projection is None:
        return (d_out, d_in) if kind == "linear" else (d_in, d_out)
    if isinstance(projection, Factored):
        return (projection.k_out, projection.k_in)
    return (projection.k,)


def _masked(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # where(), not a product: NaN at padding must not leak into the sums.
    return t if mask is None else torch.where(mask[:, :, None], t, torch.zeros((), dtype=t.dtype, device=t.device))


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _op_dtype(t: torch.Tensor) -> torch.Tensor:
    """The ops take float32/bf16/fp16; float64 models hand them float32."""
    return t.to(torch.float32) if t.dtype == torch.float64 else t


# -- forward step: what each projection holds until the backward pass ---------------------
def keep_input(projection, block, x, mask, *, hold_inputs: bool, backend):
    """x ``[B, N, d_in]`` (detached) → what the backward step needs."""
    if isinstance(projection, Factored) and not hold_inputs:
        seed_in, _ = factored_seeds(block.seed)
        B, N, d_in = x.shape
        px = project(_op_dtype(x).reshape(B * N, d_in), projection.k_in, kind=projection.kind,
                         seed=seed_in, backend=backend).reshape(B, N, -1)
        if block.bias:
            px += projection_matrix(1, projection.k_in, kind=projection.kind, seed=seed_in,
                                        offset=d_in, device=x.device)[0]
        return _masked(px, mask)
    return x


# -- backward step ------------------------------------------------------------------------
def block_features(projection, block, kept, dy, mask, *, hold_inputs: bool, backend) -> torch.Tensor:
    """dy ``[B, N, d_out]`` and the kept input → the module's ``[B, width]`` float32 contribution."""
    if isinstance(projection, Factored):
        if hold_inputs:
            return _fused_factored(projection, block, kept, dy, mask, backend)
        _, seed_out = factored_seeds(block.seed)
        B, N, d_out = dy.shape
        pdy = project(_op_dtype(dy).reshape(B * N, d_out), projection.k_out, kind=projection.kind,
                          seed=seed_out, backend=backend).reshape(B, N, -1)
        return torch.bmm(_masked(pdy, mask).transpose(1, 2), kept).reshape(B, -1)
    x = _masked(kept.to(_work_dtype(kept)), mask)
    dy = _masked(dy.to(x.dtype), mask)
    if projection is None:
        return _raw_gradient(block, x, dy).to(torch.float32)
    return _dense_projection(projection, block, x, dy, backend)


def _fused_factored(projection, block, x, dy, mask, backend):
    x = _op_dtype(x)
    if block.bias:
        x = torch.cat([x, torch.ones_like(x[:, :, :1])], dim=2)
    return project_factored(x, _op_dtype(dy).to(x.dtype), k_in=projection.k_in, k_out=projection.k_out,
                                seed=block.seed, mask=mask, kind=projection.kind, backend=backend)


def _weight_rows(block, x, dy, lo, hi):
    """Rows ``[lo, hi)`` of the per-example weight gradient in the weight's layout, ``[B, rows, cols]``."""
    if block.kind == "linear":
        return torch.bmm(dy[:, :, lo:hi].transpose(1, 2), x)
    return torch.bmm(x[:, :, lo:hi].transpose(1, 2), dy)


def _raw_gradient(block, x, dy):
    B = x.shape[0]
    rows = block.d_out if block.kind == "linear" else block.d_in
    parts = [_weight_rows(block, x, dy, 0, rows).reshape(B, -1)]
    if block.bias:
        parts.append(dy.sum(1))
    return torch.cat(parts, dim=1)


def _dense_projection(projection, block, x, dy, backend):
    B = x.shape[0]
    rows, cols = (block.d_out, block.d_in) if block.kind == "linear" else (block.d_in, block.d_out)
    step = max(1, DENSE_CHUNK_ENTRIES // (B * cols))
    out = None
    pieces = [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]
    for lo, hi in pieces:
        g = _weight_rows(block, x, dy, lo, hi).reshape(B, -1)
        part = project(_op_dtype(g), projection.k, kind=projection.kind, seed=_dense_seed(block),
                           offset=block.param_offset + lo * cols, s=projection.s, backend=backend)
        out = part if out is None else out.add_(part)
    if block.bias:
        out.add_(project(_op_dtype(dy.sum(1)), projection.k, kind=projection.kind, seed=_dense_seed(block),
                             offset=block.param_offset + rows * cols, s=projection.s, backend=backend))
    return out


def _dense_seed(block) -> int:
    # Dense projects one concatenated gradient, so every module uses the global seed
    # (stored in the block's `seed` slot by the layout builder) with its own offset.
    return block.seed
