"""Argument checks the ops (and capture) share, so every mistake is worded one way."""
from __future__ import annotations

import operator

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_float_tensor(t, name: str, layout: str, *, float64: bool = False) -> None:
    """``t`` must be a float32/bf16/fp16 (``float64``: or float64) tensor with
    ``len(layout.split(", "))`` non-empty dims.

    ``layout`` names the dims for the message, e.g. ``"B, D"`` or ``"B, T, d"``.
    """
    dims = layout.split(", ")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(dims):
        raise ValueError(f"{name} must be {len(dims)}-D [{layout}], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES and not (float64 and t.dtype == torch.float64):
        raise TypeError(f"{name} must be float32, bfloat16{', float16 or float64' if float64 else ' or float16'}, "
                        f"got {t.dtype}")
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


def as_token_mask(mask, name: str = "mask", shape: tuple | None = None):
    """A ``[B, T]`` mask of the tokens that count as a bool tensor (None stays None).

    Bool, integer or float masks are accepted (a float 0/1 loss mask is common); any value
    other than 0 and 1 (NaN included) is an error. ``shape``: the ``[B, T]`` it must have.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape [B, T] = {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must be a [B, T] tensor, got shape {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be bool, integer or float 0/1, got {mask.dtype}")
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must hold only 0 and 1")
    return mask != 0
