"""Float rows on their way into a store: accepted dtypes and exact float32 row norms."""
from __future__ import annotations

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def as_float_tensor(features) -> torch.Tensor:
    """``features`` as a torch tensor of a float dtype the store takes (numpy without a copy where it can)."""
    if isinstance(features, np.ndarray):
        arr = features
        if arr.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: the same bits as torch's
            return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16)
        if arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4, 8):
            return torch.from_numpy(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False)))
        dtype = arr.dtype
    elif isinstance(features, torch.Tensor):
        if features.dtype in FLOAT_DTYPES:
            return features
        dtype = features.dtype
    else:
        raise TypeError(f"features must be a torch.Tensor or numpy array, got {type(features).__name__}")
    raise TypeError(f"features must be float32, float64, float16 or bfloat16 (torch or numpy), got {dtype}; "
                    "rows already in the store's format go through append_quantized")


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """Float32 L2 norms of rows; non-finite exactly for the rows holding NaN or inf.

    Rows whose float32 sum of squares overflows are redone in float64, where finite
    float32 values cannot overflow. Float64 input is normed in float64.
    """
    if x.dtype == torch.float64:
        return torch.linalg.vector_norm(x, dim=1).to(torch.float32)
    norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32)
    redo = (~torch.isfinite(norms)).nonzero().flatten()
    if redo.numel():
        norms[redo] = torch.linalg.vector_norm(x[redo].to(torch.float64), dim=1).to(torch.float32)
    return norms
