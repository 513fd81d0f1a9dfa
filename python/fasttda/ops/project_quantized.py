"""`project_quantized`: project rows and store them quantized, with no float32 round trip.

``project_quantized(x, k, fmt, ...)`` equals ``quantize(project(x, k, ...), fmt)`` plus the
float32 L2 norms of the projected rows (taken before quantization), as a `QuantizedRows`
``(data, scale, norms)`` ready for `FeatureStore.append_quantized`.

The Triton form (``kernels/project_quantized.py``) gives one program a block of whole
output rows: the projection accumulates in registers, the per-row absmax and norm are
reduced there, and only the quantized bytes, the scale and the norm reach memory. It fuses
dense kinds (Rademacher, Gaussian) up to ``FUSED_MAX_DIM`` output columns; SJLT (whose
scatter needs atomics in memory) and wider rows run the projection kernel then the
quantize kernel, through one float32 ``[B, k]`` buffer.

Projection pieces cannot be summed after quantization: use this op where one call sees
the whole feature row (the ``offset`` argument still places it in a larger input space).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fasttda._dispatch import Op, common_device
from fasttda.ops import _counter_hash as ch
from fasttda.ops.project import check_project_args, project_reference
from fasttda.ops.quantize import FLOAT_FORMATS, check_format, quantize_with_norms


class QuantizedRows(NamedTuple):
    data: torch.Tensor           # stored rows, as `quantize` returns them
    scale: torch.Tensor | None   # float32 [B] for int8/fp8_e4m3/int4, else None
    norms: torch.Tensor          # float32 [B] L2 norms of the projected rows before quantization


def project_quantized(x: torch.Tensor, out_dim: int, fmt: str, *, kind: str = "rademacher", seed: int = 0,
                      offset: int = 0, s: int = 1, backend: str | None = "auto") -> QuantizedRows:
    """Project ``x`` ``[B, D]`` to ``out_dim`` columns (see `fasttda.ops.project`) and quantize to ``fmt``.

    Rows whose projection is not finite (NaN/inf in ``x``, or beyond the fp16/bf16 range)
    raise a ValueError naming them.
    """
    check_project_args(x, out_dim, kind, offset, s)
    check_format(fmt)
    k_row, k_col = ch.seed_keys(seed, kind)
    _, impl = PROJECT_QUANTIZED.resolve(backend, common_device(x))
    data, scale, norms = impl(x, out_dim, fmt, kind, k_row, k_col, offset, s)
    bad = ~torch.isfinite(norms)
    if fmt in FLOAT_FORMATS:
        bad |= data.isinf().any(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"projected rows {rows[:10]}{' ...' if len(rows) > 10 else ''} are not finite in "
                         f"fmt={fmt!r} (NaN/inf in x, or values beyond the format's range)")
    return QuantizedRows(data, scale, norms)


def project_quantized_reference(x, out_dim, fmt, kind, k_row, k_col, offset, s):
    y = project_reference(x, out_dim, kind, k_row, k_col, offset, s)
    return quantize_with_norms(y, fmt)  # non-finite rows: the caller names them


PROJECT_QUANTIZED = Op("project_quantized", reference=project_quantized_reference,
                       triton="fasttda.kernels.project_quantized:launch_project_quantized")
