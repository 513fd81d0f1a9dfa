"""Triton kernel for `fasttda.ops.project_factored`: both projections and the token sum, fused.

One program owns (example b, a token split, a k_out tile, a k_in tile). For each tile of
BLOCK_T tokens it projects x and dy with tiles of P_in and P_out generated in registers
from the counter hash (P is never read from memory), then adds ``pdyᵀ · px`` to a
``[BLOCK_KO, BLOCK_KI]`` float32 accumulator. Projected tokens and per-token outer products
never leave registers. Masked tokens are loaded as zeros, so NaN/inf at padding cannot leak.
Rademacher tiles hash one 32-bit word per 32 columns and expand its bits, so generating P
costs a thirty-second of a hash per entry; Gaussian tiles use the shared `gaussian_tile`.

Token splits (more programs when B is small and T long) write partial sums to a
``[split, B, k_out, k_in]`` buffer that is summed afterwards: deterministic, no atomics.
When k_out or k_in exceed one tile, the other side's projection is recomputed per tile;
ranks up to 64 fit in one tile.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fasttda.kernels._counter_hash import col_keys, gaussian_tile, row_keys, words
from fasttda.kernels._launch import as_i32, interpreted, launch, multiprocessor_count

MAX_BLOCK_K = 64
MIN_BLOCK_K = 32  # a Rademacher tile spans whole 32-column hash words


@triton.jit
def _rademacher_words_tile(rk, col0, k_col, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Unscaled ±1 tile ``[BLOCK_R, BLOCK_K]`` of columns ``col0 + [0, BLOCK_K)``, ``col0 % 32 == 0``.

    Same entries as `rademacher_tile_packed`, but each hash word is computed once and expanded
    into its 32 signs, instead of once per column: 32× less hashing.
    """
    N_WORDS: tl.constexpr = BLOCK_K // 32
    word_idx = (col0 >> 5) + tl.arange(0, N_WORDS)
    w = words(rk[:, None], col_keys(word_idx, k_col)[None, :])  # [BLOCK_R, N_WORDS]
    bits = (w[:, :, None] >> tl.arange(0, 32).to(tl.uint32)[None, None, :]) & 1
    return tl.reshape(1.0 - 2.0 * bits.to(tl.float32), (BLOCK_R, BLOCK_K))


