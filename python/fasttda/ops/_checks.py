"""Argument checks the ops share, so every op words the same mistake the same way."""
from __future__ import annotations

import operator

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


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as a Python int in [0, 2**64); any integer type is accepted.

    numpy integers (``np.random.default_rng().integers(...)``, what TRAK's chunked
    projector and its tests pass) and 0-d integer tensors count as ints; bools and floats
    do not, so ``seed=1.0`` is refused rather than rounded.
    """
    if isinstance(seed, bool) or (isinstance(seed, torch.Tensor) and seed.dtype == torch.bool):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}") from None
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value
