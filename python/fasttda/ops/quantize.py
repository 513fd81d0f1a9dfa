"""`quantize` / `dequantize`: the feature store's row formats, with per-row scales.

=========  ==========================  =================================================
format     stored as                   per-row scale (float32)
=========  ==========================  =================================================
fp32       float32                     none
bf16       bfloat16                    none
fp16       float16                     none (values past ±65504 are an error, not inf)
int8       int8, symmetric in ±127     absmax / 127
fp8_e4m3   float8_e4m3fn (uint8 bits   absmax / 448
           on disk)
int4       uint8, two per byte: column absmax / 7; nibble = q + 8, q in [-7, 7];
           2c in the low nibble, 2c+1  an odd dim is padded with q = 0
           in the high one
=========  ==========================  =================================================

The table itself (codes, dtypes, scales) lives in the leaf module `fasttda.formats`.

A row of zeros gets scale 0 and dequantizes to zeros. Non-finite input is rejected
with the offending row indices: a store never holds NaN.

Scaled formats compute ``scale = absmax / qmax`` and encode ``x / scale`` (a true
division, not a multiply by ``1 / scale``: the inverse of a subnormal scale, i.e. a row
with absmax below ~1e-36, overflows to inf). A row so small that its scale underflows to
0 (absmax below ~1e-43) is stored as zeros with scale 0. int8/int4 round half to even.

The Triton form (``kernels/quantize.py``) is bitwise equal to this reference, and so are
the C++ CPU kernels that `quantize` takes first for float32 CPU rows (``backend="auto"`` or
``"cpp"``): csrc/cpu/quantize.cpp (bf16/fp16, the range check fused into the cast) and
csrc/cpu/quantize_scaled.cpp (int8/int4/fp8_e4m3, one pass per row).
"""
from __future__ import annotations

import torch

from fasttda._dispatch import BackendUnavailable, Op, _requested
from fasttda.formats import (FLOAT_FORMATS, FORMATS, FP8, SCALED_QMAX, check_format,  # noqa: F401 (API)
                             storage_dtype, stored_width)
from fasttda.ops import _library

FP16_MAX = 65504.0
BF16_MAX = 3.3895313892515355e38  # larger float32 values round to inf in bfloat16


def bytes_per_row(fmt: str, dim: int) -> int:
    """Bytes a row costs on disk, data plus its scale (norms not counted)."""
    item = storage_dtype(fmt).itemsize
    return stored_width(fmt, dim) * item + (4 if fmt in SCALED_QMAX else 0)


