"""Argument checks the ops share, so every op words the same mistake the same way."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_float_tensor(t, name: str, layout: str) -> None:
    """``t`` must be a float32/bf16/fp16 tensor with ``len(layout.split(", "))`` non-empty dims.

    ``layout`` names the dims for the message, e.g. ``"B, D"`` or ``"B, T, d"``.
    """
    dims = layout.split(", ")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(dims):
        raise ValueError(f"{name} must be {len(dims)}-D [{layout}], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if min(t.shape) < 1:
        raise ValueError(f"{name} must have {', '.join(d + ' >= 1' for d in dims)}, got shape {tuple(t.shape)}")
