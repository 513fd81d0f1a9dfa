"""What the TRAK and dattri adapters share: per-parameter projection by offsets.

A gradient handed over as a dict of per-parameter blocks is projected block by block at
running column offsets and summed, which equals projecting the concatenated vector
(`fasttda.ops.project`'s offset identity) without ever building it.
"""
from __future__ import annotations

import torch

from fasttda import ops

PROJ_TYPES = {"rademacher": "rademacher", "normal": "gaussian", "gaussian": "gaussian", "sjlt": "sjlt"}


def kind_of(proj_type) -> str:
    name = getattr(proj_type, "value", proj_type)
    if name not in PROJ_TYPES:
        raise ValueError(f"proj_type must be one of {sorted(PROJ_TYPES)}, got {proj_type!r}")
    return PROJ_TYPES[name]


def project_blocks(grads, grad_dim: int, proj_dim: int, *, kind: str, seed: int, backend: str) -> torch.Tensor:
    """Project a ``[B, grad_dim]`` tensor or a dict of ``[B, ...]`` blocks to ``[B, proj_dim]`` float32."""
    blocks = list(grads.values()) if isinstance(grads, dict) else [grads]
    if not blocks:
        raise ValueError("grads is empty")
    batch = blocks[0].shape[0]
    out, offset = None, 0
    for block in blocks:
        if block.shape[0] != batch:
            raise ValueError(f"every gradient block must have batch {batch}, got shape {tuple(block.shape)}")
        flat = block.reshape(batch, -1)
        part = ops.project(flat, proj_dim, kind=kind, seed=seed, offset=offset, backend=backend)
        out = part if out is None else out.add_(part)
        offset += flat.shape[1]
    if offset != grad_dim:
        raise ValueError(f"grads hold {offset} values per example but the projector was built for grad_dim={grad_dim}")
    return out
