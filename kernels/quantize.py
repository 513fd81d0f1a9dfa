"""Triton kernels for `fasttda.ops.quantize` / `dequantize`, bitwise equal to the reference.

Quantize: one program per row walks the row twice in column tiles (absmax, then encode),
so any dim fits; the row's scale is written once. Dequantize: programs own
``[row, column tile]`` pieces (no reduction), for full occupancy.

Bitwise equality with the PyTorch reference, on the interpreter and on any GPU:
* every encoding is integer arithmetic on float32 bits (bf16 and fp8 e4m3 round to
  nearest even exactly as torch does), so no hardware fp8 (sm_89+) is needed and the
  interpreter, whose bf16 cast truncates, gives the same bits;
* round-half-even to int uses the 1.5·2²³ trick; the GPU launch passes
  ``enable_fp_fusion=False`` so no FMA contraction can fold an addition into a product;
* ``scale = absmax / qmax`` and ``x / scale`` are IEEE float32 divisions (``tl.div_rn``;
  Triton's ``/`` on float32 compiles to the inexact ``div.full.f32``), as in torch.
"""
import torch
import triton
import triton.language as tl

from fasttda.formats import FMT_CODE, FP8, RAW_DTYPE, SCALED_QMAX, stored_width  # noqa: F401 (re-exported)
from fasttda.kernels._launch import interpreted, launch

# A global read inside @triton.jit must be a tl.constexpr (a plain float fails to compile).
MAGIC_RNE = tl.constexpr(12582912.0)  # 1.5 * 2**23: (y + M) - M rounds |y| < 2**22 half to even


@triton.jit
def round_half_even(y):
    return (y + MAGIC_RNE) - MAGIC_RNE


