"""Python side of the CUDA kernels: grid choices, streams and scaling around the bindings.

Imported by the dispatcher only after `fasttda._extension.load("cuda")` has succeeded.
"""
from __future__ import annotations

import math

import torch

from fasttda import _extension
from fasttda._dispatch import BackendUnavailable


def project(x, out_dim, kind, k_row, k_col, offset, s):
    """Dense Rademacher projection. NOT YET RUN ON A GPU (see csrc/project.cu)."""
    if kind != "rademacher":
        raise BackendUnavailable(f"project: the CUDA kernel covers kind='rademacher' only, not {kind!r}; "
                                 "use backend='triton'")
    ext = _extension.load("cuda")
    B, D = x.shape
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    tiles = math.ceil(out_dim / 128) * math.ceil(B / 32)
    splits = max(1, min(math.ceil(D / 256), math.ceil(4 * sms / tiles)))  # ~4 blocks per SM
    stream = torch.cuda.current_stream(x.device).cuda_stream
    out = ext.rademacher_project(x, out_dim, k_row, k_col, offset, splits, stream)
    return out.mul_(1.0 / math.sqrt(out_dim))
