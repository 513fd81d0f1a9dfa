"""Triton kernel for `fasttda.ops.project_quantized`: projection, norms and quantization in one pass.

Program b owns rows ``[b * BLOCK_B, (b + 1) * BLOCK_B)`` and *all* ``out_dim`` columns
(padded to ``K_PAD``, a power of two): it walks D, generating the ``[BLOCK_D, K_PAD]``
tile of P from the counter hash (as `kernels.project` does) and accumulating
``[BLOCK_B, K_PAD]`` in registers. With whole rows in registers, the row's absmax, L2
norm and scale are reduced in place and only quantized bytes, scales and norms are
stored. Encoding reuses `kernels.quantize`'s bit-exact helpers, so for the same float32
projection the stored bytes are those of ``quantize_reference``.

Registers bound the fused width: ``out_dim <= FUSED_MAX_DIM``, and the fused grid has one
program per 16 rows, so it runs only when those programs fill the GPU (`fills_gpu`). Wider
rows, SJLT and small batches run `launch_project` (split over D) then `launch_quantize`
(one float32 ``[B, out_dim]`` buffer).
FUSED_MAX_DIM and the block sizes are untuned first choices for a GPU.
"""
import torch
import triton
import triton.language as tl

from fasttda.kernels._counter_hash import gaussian_tile, rademacher_tile_packed, row_keys
from fasttda.kernels._launch import as_i32, interpreted, launch, multiprocessor_count
from fasttda.kernels.project import _dot_dtype, _scale, launch_project
from fasttda.kernels.quantize import (FMT_CODE, RAW_DTYPE, SCALED_QMAX, _view_stored, encode_float, encode_scaled,
                                      launch_quantize, quantize_levels, stored_width)

# Widest fused rows (compile check, sm_90a and sm_80): Rademacher at K_PAD = 2048 spills 1.4 KB
# (the [16, 2048] accumulator and P tile are 128 floats per thread on 16 warps); Gaussian
# tiles hold their Box–Muller temporaries too and spill 0.5 KB at 1024.
FUSED_MAX_DIM = 1024
FUSED_MAX_DIM_GAUSSIAN = 512
FUSED_BLOCK_B = 16