@triton.jit
def bf16_bits(x):
    """float32 -> bfloat16 bits (int16), round to nearest even; x is finite."""
    u = x.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def bf16_value(b):
    return (b.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def fp8_e4m3_bits(y):
    """float32 in [-448, 448] -> float8_e4m3fn bits (uint8), round to nearest even."""
    u = y.to(tl.uint32, bitcast=True)
    a = u & 0x7FFFFFFF
    r = a - (120 << 23)  # rebias the exponent 127 -> 7; meaningful where y is normal in e4m3
    normal = (r + 0x7FFFF + ((r >> 20) & 1)) >> 20
    subnormal = round_half_even(tl.abs(y) * 512.0).to(tl.uint32)  # exact: steps of 2**-9
    code = tl.where(a >= (121 << 23), normal, subnormal)
    return (code | ((u >> 31) << 7)).to(tl.uint8)


@triton.jit
def fp8_e4m3_value(b):
    """float8_e4m3fn bits (uint8) -> float32 (0x7F / 0xFF are NaN)."""
    b = b.to(tl.uint32)
    e = (b >> 3) & 15
    m = b & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    nan = (b | 0x7FC00000).to(tl.float32, bitcast=True)  # quiet NaN (the low bits are payload)
    mag = tl.where((b & 0x7F) == 0x7F, nan, mag)
    return tl.where((b & 0x80) != 0, -mag, mag)


@triton.jit
def encode_float(x, FMT: tl.constexpr):
    """float32 values as stored by an unscaled format: fp32 (0), bf16 bits (1), fp16 (2)."""
    if FMT == 0:
        return x
    elif FMT == 1:
        return bf16_bits(x)
    else:
        return x.to(tl.float16)


@triton.jit
def quantize_levels(y, QMAX: tl.constexpr):
    """Integer levels of scaled values ``y = x / scale``: round half to even, clamp to ±QMAX."""
    return tl.minimum(tl.maximum(round_half_even(y), -QMAX), QMAX)


@triton.jit
def encode_scaled(y, FMT: tl.constexpr, QMAX: tl.constexpr):
    """Scaled values ``y = x / scale`` as stored by int8 (3) or fp8_e4m3 bits (4)."""
    if FMT == 3:
        return quantize_levels(y, QMAX).to(tl.int8)
    else:
        return fp8_e4m3_bits(tl.minimum(tl.maximum(y, -QMAX), QMAX))


@triton.jit
def _quantize_kernel(x_ptr, out_ptr, scale_ptr, D, W, stride_n, stride_d,
                     FMT: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr):
    """One row per program: absmax, scale, encode. Precision: no products; bitwise equal to
    the reference. Division: IEEE round-to-nearest (``tl.div_rn``) for the scale and x / scale;
    launched with ``enable_fp_fusion=False``.

    Numerics: dot=none; div=rn.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_n
    out_row = out_ptr + row * W
    if FMT < 3:
        for c0 in range(0, D, BLOCK):
            c = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_row + c * stride_d, mask=c < D, other=0.0).to(tl.float32)
            tl.store(out_row + c, encode_float(x, FMT), mask=c < D)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for c0 in range(0, D, BLOCK):
            c = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_row + c * stride_d, mask=c < D, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.div_rn(tl.max(amax, axis=0), QMAX)
        safe = tl.where(scale > 0, scale, 1.0)
        tl.store(scale_ptr + row, scale)
        if FMT == 5:
            for j0 in range(0, W, BLOCK):
                j = j0 + tl.arange(0, BLOCK)
                lo = tl.load(x_row + (2 * j) * stride_d, mask=2 * j < D, other=0.0).to(tl.float32)
                hi = tl.load(x_row + (2 * j + 1) * stride_d, mask=2 * j + 1 < D, other=0.0).to(tl.float32)
                q_lo = quantize_levels(tl.div_rn(lo, safe), QMAX)
                q_hi = quantize_levels(tl.div_rn(hi, safe), QMAX)
                packed = (q_lo + 8.0).to(tl.int32) | ((q_hi + 8.0).to(tl.int32) << 4)
                tl.store(out_row + j, packed.to(tl.uint8), mask=j < W)
        else:
            for c0 in range(0, D, BLOCK):
                c = c0 + tl.arange(0, BLOCK)
                x = tl.load(x_row + c * stride_d, mask=c < D, other=0.0).to(tl.float32)
                tl.store(out_row + c, encode_scaled(tl.div_rn(x, safe), FMT, QMAX), mask=c < D)


@triton.jit
def _dequantize_kernel(data_ptr, scale_ptr, out_ptr, D, stride_n, stride_w,
                       FMT: tl.constexpr, BLOCK: tl.constexpr):
    """``[row, column tile]`` programs decode stored values times the row scale.
    Precision: one float32 product per value (exact decode). Division: none.

    Numerics: dot=none; div=none.
    """
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = c < D
    data_row = data_ptr + row * stride_n
    if FMT == 5:
        byte = tl.load(data_row + (c >> 1) * stride_w, mask=mask, other=0).to(tl.int32)
        v = (tl.where((c & 1) == 1, byte >> 4, byte & 15) - 8).to(tl.float32)
    else:
        raw = tl.load(data_row + c * stride_w, mask=mask, other=0)
        if FMT == 1:
            v = bf16_value(raw)
        elif FMT == 4:
            v = fp8_e4m3_value(raw)
        else:
            v = raw.to(tl.float32)
    if FMT >= 3:
        v = v * tl.load(scale_ptr + row)
    tl.store(out_ptr + row * D + c, v, mask=mask)


def _options(device: torch.device) -> dict:
    # No FMA contraction on the GPU: every product is rounded to float32 first, as in torch.
    return {} if interpreted(device) else {"enable_fp_fusion": False}


def launch_quantize(x: torch.Tensor, fmt: str):
    N, D = x.shape
    W = stored_width(fmt, D)
    raw = torch.empty(N, W, dtype=RAW_DTYPE[fmt], device=x.device)
    scale = torch.empty(N, dtype=torch.float32, device=x.device) if fmt in SCALED_QMAX else None
    if N and D:
        block = 256 if interpreted(x.device) else 1024
        launch(_quantize_kernel, (N,), x, raw, raw if scale is None else scale, D, W, x.stride(0), x.stride(1),
               FMT=FMT_CODE[fmt], QMAX=SCALED_QMAX.get(fmt, 1.0),
               BLOCK=min(block, triton.next_power_of_2(max(W, 16))), **_options(x.device))
    elif scale is not None:
        scale.zero_()
    return _view_stored(raw, fmt), scale


def launch_dequantize(data: torch.Tensor, scale, fmt: str, dim: int):
    N = data.shape[0]
    raw = data.view(RAW_DTYPE[fmt]) if data.dtype != RAW_DTYPE[fmt] else data
    out = torch.empty(N, dim, dtype=torch.float32, device=data.device)
    if N and dim:
        block = 256 if interpreted(data.device) else 1024
        block = min(block, triton.next_power_of_2(max(dim, 16)))
        scale_arg = scale.to(torch.float32).contiguous() if scale is not None else out
        launch(_dequantize_kernel, (N, triton.cdiv(dim, block)), raw, scale_arg, out, dim, raw.stride(0),
               raw.stride(1), FMT=FMT_CODE[fmt], BLOCK=block, **_options(data.device))
    return out


def _view_stored(raw: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "bf16":
        return raw.view(torch.bfloat16)
    if fmt == "fp8_e4m3" and FP8 is not None:
        return raw.view(FP8)
    return raw