def quantize(x: torch.Tensor, fmt: str, *, backend: str | None = "auto"):
    """Quantize rows of ``x`` ``[N, d]`` to ``fmt``: returns ``(data, scale)``.

    ``scale`` is float32 ``[N]`` for int8, fp8_e4m3 and int4, and None for float formats.
    """
    check_format(fmt)
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [N, d], got {getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    fused = _fused_cpu(x, fmt, backend)
    if fused is not None:
        data, scale, ok = fused
        if ok:
            return data, scale
    if x.numel() and not bool(_values_ok(x, fmt)):  # one reduction, one host sync; then look closer
        bad = nonfinite_rows(x)
        if bad.numel():
            raise ValueError(f"x has non-finite values in rows {bad[:10].tolist()}{' ...' if bad.numel() > 10 else ''}")
        if fmt == "fp16":
            raise ValueError("x has values beyond the fp16 range ±65504; store as bf16 or a scaled format (int8, fp8_e4m3)")
        raise ValueError("x has values beyond the bf16 range ±3.39e38 (they would round to inf); use a scaled format")
    return _library.call("quantize", x, fmt, backend or "auto")


def _fused_cpu(x: torch.Tensor, fmt: str, backend):
    """``(data, scale, ok)`` from the C++ kernels that check float32 CPU rows while they
    quantize them: bf16/fp16 casts with their range check (csrc/cpu/quantize.cpp; bitwise
    ``x.to(dtype)``), int8/int4/fp8_e4m3 one row at a time (csrc/cpu/quantize_scaled.cpp;
    bitwise the reference); or None when this call goes another way: fp32, another dtype or
    device, an explicit non-C++ backend, a traced call (the custom op), or ``auto`` without
    the extension."""
    if fmt == "fp32" or x.dtype != torch.float32 or x.device.type != "cpu" or not x.numel():
        return None
    requested = _requested(backend)
    if requested not in ("auto", "cpp") or torch.compiler.is_compiling():
        return None
    op = QUANTIZE_SCALED if fmt in SCALED_QMAX else CAST_CHECKED
    try:
        name, impl = op.resolve(requested, x.device)
    except BackendUnavailable:
        if requested == "cpp":
            raise
        return None
    if name != "cpp":
        return None
    if fmt in SCALED_QMAX:
        return impl(x, fmt)
    data, ok = impl(x, fmt)
    return data, None, ok


def _values_ok(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """0-dim bool on x's device: x is finite and, for fp16/bf16, inside the format's range.
    One pass over x (min and max together, both propagating NaN), no host sync."""
    low, high = torch.aminmax(x)
    ok = torch.isfinite(low) & torch.isfinite(high)
    limit = FP16_MAX if fmt == "fp16" else BF16_MAX if fmt == "bf16" and x.dtype == torch.float32 else None
    if limit is not None:
        ok &= (high <= limit) & (low >= -limit)
    return ok


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """Indices of the rows of ``x`` holding NaN or ±inf.

    A row sum propagates NaN/inf and is a fast vectorized reduction; the few rows whose
    sum is not finite (including finite rows whose sum overflows) are then checked exactly.
    """
    suspect = (~torch.isfinite(x.sum(dim=1, dtype=torch.float32))).nonzero().flatten()
    if not suspect.numel():
        return suspect
    return suspect[~torch.isfinite(x[suspect]).all(dim=1)]


def dequantize(data: torch.Tensor, scale: torch.Tensor | None, fmt: str, *, dim: int | None = None,
               out: torch.Tensor | None = None, backend: str | None = "auto") -> torch.Tensor:
    """Invert `quantize` to float32 ``[N, dim]``. ``dim`` is needed for int4 with an odd width.

    ``out``: a float32 ``[N, dim]`` destination (rows may be strided, elements contiguous),
    filled and returned; the C++ backend writes it in one pass (a store's full read), the
    others copy their result into it."""
    check_format(fmt)
    if not isinstance(data, torch.Tensor) or data.dim() != 2:
        raise ValueError(f"data must be a 2-D tensor, got {getattr(data, 'shape', type(data).__name__)}")
    if fmt == "fp8_e4m3" and data.dtype == torch.uint8 and FP8 is not None:
        data = data.view(FP8)
    expected = storage_dtype(fmt)
    if data.dtype != expected:
        raise TypeError(f"data for fmt={fmt!r} must be {expected}, got {data.dtype}")
    if fmt in SCALED_QMAX:
        if scale is None or scale.shape != (data.shape[0],):
            raise ValueError(f"scale must be a float32 tensor [{data.shape[0]}] for fmt={fmt!r}, got "
                             f"{None if scale is None else tuple(scale.shape)}")
    if dim is None:
        dim = data.shape[1] * 2 if fmt == "int4" else data.shape[1]
    elif stored_width(fmt, dim) != data.shape[1]:
        raise ValueError(f"dim={dim} does not match data width {data.shape[1]} for fmt={fmt!r}")
    if out is None:
        return _library.call("dequantize", data, scale, fmt, dim, backend or "auto")
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or tuple(out.shape) != (data.shape[0], dim):
        raise ValueError(f"out must be a float32 tensor [{data.shape[0]}, {dim}], got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {list(getattr(out, 'shape', []))}")
    if out.device != data.device:
        raise ValueError(f"out is on {out.device} but data is on {data.device}")
    if dim > 1 and out.stride(1) != 1:
        raise ValueError(f"out must have contiguous rows (stride(1) == 1), got strides {out.stride()}")
    return _library.dequantize_into(data, scale, fmt, dim, out, backend or "auto")


# -- reference ------------------------------------------------------------------------------
def quantize_with_norms(y: torch.Tensor, fmt: str):
    """``(data, scale, norms)`` of float32 rows ``y``: the reference epilogue that fused ops
    (projection, encoder pooling) share. Non-finite rows come back unquantized, with no
    scale, so the caller can name them."""
    norms = torch.linalg.vector_norm(y, dim=1)
    if not bool(torch.isfinite(y).all()):
        return y.to(FLOAT_FORMATS.get(fmt, torch.float32)), None, norms
    data, scale = quantize_reference(y, fmt)
    return data, scale, norms


def quantize_reference(x, fmt):
    if fmt in FLOAT_FORMATS:
        return x.to(FLOAT_FORMATS[fmt]).contiguous(), None
    x = x.to(torch.float32)
    qmax = SCALED_QMAX[fmt]
    low, high = torch.aminmax(x, dim=1)
    # = x.abs().amax(1) / qmax without an |x| copy; abs_: +0.0 for an all-zero row, as in the kernels
    scale = torch.maximum(high, -low).abs_() / qmax
    y = x / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    if fmt == "fp8_e4m3":
        return y.clamp_(-qmax, qmax).to(FP8).contiguous(), scale
    q = y.round_().clamp_(-qmax, qmax)
    if fmt == "int8":
        return q.to(torch.int8).contiguous(), scale
    if q.shape[1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    nib = (q + 8).to(torch.uint8)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).contiguous(), scale


def unpack_int4(data: torch.Tensor, dim: int) -> torch.Tensor:
    """Signed int4 values of packed rows, as float32 ``[N, dim]``."""
    lo = (data & 0xF).to(torch.float32) - 8.0
    hi = (data >> 4).to(torch.float32) - 8.0
    return torch.stack((lo, hi), dim=2).reshape(data.shape[0], -1)[:, :dim]


def dequantize_reference(data, scale, fmt, dim):
    if fmt in FLOAT_FORMATS:
        return data.to(torch.float32)
    values = unpack_int4(data, dim) if fmt == "int4" else data.to(torch.float32)
    return values * scale[:, None].to(torch.float32)


def cast_checked_reference(x, fmt):
    return x.to(FLOAT_FORMATS[fmt]), bool(_values_ok(x, fmt))


def quantize_scaled_reference(x, fmt):
    ok = bool(_values_ok(x, fmt))
    data, scale = quantize_reference(x, fmt) if ok else (None, None)
    return data, scale, ok


# The fused quantizers of float32 CPU rows; `quantize` asks them first (see `_fused_cpu`).
CAST_CHECKED = Op("cast_checked", reference=cast_checked_reference, cpp="cast_checked")
QUANTIZE_SCALED = Op("quantize_scaled", reference=quantize_scaled_reference, cpp="quantize_scaled")
QUANTIZE = Op("quantize", reference=quantize_reference, triton="fasttda.kernels.quantize:launch_quantize")
DEQUANTIZE = Op("dequantize", reference=dequantize_reference, triton="fasttda.kernels.quantize:launch_dequantize",
                cpp="dequantize")
