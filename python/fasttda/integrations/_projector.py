"""What the TRAK and dattri adapters share: per-parameter projection by offsets.

A gradient handed over as a dict of per-parameter blocks is projected block by block at
running column offsets and summed, which equals projecting the concatenated vector
(`fasttda.ops.project`'s offset identity) without ever building it.

Each host has its own scaling convention and the adapters follow it: TRAK's projectors
return the raw sums ``x @ P`` (``scaled=False``), dattri divides dense kinds by
sqrt(proj_dim) (fasttda's convention) and leaves SJLT, ``random_mask`` and ``grass`` raw.

float64 gradients are accepted: they are rounded to float32 block by block and projected
in float32 (fasttda's kernels accumulate in float32); the caller casts the result back.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from fasttda import ops
from fasttda.ops._checks import check_seed

PROJ_TYPES = {"rademacher": "rademacher", "normal": "gaussian", "gaussian": "gaussian", "sjlt": "sjlt",
              "random_mask": "random_mask", "grass": "grass"}
GRASS_MULTIPLIER = 4  # dattri's default intermediate dim: 4 * proj_dim


@dataclass(frozen=True)
class Kind:
    name: str                      # rademacher | gaussian | sjlt | random_mask | grass
    grass_multiplier: int = GRASS_MULTIPLIER


def kind_of(proj_type) -> Kind:
    """A host's projection type (enum or string; dattri's ``"grass_N"`` too) as a `Kind`."""
    name = getattr(proj_type, "value", proj_type)
    if isinstance(name, str):
        match = re.fullmatch(r"grass_(\d+)", name)
        if match and int(match[1]) >= 1:
            return Kind("grass", int(match[1]))
    if name not in PROJ_TYPES:
        raise ValueError(f"proj_type must be one of {sorted(PROJ_TYPES)} or 'grass_N', got {proj_type!r}")
    return Kind(PROJ_TYPES[name])


def _as_matrix(block: torch.Tensor, batch: int) -> torch.Tensor:
    if block.shape[0] != batch:
        raise ValueError(f"every gradient block must have batch {batch}, got shape {tuple(block.shape)}")
    flat = block.reshape(batch, -1)
    return flat.to(torch.float32) if flat.dtype == torch.float64 else flat


def mask_indices(grad_dim: int, proj_dim: int, seed: int) -> torch.Tensor:
    """dattri's ``random_mask``: ``proj_dim`` distinct coordinates of ``grad_dim``, sorted (int64)."""
    if proj_dim > grad_dim:
        raise ValueError(f"random_mask keeps proj_dim={proj_dim} coordinates but grads hold only {grad_dim}")
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(grad_dim, size=proj_dim, replace=False)).astype(np.int64))


def project_blocks(grads, grad_dim: int, proj_dim: int, *, kind, seed, backend: str,
                   scaled: bool = True) -> torch.Tensor:
    """Project a ``[B, grad_dim]`` tensor or a dict of ``[B, ...]`` blocks to ``[B, proj_dim]`` float32.

    ``scaled``: dense kinds divided by sqrt(proj_dim) (fasttda's and dattri's convention)
    or not (TRAK's). ``kind`` is a `Kind` or a name.
    """
    kind = kind if isinstance(kind, Kind) else kind_of(kind)
    seed = check_seed(seed)
    blocks = list(grads.values()) if isinstance(grads, dict) else [grads]
    if not blocks:
        raise ValueError("grads is empty")
    batch = blocks[0].shape[0]
    if kind.name == "random_mask":
        return _mask_blocks(blocks, batch, grad_dim, proj_dim, seed)
    out, offset = None, 0
    keep = min(1.0, kind.grass_multiplier * proj_dim / grad_dim)
    for block in blocks:
        flat = _as_matrix(block, batch)
        if kind.name == "grass":
            part = ops.project_grass(flat, proj_dim, keep=keep, seed=seed, offset=offset, scaled=False,
                                     backend=backend)
        else:
            part = ops.project(flat, proj_dim, kind=kind.name, seed=seed, offset=offset, backend=backend)
        out = part if out is None else out.add_(part)
        offset += flat.shape[1]
    if offset != grad_dim:
        raise ValueError(f"grads hold {offset} values per example but the projector was built for grad_dim={grad_dim}")
    if not scaled and kind.name in ("rademacher", "gaussian"):
        out.mul_(math.sqrt(proj_dim))  # undo fasttda's 1/sqrt(k): the raw sums x @ P, float32 rounding aside
    return out


def _mask_blocks(blocks, batch, grad_dim, proj_dim, seed) -> torch.Tensor:
    dims = [_as_matrix(b, batch).shape[1] for b in blocks]
    if sum(dims) != grad_dim:
        raise ValueError(f"grads hold {sum(dims)} values per example but the projector was built for grad_dim={grad_dim}")
    idx = mask_indices(grad_dim, proj_dim, seed)
    parts, start = [], 0
    for block, dim in zip(blocks, dims):
        lo, hi = torch.searchsorted(idx, torch.tensor([start, start + dim]))
        if hi > lo:
            local = (idx[lo:hi] - start).to(block.device)
            parts.append(_as_matrix(block, batch).index_select(1, local).to(torch.float32))
        start += dim
    return torch.cat(parts, 1)