@triton.jit(do_not_specialize=["offset", "k_row", "k_col"])
def _project_quantize_kernel(
    x_ptr, data_ptr, scale_ptr, norm_ptr, B, D, K, W, stride_xb, stride_xd, offset, k_row, k_col, jl_scale,
    GAUSSIAN: tl.constexpr, FMT: tl.constexpr, QMAX: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, K_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """Project ``BLOCK_B`` rows onto all K columns, then norms, scales and encoding in registers.

    Precision: as `_dense_project_kernel` (float32 x: ``input_precision="tf32x3"``; bf16/fp16
    Rademacher: 16-bit tensor cores; float32 accumulation). Division: IEEE (``tl.div_rn``) for
    the scale and y / scale, ``tl.sqrt_rn`` for the norm; launched with ``enable_fp_fusion=False``.

    Numerics: dot=tf32x3+16bit; div=rn.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, K_PAD)
    acc = tl.zeros((BLOCK_B, K_PAD), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_xb + d[None, :].to(tl.int64) * stride_xd,
            mask=(rows[:, None] < B) & (d[None, :] < D), other=0.0,
        )
        rk = row_keys(d.to(tl.int64) + offset, k_row)
        if GAUSSIAN:
            p = gaussian_tile(rk, 0, k_col, K_PAD)
        else:
            p = rademacher_tile_packed(rk, 0, K_PAD // 32, k_col)
        acc += tl.dot(x.to(DOT_DTYPE), p.to(DOT_DTYPE), input_precision="tf32x3")
    y = tl.where(cols[None, :] < K, acc * jl_scale, 0.0)
    tl.store(norm_ptr + rows, tl.sqrt_rn(tl.sum(y * y, axis=1)), mask=rows < B)

    row_ok = rows[:, None] < B
    out_rows = data_ptr + rows[:, None].to(tl.int64) * W
    if FMT < 3:
        tl.store(out_rows + cols[None, :], encode_float(y, FMT), mask=row_ok & (cols[None, :] < K))
    else:
        scale = tl.div_rn(tl.max(tl.abs(y), axis=1), QMAX)
        tl.store(scale_ptr + rows, scale, mask=rows < B)
        safe = tl.where(scale > 0, scale, 1.0)[:, None]
        if FMT == 5:
            # pair columns 2j, 2j+1 through a [BLOCK_B, K_PAD / 2, 2] view of the row
            q = quantize_levels(tl.div_rn(y, safe), QMAX)
            lo, hi = tl.split(tl.reshape(q, (BLOCK_B, K_PAD // 2, 2)))
            packed = (lo + 8.0).to(tl.int32) | ((hi + 8.0).to(tl.int32) << 4)
            j = tl.arange(0, K_PAD // 2)
            tl.store(out_rows + j[None, :], packed.to(tl.uint8), mask=row_ok & (j[None, :] < W))
        else:
            tl.store(out_rows + cols[None, :], encode_scaled(tl.div_rn(y, safe), FMT, QMAX), mask=row_ok & (cols[None, :] < K))


def fused(kind: str, out_dim: int) -> bool:
    limit = FUSED_MAX_DIM if kind == "rademacher" else min(FUSED_MAX_DIM, FUSED_MAX_DIM_GAUSSIAN)
    return kind != "sjlt" and out_dim <= limit


def fills_gpu(B: int, device: torch.device) -> bool:
    """Whether the fused kernel's ``cdiv(B, 16)`` programs fill the GPU. With fewer rows
    (B = 32 is 2 programs on 132 SMs), split-K projection then quantization is faster."""
    return interpreted(device) or triton.cdiv(B, FUSED_BLOCK_B) >= multiprocessor_count(device)


def _gpu_options(k_pad: int, gaussian: bool):
    """``(BLOCK_D, launch options)`` on a GPU: spread the ``[BLOCK_B, K_PAD]`` accumulator and
    P tile over more threads as rows widen; Gaussian tiles (log, sqrt, sin, cos per pair)
    need 8 warps from the start (4 spilled 0.6 KB at K_PAD = 512 on sm_80)."""
    warps = min(16, max(8 if gaussian else 4, k_pad // 128))
    return 16, {"enable_fp_fusion": False, "num_warps": warps}


def launch_project_quantized(x, out_dim, fmt, kind, k_row, k_col, offset, s):
    if not fused(kind, out_dim) or not fills_gpu(x.shape[0], x.device):
        y = launch_project(x, out_dim, kind, k_row, k_col, offset, s)
        norms = torch.linalg.vector_norm(y, dim=1)
        if not y.is_meta and not bool(torch.isfinite(y).all()):  # meta: the compile check
            return y, None, norms  # the op names the rows
        data, scale = launch_quantize(y, fmt)
        return data, scale, norms
    B, D = x.shape
    W = stored_width(fmt, out_dim)
    raw = torch.empty(B, W, dtype=RAW_DTYPE[fmt], device=x.device)
    scale = torch.empty(B, dtype=torch.float32, device=x.device) if fmt in SCALED_QMAX else None
    norms = torch.empty(B, dtype=torch.float32, device=x.device)
    cpu = interpreted(x.device)
    BLOCK_B = FUSED_BLOCK_B
    gaussian = kind == "gaussian"
    k_pad = max(32, triton.next_power_of_2(out_dim))
    BLOCK_D, options = (32, {}) if cpu else _gpu_options(k_pad, gaussian)
    launch(
        _project_quantize_kernel, (triton.cdiv(B, BLOCK_B),),
        x, raw, norms if scale is None else scale, norms, B, D, out_dim, W, x.stride(0), x.stride(1), offset,
        as_i32(k_row), as_i32(k_col), _scale(kind, out_dim, s),
        GAUSSIAN=gaussian, FMT=FMT_CODE[fmt], QMAX=SCALED_QMAX.get(fmt, 1.0), BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D,
        K_PAD=k_pad, DOT_DTYPE=_dot_dtype(x, gaussian), **options,
    )
    return _view_stored(raw, fmt), scale, norms
