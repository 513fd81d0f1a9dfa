"""Triton kernel for `fasttda.ops.project_grass`: the SJLT scatter of `kernels/project.py`
with GraSS's Bernoulli mask in front.

Program (b, d) loads its ``[BLOCK_B, BLOCK_D]`` slice of x, hashes each coordinate once
for the mask word and once for the bucket word, and atomically adds the kept, signed
values into their buckets. Masked-out coordinates issue no atomic.
"""
import torch
import triton
import triton.language as tl

from fasttda.kernels._counter_hash import col_keys, row_keys, sjlt_targets, words


@triton.jit
def _grass_project_kernel(
    x_ptr, out_ptr, B, D, K, stride_xb, stride_xd, offset, k_row, k_col, threshold,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """GraSS scatter. Precision: float32 accumulation by atomic adds (ieee; no tl.dot, so no
    tf32); inputs are upcast to float32 before the sign multiply. Division mode: none in
    floating point; bucket = (h >> 1) % K is an exact uint32 modulo. The summation order of
    the atomics varies run to run on a GPU (last-bit differences); the interpreter is sequential.
    """
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rk = row_keys(d.to(tl.int64) + offset, k_row)
    kept = (words(rk, col_keys(tl.full((BLOCK_D,), 1, tl.uint32), k_col)) >> 8).to(tl.int64) < threshold
    mask = (rows[:, None] < B) & (d[None, :] < D) & kept[None, :]
    x = tl.load(
        x_ptr + rows[:, None].to(tl.int64) * stride_xb + d[None, :].to(tl.int64) * stride_xd,
        mask=mask, other=0.0,
    ).to(tl.float32)
    bucket, sign = sjlt_targets(rk, 0, k_col, K)
    tl.atomic_add(out_ptr + rows[:, None].to(tl.int64) * K + bucket[None, :], x * sign[None, :], mask=mask)


def launch_project_grass(x, out_dim, k_row, k_col, offset, threshold):
    """Unscaled GraSS sums ``[B, out_dim]`` float32 (the op applies the scale)."""
    B, D = x.shape
    out = torch.zeros(B, out_dim, dtype=torch.float32, device=x.device)
    BLOCK_B, BLOCK_D = (16, 64) if x.device.type == "cpu" else (16, 256)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    _grass_project_kernel[grid](x, out, B, D, out_dim, x.stride(0), x.stride(1), offset, k_row, k_col, threshold,
                                BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D)
    return out