@triton.jit
def _project_tokens(ptr, b, t, t_ok, stride_b, stride_t, stride_d, D, col0, k_row, k_col,
                    GAUSSIAN: tl.constexpr, NATIVE_DOT: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """Unscaled ``[BLOCK_T, BLOCK_K]`` projection of one token tile onto columns ``col0 + [0, BLOCK_K)``."""
    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        # int64 offsets: B·T·d passes 2**31 for long sequences of wide layers
        tile = tl.load(ptr + b.to(tl.int64) * stride_b + t[:, None].to(tl.int64) * stride_t
                       + d[None, :].to(tl.int64) * stride_d,
                       mask=t_ok[:, None] & (d < D)[None, :], other=0.0)
        rk = row_keys(d.to(tl.int64), k_row)
        if GAUSSIAN:
            p = gaussian_tile(rk, col0, k_col, BLOCK_K)
        else:
            p = _rademacher_words_tile(rk, col0, k_col, BLOCK_D, BLOCK_K)
        if NATIVE_DOT:
            # ±1 is exact in bf16/fp16: keep the tensor-core dtype, accumulate in fp32.
            acc += tl.dot(tile, p.to(tile.dtype))
        else:
            acc += tl.dot(tile.to(tl.float32), p, input_precision=PRECISION)
    return acc


@triton.jit(do_not_specialize=["kin_row", "kin_col", "kout_row", "kout_col"])
def _project_factored_kernel(
    x_ptr, dy_ptr, mask_ptr, out_ptr,
    T, D_IN, D_OUT, K_IN, K_OUT, B, SPLIT, TOKENS_PER_SPLIT,
    sxb, sxt, sxd, sdb, sdt, sdd, smb, smt,
    kin_row, kin_col, kout_row, kout_col, scale,
    HAS_MASK: tl.constexpr, GAUSSIAN: tl.constexpr, NATIVE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_KI: tl.constexpr, BLOCK_KO: tl.constexpr,
):
    """Per-example ``Σ_t (P_outᵀ dy_t)(P_inᵀ x_t)ᵀ`` for one (example, token split, tile).

    Precision: float32 inputs use ``input_precision=PRECISION`` ("tf32x3": three TF32
    tensor-core products, about float32 accuracy) for both projections and the outer
    product; bf16/fp16 Rademacher inputs (``NATIVE_DOT``) use 16-bit tensor cores for the
    projections (±1 is exact) and accumulate in float32. Division: none (the scale is a
    host-side float).

    Numerics: dot=tf32x3+16bit; div=none.
    """
    pid = tl.program_id(0)
    b = pid // SPLIT
    split = pid % SPLIT
    ko0 = tl.program_id(1) * BLOCK_KO
    ki0 = tl.program_id(2) * BLOCK_KI
    ko = ko0 + tl.arange(0, BLOCK_KO)
    ki = ki0 + tl.arange(0, BLOCK_KI)
    t_start = split * TOKENS_PER_SPLIT
    t_end = tl.minimum(T, t_start + TOKENS_PER_SPLIT)
    acc = tl.zeros((BLOCK_KO, BLOCK_KI), dtype=tl.float32)
    for t0 in range(t_start, t_end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < t_end
        if HAS_MASK:
            keep = tl.load(mask_ptr + b.to(tl.int64) * smb + t.to(tl.int64) * smt, mask=t_ok, other=0)
            t_ok = t_ok & (keep != 0)
        px = _project_tokens(x_ptr, b, t, t_ok, sxb, sxt, sxd, D_IN, ki0, kin_row, kin_col,
                             GAUSSIAN, NATIVE_DOT, PRECISION, BLOCK_T, BLOCK_D, BLOCK_KI)
        pdy = _project_tokens(dy_ptr, b, t, t_ok, sdb, sdt, sdd, D_OUT, ko0, kout_row, kout_col,
                              GAUSSIAN, NATIVE_DOT, PRECISION, BLOCK_T, BLOCK_D, BLOCK_KO)
        acc += tl.dot(tl.trans(pdy), px, input_precision=PRECISION)
    out = out_ptr + (((split.to(tl.int64) * B + b) * K_OUT + ko[:, None]) * K_IN + ki[None, :])
    tl.store(out, acc * scale, mask=(ko < K_OUT)[:, None] & (ki < K_IN)[None, :])


def _block_k(k: int) -> int:
    return min(MAX_BLOCK_K, max(MIN_BLOCK_K, triton.next_power_of_2(k)))


def _token_splits(B: int, T: int, tiles: int, block_t: int, device: torch.device) -> int:
    if interpreted(device):
        return 1
    programs_wanted = 2 * multiprocessor_count(device)
    # at least two token tiles per program; 4 capped B=32, T=512 at 64 programs on 132 SMs
    per_split_min = 2 * block_t
    return max(1, min(-(-programs_wanted // (B * tiles)), -(-T // per_split_min)))


def launch_project_factored(x, dy, mask, k_in, k_out, kind, keys_in, keys_out, *, split_t=None):
    """Launch on checked inputs; ``split_t`` forces the number of token splits (tests)."""
    B, T, d_in = x.shape
    d_out = dy.shape[2]
    block_ki, block_ko = _block_k(k_in), _block_k(k_out)
    # GPU tile sizes are a first guess, not yet tuned on hardware.
    # GPU tiles: BLOCK_T = 64 spilled at 64-wide k tiles in tf32x3 (compile check); 32 does not.
    block_t, block_d, warps = (16, 16, 4) if interpreted(x.device) else (32, 32, 8)
    tiles_ko, tiles_ki = -(-k_out // block_ko), -(-k_in // block_ki)
    split = split_t or _token_splits(B, T, tiles_ko * tiles_ki, block_t, x.device)
    tokens_per_split = -(-T // split)
    gaussian = kind == "gaussian"
    # The interpreter mis-evaluates 16-bit tl.dot, so the 16-bit tensor-core path is GPU-only.
    native = ((not gaussian) and not interpreted(x.device) and x.dtype == dy.dtype
              and x.dtype in (torch.bfloat16, torch.float16))
    mask_u8 = mask.to(torch.uint8) if mask is not None else None
    m = mask_u8 if mask_u8 is not None else x
    m_strides = mask_u8.stride() if mask_u8 is not None else (0, 0)
    partial = torch.empty(split, B, k_out, k_in, dtype=torch.float32, device=x.device)
    scale = 1.0 / math.sqrt(k_in * k_out)
    grid = (B * split, tiles_ko, tiles_ki)
    launch(
        _project_factored_kernel, grid,
        x, dy, m, partial,
        T, d_in, d_out, k_in, k_out, B, split, tokens_per_split,
        *x.stride(), *dy.stride(), *m_strides,
        *(as_i32(k) for k in (*keys_in, *keys_out)), scale,
        HAS_MASK=mask is not None, GAUSSIAN=gaussian, NATIVE_DOT=native, PRECISION="tf32x3",
        BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_KI=block_ki, BLOCK_KO=block_ko, num_warps=warps,
    )
    out = partial[0] if split == 1 else partial.sum(0)
    return out.reshape(B, k_out * k_in)
