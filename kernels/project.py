"""Triton kernels for `fasttda.ops.project`: P is generated tile by tile in registers.

Dense kinds: program (b, k, split) owns an output tile ``[BLOCK_B, BLOCK_K]`` and walks
its slice of D, generating the ``[BLOCK_D, BLOCK_K]`` tile of P from the counter hash and
feeding it to ``tl.dot`` (tensor cores on a GPU). P never touches memory. Few rows make
few output tiles, so D is split across programs (split-K) until the GPU is full, and the
partial sums are reduced in a fixed order afterwards (deterministic).

SJLT: program (b, d) scatters its ``[BLOCK_B, BLOCK_D]`` slice of x to s buckets per
coordinate with atomic adds: O(s·D) per row, no dense fallback. Float atomics make the GPU
summation order vary run to run (last-bit differences); the interpreter and the reference
are sequential.

All forms accumulate unscaled sums in float32; the launcher applies the JL scale once.
"""
import math

import torch
import triton
import triton.language as tl

from fasttda.kernels._counter_hash import gaussian_tile, rademacher_tile_packed, row_keys, sjlt_targets
from fasttda.kernels._launch import as_i32, interpreted, launch, multiprocessor_count


@triton.jit(do_not_specialize=["offset", "k_row", "k_col"])
def _dense_project_kernel(
    x_ptr, out_ptr, B, D, K, stride_xb, stride_xd, offset, k_row, k_col, d_per_split,
    GAUSSIAN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Split-K dense projection of ``[B, D]`` rows onto the ``[D, K]`` counter-hash matrix.

    Precision: float32 x is multiplied with ``input_precision="tf32x3"`` (three TF32 tensor-core
    products, about float32 accuracy); bf16/fp16 x with Rademacher ±1 (exact in 16 bits) on
    16-bit tensor cores; accumulation is float32 throughout. Division: none.

    Numerics: dot=tf32x3+16bit; div=none.
    """
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    split = tl.program_id(2)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    d_start = split.to(tl.int64) * d_per_split
    d_end = tl.minimum(d_start + d_per_split, D)
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for d0 in range(d_start, d_end, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_xb + d[None, :].to(tl.int64) * stride_xd,
            mask=(rows[:, None] < B) & (d[None, :] < d_end), other=0.0,
        )
        rk = row_keys(d.to(tl.int64) + offset, k_row)
        if GAUSSIAN:
            p = gaussian_tile(rk, pid_k * BLOCK_K, k_col, BLOCK_K)
        else:
            p = rademacher_tile_packed(rk, pid_k * (BLOCK_K // 32), BLOCK_K // 32, k_col)
        acc += tl.dot(x.to(DOT_DTYPE), p.to(DOT_DTYPE), input_precision="tf32x3")
    out_ptr += split.to(tl.int64) * B * K
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :]  # rows·K may pass 2**31
    tl.store(out_ptrs, acc, mask=(rows[:, None] < B) & (cols[None, :] < K))


@triton.jit(do_not_specialize=["offset", "k_row", "k_col"])
def _sjlt_project_kernel(
    x_ptr, out_ptr, B, D, K, S, stride_xb, stride_xd, offset, k_row, k_col,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """SJLT scatter: program (d block, b block) adds ``±x`` into s buckets per coordinate.

    D blocks are grid axis 0 (up to 2**31 programs: whole-model gradients), row blocks axis 1.
    Precision: float32 atomic adds, order varies run to run on a GPU. Division: none
    (the bucket is an integer remainder).

    Numerics: dot=none; div=none.
    """
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < B) & (d[None, :] < D)
    x = tl.load(
        x_ptr + rows[:, None].to(tl.int64) * stride_xb + d[None, :].to(tl.int64) * stride_xd,
        mask=mask, other=0.0,
    ).to(tl.float32)
    rk = row_keys(d.to(tl.int64) + offset, k_row)
    for r in range(0, S):
        bucket, sign = sjlt_targets(rk, r, k_col, K)
        tl.atomic_add(out_ptr + rows[:, None].to(tl.int64) * K + bucket[None, :], x * sign[None, :], mask=mask)


@triton.jit(do_not_specialize=["offset", "k_row", "k_col"])
def _dense_matrix_kernel(
    out_ptr, D, K, offset, k_row, k_col,
    GAUSSIAN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Materialize ``[D, K]`` of P (Rademacher ±1 or Gaussian). Precision: no products;
    Gaussian entries use the GPU's sqrt/log/sin/cos (a few ulp from torch's). Division: none.

    Numerics: dot=none; div=none.
    """
    pid_d = tl.program_id(0)
    pid_k = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rk = row_keys(d.to(tl.int64) + offset, k_row)
    if GAUSSIAN:
        p = gaussian_tile(rk, pid_k * BLOCK_K, k_col, BLOCK_K)
    else:
        p = rademacher_tile_packed(rk, pid_k * (BLOCK_K // 32), BLOCK_K // 32, k_col)
    tl.store(out_ptr + d[:, None].to(tl.int64) * K + cols[None, :], p, mask=(d[:, None] < D) & (cols[None, :] < K))


@triton.jit(do_not_specialize=["offset", "k_row", "k_col"])
def _sjlt_matrix_kernel(out_ptr, D, K, S, offset, k_row, k_col, BLOCK_D: tl.constexpr):
    """Materialize SJLT's ``[D, K]``: s signed ones per row (atomic adds of ±1, exact).
    Precision: exact small integers. Division: none.

    Numerics: dot=none; div=none.
    """
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    rk = row_keys(d.to(tl.int64) + offset, k_row)
    for r in range(0, S):
        bucket, sign = sjlt_targets(rk, r, k_col, K)
        tl.atomic_add(out_ptr + d.to(tl.int64) * K + bucket, sign, mask=d < D)


def _dot_dtype(x: torch.Tensor, gaussian: bool):
    # ±1 is exact in 16-bit floats, so Rademacher tiles follow x's dtype onto the tensor
    # cores; Gaussian entries stay float32 so the matrix is the same on every backend.
    # The CPU interpreter has no bfloat16 matmul (it multiplies the raw bits), so it
    # stays in float32 there.
    if interpreted(x.device):
        return tl.float32
    if not gaussian and x.dtype == torch.bfloat16:
        return tl.bfloat16
    if not gaussian and x.dtype == torch.float16:
        return tl.float16
    return tl.float32


def _scale(kind: str, out_dim: int, s: int) -> float:
    return 1.0 / math.sqrt(s if kind == "sjlt" else out_dim)


def launch_project(x, out_dim, kind, k_row, k_col, offset, s):
    B, D = x.shape
    cpu = interpreted(x.device)
    k_row, k_col = as_i32(k_row), as_i32(k_col)
    if kind == "sjlt":
        out = torch.zeros(B, out_dim, dtype=torch.float32, device=x.device)
        BLOCK_B, BLOCK_D = (16, 64) if cpu else (16, 128)
        grid = (triton.cdiv(D, BLOCK_D), triton.cdiv(B, BLOCK_B))
        launch(_sjlt_project_kernel, grid, x, out, B, D, out_dim, s, x.stride(0), x.stride(1), offset, k_row, k_col,
               BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D)
    else:
        gaussian = kind == "gaussian"
        BLOCK_B = 16 if B <= 16 else (32 if B <= 32 else 64)
        BLOCK_K = 64 if cpu else 128
        # GPU: [64, 16] × [16, 128] tf32x3 tiles on 8 warps fit the registers (the compile
        # check found 7 KB of spills per thread with BLOCK_D = 64).
        BLOCK_D = 32 if cpu else 16
        tiles = triton.cdiv(B, BLOCK_B) * triton.cdiv(out_dim, BLOCK_K)
        splits = _splits(x.device, tiles, triton.cdiv(D, BLOCK_D))
        d_per_split = triton.cdiv(triton.cdiv(D, splits), BLOCK_D) * BLOCK_D
        splits = triton.cdiv(D, d_per_split)
        partial = torch.empty(splits, B, out_dim, dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(out_dim, BLOCK_K), splits)
        launch(_dense_project_kernel, grid, x, partial, B, D, out_dim, x.stride(0), x.stride(1), offset, k_row,
               k_col, d_per_split, GAUSSIAN=gaussian, BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D,
               BLOCK_K=BLOCK_K, DOT_DTYPE=_dot_dtype(x, gaussian), **({} if cpu else {"num_warps": 8}))
        out = partial[0] if splits == 1 else partial.sum(0)
    return out.mul_(_scale(kind, out_dim, s))


def _splits(device: torch.device, tiles: int, d_blocks: int) -> int:
    """How many slices of D to give separate programs: about 4 programs per SM on a GPU;
    two on the interpreter whenever D allows, so the split path is what the tests check."""
    if interpreted(device):
        return min(2, d_blocks)
    sms = multiprocessor_count(device)
    return max(1, min(triton.cdiv(4 * sms, tiles), triton.cdiv(d_blocks, 4)))


def launch_matrix(in_dim, out_dim, kind, k_row, k_col, offset, s, device):
    k_row, k_col = as_i32(k_row), as_i32(k_col)
    if kind == "sjlt":
        out = torch.zeros(in_dim, out_dim, dtype=torch.float32, device=device)
        BLOCK_D = 64
        launch(_sjlt_matrix_kernel, (triton.cdiv(in_dim, BLOCK_D),), out, in_dim, out_dim, s, offset, k_row, k_col,
               BLOCK_D=BLOCK_D)
        return out
    out = torch.empty(in_dim, out_dim, dtype=torch.float32, device=device)
    BLOCK_D, BLOCK_K = 32, 64
    grid = (triton.cdiv(in_dim, BLOCK_D), triton.cdiv(out_dim, BLOCK_K))
    # 8 warps: the Gaussian tile's sqrt/log/sin/cos temporaries spill on 4
    launch(_dense_matrix_kernel, grid, out, in_dim, out_dim, offset, k_row, k_col, GAUSSIAN=kind == "gaussian",
           BLOCK_D=BLOCK_D, BLOCK_K=BLOCK_K, **({} if interpreted(device) else {"num_warps": 8}))
    return out
