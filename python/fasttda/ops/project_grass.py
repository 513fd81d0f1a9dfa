"""`project_grass`: GraSS (Hu et al., 2025), a sparse random mask followed by an SJLT.

Input coordinate i is kept with probability ``keep`` and, if kept, added with a random
sign to one of ``out_dim`` buckets. Both choices are pure functions of (seed, i) from
`fasttda.ops._counter_hash` (stream ``"grass"``), so the offset identity of
`fasttda.ops.project` holds and a gradient can be projected per parameter block:

    word_m(i) = word(i, 1)    kept(i)  = (word_m(i) >> 8) < T,   T = round(keep * 2**24)
    word_s(i) = word(i, 0)    bucket(i) = (word_s(i) >> 1) % out_dim,  sign(i) = -1 if word_s(i) & 1

The mask is a Bernoulli mask (each coordinate independently, ``keep * D`` kept on
average) rather than GraSS's fixed-size subset: a fixed-size subset needs the whole D up
front, the Bernoulli mask streams. Its cost is O(keep·D) scatters per row instead of O(D)
multiply-adds.

Scaling: ``scaled=True`` (fasttda's convention) multiplies by ``1/sqrt(T / 2**24)`` so that
``E||y||² = ||x||²``; ``scaled=False`` returns the raw masked sums, which is dattri's
convention for its ``"grass"`` projector. Sums are accumulated in float32.
"""
from __future__ import annotations

import math

import torch

from fasttda._dispatch import Op, common_device
from fasttda.ops import _counter_hash as ch
from fasttda.ops._checks import check_float_tensor

KEEP_BITS = 24
BLOCK_ENTRIES = 1 << 22


def project_grass(
    x: torch.Tensor,
    out_dim: int,
    *,
    keep: float,
    seed: int = 0,
    offset: int = 0,
    scaled: bool = True,
    backend: str | None = "auto",
) -> torch.Tensor:
    """Project the rows of ``x`` ``[B, D]`` to ``[B, out_dim]`` float32 with a GraSS sketch.

    Args:
        x: ``[B, D]`` float32, bfloat16 or float16; any strides.
        out_dim: number of SJLT buckets k ≥ 1.
        keep: probability in (0, 1] that an input coordinate survives the mask; GraSS's
            "intermediate dimension" is ``keep * D_total``.
        seed: any integer in [0, 2**64) (numpy integers too).
        offset: global index of ``x``'s first column in the full input space.
        scaled: divide by sqrt(keep) (norm-preserving in expectation); False for dattri's raw sums.
        backend: ``"auto"``, ``"reference"`` or ``"triton"``.
    """
    check_float_tensor(x, "x", "B, D")
    if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim < 1:
        raise ValueError(f"out_dim must be an int >= 1, got {out_dim!r}")
    threshold = keep_threshold(keep)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**62:
        raise ValueError(f"offset must be an int in [0, 2**62), got {offset!r}")
    k_row, k_col = ch.seed_keys(seed, "grass")
    _, impl = PROJECT_GRASS.resolve(backend, common_device(x))
    out = impl(x, out_dim, k_row, k_col, offset, threshold)
    return out.mul_(1.0 / math.sqrt(threshold / (1 << KEEP_BITS))) if scaled else out


def keep_threshold(keep) -> int:
    """The integer mask threshold T for a keep probability (checked)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a probability in (0, 1], got {keep!r}")
    return max(1, min(1 << KEEP_BITS, round(keep * (1 << KEEP_BITS))))


def grass_targets(start: int, rows: int, out_dim: int, k_row: int, k_col: int, threshold: int, device):
    """``(kept, bucket, sign)`` for input coordinates ``[start, start + rows)``, each ``[rows]``."""
    w = ch.words(ch.row_keys(start, rows, k_row, device), ch.col_keys(2, k_col, device))
    kept = (w[:, 1] >> 8) < threshold
    return kept, (w[:, 0] >> 1) % out_dim, 1.0 - 2.0 * (w[:, 0] & 1).to(torch.float32)


def project_grass_reference(x, out_dim, k_row, k_col, offset, threshold):
    B, D = x.shape
    out = torch.zeros(B, out_dim, dtype=torch.float32, device=x.device)
    step = max(1, BLOCK_ENTRIES // B)
    for lo in range(0, D, step):
        hi = min(D, lo + step)
        kept, bucket, sign = grass_targets(offset + lo, hi - lo, out_dim, k_row, k_col, threshold, x.device)
        idx = kept.nonzero().squeeze(1)
        if idx.numel():
            contrib = x[:, lo:hi].index_select(1, idx).to(torch.float32) * sign[idx]
            out.index_add_(1, bucket[idx], contrib)
    return out


PROJECT_GRASS = Op("project_grass", reference=project_grass_reference,
                   triton="fasttda.kernels.project_grass:launch_project_grass")
