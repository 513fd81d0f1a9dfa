"""The row formats of fasttda: one table for ops, kernels, the store and the C++ kernels.

A torch-only leaf module (imports nothing from fasttda). Each format has

* ``code``: the integer the Triton kernels branch on (``FMT`` constexprs) and the order of
  ``enum class Fmt`` in ``csrc/cpu/score.cpp`` (a test parses the C++ and compares);
* ``dtype``: the torch dtype `fasttda.ops.quantize` returns and the store reads back;
* ``raw_dtype``: what the Triton kernels load and store (bit patterns for bf16 and fp8, which
  the interpreter cannot round; viewed back as ``dtype`` by the launcher);
* ``bytes_per_value``: storage per feature value (int4 packs two values per byte);
* ``scale``: ``None`` for float formats, ``"absmax"`` for formats stored as
  ``round(x / scale)`` with ``scale = max|x| / qmax`` per row;
* ``qmax``: the largest stored magnitude of a scaled format.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

FP8 = getattr(torch, "float8_e4m3fn", None)


class Format(NamedTuple):
    name: str
    code: int
    dtype: torch.dtype
    raw_dtype: torch.dtype
    bytes_per_value: float
    scale: str | None
    qmax: float | None


TABLE = {f.name: f for f in (
    Format("fp32", 0, torch.float32, torch.float32, 4, None, None),
    Format("bf16", 1, torch.bfloat16, torch.int16, 2, None, None),
    Format("fp16", 2, torch.float16, torch.float16, 2, None, None),
    Format("int8", 3, torch.int8, torch.int8, 1, "absmax", 127.0),
    Format("fp8_e4m3", 4, FP8 or torch.uint8, torch.uint8, 1, "absmax", 448.0),
    Format("int4", 5, torch.uint8, torch.uint8, 0.5, "absmax", 7.0),
)}

FORMATS = tuple(TABLE)
FMT_CODE = {f.name: f.code for f in TABLE.values()}
FLOAT_FORMATS = {f.name: f.dtype for f in TABLE.values() if f.scale is None}
SCALED_QMAX = {f.name: f.qmax for f in TABLE.values() if f.scale is not None}
TORCH_DTYPE = {f.name: f.dtype for f in TABLE.values()}
RAW_DTYPE = {f.name: f.raw_dtype for f in TABLE.values()}


def check_format(fmt) -> None:
    if fmt not in TABLE:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def storage_dtype(fmt: str) -> torch.dtype:
    """The torch dtype `quantize` returns for ``fmt``."""
    check_format(fmt)
    return TABLE[fmt].dtype


def stored_width(fmt: str, dim: int) -> int:
    """Columns of stored data for ``dim`` feature columns (int4: two values per byte)."""
    return (dim + 1) // 2 if fmt == "int4" else dim
