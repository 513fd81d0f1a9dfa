"""The counter-based hash behind every seeded projection matrix.

Entry (i, j) of a projection matrix is a pure function of (seed, i, j): no state, no
device-dependent tiling, so every backend and every GPU model produces the same matrix
(unlike fast_jl, whose matrix depends on the SM count). ``kernels/_counter_hash.py`` and
``csrc/counter_hash.h`` (shared by the CUDA and the C++ CPU kernel) implement the same
functions; tests check them bit for bit.

Definitions (all arithmetic mod 2**32, ``mix`` = the "lowbias32" finalizer):

    row_key(i) = mix(mix(hi32(i) ^ k_row) ^ lo32(i))          i: input coordinate, 64-bit
    col_key(c) = mix(c ^ k_col)                                c: column counter, 32-bit
    word(i, c) = mix(row_key(i) + col_key(c))

    rademacher: entry(i, j) = -1 if bit (j % 32) of word(i, j // 32) else +1
    gaussian:   (u1, u2) from word(i, 2p), word(i, 2p+1) with p = j // 2;
                r = sqrt(-2 ln u1); entry = r cos(2 pi u2) for even j, r sin(2 pi u2) for odd
    sjlt:       for r < s: h = word(i, r); bucket = (h >> 1) % out_dim; sign = -1 if h & 1

``(k_row, k_col)`` come from `seed_keys(seed, kind)`, so each kind draws an independent
matrix from the same seed. The reference computes in int64 holding 32-bit values because
torch's CPU uint32 lacks shifts; products are masked back to 32 bits.
"""
from __future__ import annotations

import math

import torch

from fasttda.ops._checks import check_seed

MASK32 = 0xFFFFFFFF
MIX_MUL1 = 0x7FEB352D
MIX_MUL2 = 0x846CA68B
GOLDEN = 0x9E3779B9
KIND_STREAM = {"rademacher": 1, "gaussian": 2, "sjlt": 3, "grass": 4}
U24 = 1.0 / (1 << 24)
TWO_PI = 2.0 * math.pi


def mix_int(x: int) -> int:
    """lowbias32 on a Python int (used for seeds)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_MUL1) & MASK32
    x ^= x >> 15
    x = (x * MIX_MUL2) & MASK32
    x ^= x >> 16
    return x


def seed_keys(seed: int, kind: str) -> tuple[int, int]:
    """Fold a 64-bit seed and the kind's stream into the two 32-bit keys."""
    seed = check_seed(seed)
    stream = KIND_STREAM[kind]
    lo, hi = seed & MASK32, seed >> 32
    base = mix_int(lo ^ mix_int(hi ^ GOLDEN))
    k_row = mix_int(base ^ (stream * 0x85EBCA6B & MASK32))
    k_col = mix_int(base + GOLDEN * (stream + 1))
    return k_row, k_col


def mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on an int64 tensor holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * MIX_MUL1) & MASK32  # may wrap past 2**63; the low 32 bits are still right
    x = x ^ (x >> 15)
    x = (x * MIX_MUL2) & MASK32
    return x ^ (x >> 16)


def row_keys(start: int, count: int, k_row: int, device=None) -> torch.Tensor:
    i = torch.arange(start, start + count, dtype=torch.int64, device=device)
    return mix(mix((i >> 32) ^ k_row) ^ (i & MASK32))


def col_keys(count: int, k_col: int, device=None) -> torch.Tensor:
    c = torch.arange(count, dtype=torch.int64, device=device)
    return mix(c ^ k_col)


def words(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """word(i, c) for every pair: ``[len(rows), len(cols)]`` int64."""
    return mix((rows[:, None] + cols[None, :]) & MASK32)


def gaussian_from_words(w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box–Muller in float32: returns (r cos, r sin). u1 in (0, 1] so the log is finite."""
    u1 = ((w1 >> 8) + 1).to(torch.float32) * U24
    u2 = (w2 >> 8).to(torch.float32) * U24
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = u2 * TWO_PI
    return r * torch.cos(theta), r * torch.sin(theta)
