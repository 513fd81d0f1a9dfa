"""Triton kernel for `fasttda.ops.encoder_epilogue`: masked mean pooling, L2 normalization and
quantization of an encoder's hidden states in one pass.

Program b owns example b and its whole row (``H`` padded to ``H_PAD``, a power of two): it
walks the tokens in ``[BLOCK_T, H_PAD]`` tiles, accumulating the masked sum and the mask
count in float32 registers; the mean, the L2 norm, the normalized row, its absmax, scale
and encoding are reduced in place, and only the stored bytes, the scale and the norm reach
memory. Encoding reuses `kernels.quantize`'s bit-exact helpers, so for the same float32
row the stored bytes are those of ``quantize_reference``.

Precision: IEEE float32 throughout (no tf32, no dot product: the token sum is an
elementwise accumulation). Division mode: round-to-nearest (``tl.div_rn``) for the mean,
the normalization and ``x / scale``; square roots are ``tl.sqrt_rn``. The launch passes
``enable_fp_fusion=False`` on a GPU, so no FMA contraction changes a rounding. The token
sum runs in tile order, not torch's order, so rows agree with the reference to float32
rounding over T terms, not bitwise.

Registers bound the width: ``H <= MAX_HIDDEN``. int4 (whose nibble packing pairs columns)
runs this kernel to float32 rows, then `launch_quantize`.
"""
import torch
import triton
import triton.language as tl

from fasttda.kernels._launch import launch
from fasttda.kernels.quantize import (FMT_CODE, RAW_DTYPE, SCALED_QMAX, _view_stored, encode_float, encode_scaled,
                                      launch_quantize)

MAX_HIDDEN = 8192


@triton.jit
def _encoder_epilogue_kernel(h_ptr, m_ptr, data_ptr, scale_ptr, norm_ptr, T, H,
                             stride_hb, stride_ht, stride_hh, stride_mb,
                             FMT: tl.constexpr, QMAX: tl.constexpr, BLOCK_T: tl.constexpr, H_PAD: tl.constexpr):
    """One row per program: masked mean over tokens, L2 norm, then the store's encoding.

    Numerics: dot=none; div=rn.
    """
    b = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, H_PAD)
    col_ok = cols < H
    acc = tl.zeros((H_PAD,), dtype=tl.float32)
    count = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        m = tl.load(m_ptr + b * stride_mb + t, mask=t < T, other=0.0)
        h = tl.load(h_ptr + b * stride_hb + t[:, None].to(tl.int64) * stride_ht + cols[None, :].to(tl.int64) * stride_hh,
                    mask=(t[:, None] < T) & col_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(h * m[:, None], axis=0)
        count += m
    n = tl.maximum(tl.sum(count, axis=0), 1.0)
    pooled = tl.div_rn(acc, tl.zeros_like(acc) + n)
    norm = tl.sqrt_rn(tl.sum(pooled * pooled, axis=0))
    safe_norm = tl.where(norm > 0, norm, 1.0)
    e = tl.div_rn(pooled, tl.zeros_like(pooled) + safe_norm)
    tl.store(norm_ptr + b, tl.sqrt_rn(tl.sum(e * e, axis=0)))
    out = data_ptr + b * H
    if FMT < 3:
        tl.store(out + cols, encode_float(e, FMT), mask=col_ok)
    else:
        scale = tl.div_rn(tl.max(tl.abs(e), axis=0), QMAX)
        safe = tl.where(scale > 0, scale, 1.0)
        tl.store(scale_ptr + b, scale)
        tl.store(out + cols, encode_scaled(tl.div_rn(e, tl.zeros_like(e) + safe), FMT, QMAX), mask=col_ok)


def _options(device: torch.device) -> dict:
    return {} if device.type == "cpu" else {"enable_fp_fusion": False}


def launch_encoder_epilogue(hidden: torch.Tensor, mask: torch.Tensor, fmt: str):
    B, T, H = hidden.shape
    if H > MAX_HIDDEN:
        raise ValueError(f"encoder_epilogue: the Triton kernel holds a row in registers, H <= {MAX_HIDDEN}; "
                         f"got H={H} (use backend='reference')")
    if fmt == "int4":
        rows, _, norms = launch_encoder_epilogue(hidden, mask, "fp32")
        data, scale = launch_quantize(rows, fmt)
        return data, scale, norms
    m = mask.to(device=hidden.device, dtype=torch.float32).contiguous()
    raw = torch.empty(B, H, dtype=RAW_DTYPE[fmt], device=hidden.device)
    scale = torch.empty(B, dtype=torch.float32, device=hidden.device) if fmt in SCALED_QMAX else None
    norms = torch.empty(B, dtype=torch.float32, device=hidden.device)
    h_pad = triton.next_power_of_2(max(H, 16))
    block_t = max(1, min(triton.next_power_of_2(max(T, 1)), 16384 // h_pad, 32))
    launch(_encoder_epilogue_kernel, (B,), hidden, m, raw, norms if scale is None else scale, norms, T, H,
                                   hidden.stride(0), hidden.stride(1), hidden.stride(2), m.stride(0),
                                   FMT=FMT_CODE[fmt], QMAX=SCALED_QMAX.get(fmt, 1.0), BLOCK_T=block_t, H_PAD=h_pad,
                                   **_options(hidden.device))
    return _view_stored(raw, fmt), scale, norms
