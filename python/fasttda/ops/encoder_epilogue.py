"""`encoder_epilogue`: a text encoder's last hidden states to stored embedding rows, in one pass.

For hidden states ``h [B, T, H]`` and an attention mask ``m [B, T]`` (1 for real tokens):

    pooled[b] = Σ_t m[b,t]·h[b,t] / max(Σ_t m[b,t], 1)        masked mean pooling
    e[b]      = pooled[b] / ‖pooled[b]‖                        L2 normalization (0 stays 0)
    data, scale = quantize(e, fmt)                            the store's row format
    norms[b]  = ‖e[b]‖                                         float32, before quantization

and returns a `QuantizedRows` ``(data, scale, norms)`` ready for
`FeatureStore.append_quantized`. This is the serving path of a learned encoder
(`fasttda.methods.influcoder`): the learned encoding is one more way to make a feature row,
and its rows go through the same stores and the same scorer as projected gradients.

`mean_pool_normalize` is the differentiable float part alone (training uses it, so the
student is trained on exactly what is served). The Triton form (``kernels/encoder_epilogue.py``)
keeps one example's whole row in registers: the pooled sum, the norm, the absmax and the
encoding never leave them; only the stored bytes, the scale and the norm are written.
Mask values are weights (0/1 in practice); a row whose mask sums to 0 gives a zero row.
"""
from __future__ import annotations

import torch

from fasttda._dispatch import Op, common_device
from fasttda.ops import _library
from fasttda.ops._checks import check_float_tensor
from fasttda.ops.project_quantized import QuantizedRows
from fasttda.ops.quantize import check_format, quantize_with_norms


def mean_pool_normalize(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens, then L2-normalized rows: ``[B, H]`` float32, differentiable."""
    m = mask.to(torch.float32)
    pooled = torch.einsum("bth,bt->bh", hidden.to(torch.float32), m) / m.sum(dim=1).clamp_min(1.0)[:, None]
    norm = torch.linalg.vector_norm(pooled, dim=1, keepdim=True)
    return pooled / torch.where(norm > 0, norm, torch.ones_like(norm))


def encoder_epilogue(hidden: torch.Tensor, mask: torch.Tensor, fmt: str = "int8", *,
                     backend: str | None = "auto") -> QuantizedRows:
    """Pool, normalize and quantize ``hidden [B, T, H]`` under ``mask [B, T]`` to ``fmt``.

    Raises ValueError naming the rows whose hidden states hold NaN or inf.
    """
    check_float_tensor(hidden, "hidden", "B, T, H")
    check_format(fmt)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"mask must be [B, T] = {list(hidden.shape[:2])}, got {list(mask.shape)}")
    if mask.is_complex() or (mask.is_floating_point() and not bool(torch.isfinite(mask).all())):
        raise ValueError("mask must hold finite real values (1 for tokens, 0 for padding)")
    if bool((mask < 0).any()):
        raise ValueError("mask must not be negative (1 for tokens, 0 for padding)")
    common_device(hidden, mask, names=("hidden", "mask"))
    data, scale, norms = _library.call("encoder_epilogue", hidden, mask, fmt, backend or "auto")
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"hidden states of rows {rows[:10]}{' ...' if len(rows) > 10 else ''} are not finite")
    return QuantizedRows(data, scale, norms)


def encoder_epilogue_reference(hidden, mask, fmt):
    e = mean_pool_normalize(hidden, mask)
    return quantize_with_norms(e, fmt)  # non-finite rows: the caller names them


ENCODER_EPILOGUE = Op("encoder_epilogue", reference=encoder_epilogue_reference,
                      triton="fasttda.kernels.encoder_epilogue:launch_encoder_epilogue")
