"""`project_factored`: per-example LoGra-style (Kronecker) projection of a linear layer's gradient.

For a linear layer with input ``x`` ``[B, T, d_in]`` and output gradient ``dy``
``[B, T, d_out]``, example b's weight gradient is ``G_b = Σ_t dy_{b,t} x_{b,t}ᵀ``. This op
returns, without ever forming ``G_b`` or any per-token outer product,

    out[b] = Σ_t (P_outᵀ dy_{b,t}) (P_inᵀ x_{b,t})ᵀ      a k_out × k_in matrix, flattened row-major
           = (P_outᵀ ⊗ P_inᵀ) vec(G_b)

where ``P_in = projection_matrix(d_in, k_in, kind=kind, seed=seed_in)`` and
``P_out = projection_matrix(d_out, k_out, kind=kind, seed=seed_out)`` are the seeded
``[D, k]`` matrices of `fasttda.ops.project` (so ``x @ P_in == project(x, k_in, seed=seed_in)``),
each scaled by ``1/sqrt(k)``.

Seed rule (`factored_seeds`): the two sides get different matrices from one ``seed``::

    seed_in  = int.from_bytes(blake2b(b"fasttda.factored.in"  + seed.to_bytes(8, "little"), digest_size=8).digest(), "little")
    seed_out = int.from_bytes(blake2b(b"fasttda.factored.out" + seed.to_bytes(8, "little"), digest_size=8).digest(), "little")

Masked tokens (``mask`` False) contribute exactly nothing, even when their ``x`` or ``dy``
holds NaN or inf (padding positions sometimes do).

The reference materializes P_in and P_out once (``d·k`` entries each) and walks the tokens
in chunks, so its memory is ``O(B·T_chunk·(d_in + d_out))`` whatever T is. The Triton
kernel generates tiles of P_in and P_out in registers from the counter hash, projects a
token tile of x and dy, and accumulates the k_out × k_in product in registers: neither
the projected tokens nor per-token outer products ever reach memory.
"""
from __future__ import annotations

import hashlib

import torch

from fasttda._dispatch import Op, common_device
from fasttda.ops import _library
from fasttda.ops import _counter_hash as ch
from fasttda.ops._checks import as_token_mask, check_float_tensor, check_seed
from fasttda.ops.project import matrix_reference, _scale

KINDS = ("rademacher", "gaussian")
# Reference working set: a token chunk holds about this many x/dy entries.
CHUNK_ENTRIES = 1 << 22
_SIDE_TAGS = (b"fasttda.factored.in", b"fasttda.factored.out")


def factored_seeds(seed: int) -> tuple[int, int]:
    """``(seed_in, seed_out)`` for P_in and P_out, derived from ``seed`` (see module docstring)."""
    seed = check_seed(seed)
    return tuple(  # type: ignore[return-value]
        int.from_bytes(hashlib.blake2b(tag + seed.to_bytes(8, "little"), digest_size=8).digest(), "little")
        for tag in _SIDE_TAGS
    )


def project_factored(
    x: torch.Tensor,
    dy: torch.Tensor,
    *,
    k_in: int,
    k_out: int,
    seed: int = 0,
    mask: torch.Tensor | None = None,
    kind: str = "rademacher",
    backend: str | None = "auto",
) -> torch.Tensor:
    """Per-example ``Σ_t (P_outᵀ dy_t)(P_inᵀ x_t)ᵀ`` flattened to ``[B, k_out * k_in]`` float32.

    Args:
        x: ``[B, T, d_in]`` layer input, float32, bfloat16 or float16; any strides.
        dy: ``[B, T, d_out]`` gradient of the loss w.r.t. the layer output, same B and T.
        k_in, k_out: ranks of the input and output sides (ints ≥ 1).
        seed: int in [0, 2**64); P_in/P_out seeds come from `factored_seeds`.
        mask: optional ``[B, T]`` bool (or 0/1 integer or float) tensor; tokens where it is
            False/0 contribute nothing.
        kind: ``"rademacher"`` (±1) or ``"gaussian"`` entries, scaled by ``1/sqrt(k)``.
        backend: ``"auto"``, ``"reference"`` or ``"triton"``.

    Returns:
        ``[B, k_out * k_in]`` float32; row b is the k_out × k_in matrix in row-major order.
    """
    mask = check_factored_args(x, dy, k_in, k_out, seed, mask, kind)
    seed_in, seed_out = factored_seeds(seed)
    keys_in, keys_out = ch.seed_keys(seed_in, kind), ch.seed_keys(seed_out, kind)
    common_device(x, dy, mask, names=("x", "dy", "mask"))
    return _library.call("project_factored", x, dy, mask, k_in, k_out, kind, [*keys_in, *keys_out], backend or "auto")


# -- argument checks ----------------------------------------------------------------------
def check_factored_args(x, dy, k_in, k_out, seed, mask, kind):
    """Validate the arguments; return the mask as a bool tensor (or None)."""
    for name, t in (("x", x), ("dy", dy)):
        check_float_tensor(t, name, "B, T, d")
    if x.shape[:2] != dy.shape[:2]:
        raise ValueError(f"x and dy must agree on [B, T], got {tuple(x.shape[:2])} and {tuple(dy.shape[:2])}")
    for name, k in (("k_in", k_in), ("k_out", k_out)):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    check_seed(seed)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return as_token_mask(mask, "mask", x.shape[:2])


# -- reference ------------------------------------------------------------------------------
def side_matrix(dim: int, k: int, kind: str, keys: tuple[int, int], device) -> torch.Tensor:
    """Scaled ``[dim, k]`` float32 P of one side, from already derived hash keys."""
    return matrix_reference(dim, k, kind, keys[0], keys[1], 0, 1, device) * _scale(kind, k, 1)


def project_factored_reference(x, dy, mask, k_in, k_out, kind, keys_in, keys_out):
    B, T, d_in = x.shape
    d_out = dy.shape[2]
    p_in = side_matrix(d_in, k_in, kind, keys_in, x.device)
    p_out = side_matrix(d_out, k_out, kind, keys_out, x.device)
    out = torch.zeros(B, k_out, k_in, dtype=torch.float32, device=x.device)
    step = max(1, CHUNK_ENTRIES // (B * (d_in + d_out)))
    for lo in range(0, T, step):
        hi = min(T, lo + step)
        px = x[:, lo:hi].to(torch.float32) @ p_in  # [B, t, k_in]
        pdy = dy[:, lo:hi].to(torch.float32) @ p_out  # [B, t, k_out]
        if mask is not None:
            keep = mask[:, lo:hi, None]
            # where(), not a product: a NaN at a padding token must not leak in.
            px = torch.where(keep, px, 0.0)
            pdy = torch.where(keep, pdy, 0.0)
        out.baddbmm_(pdy.transpose(1, 2), px)
    return out.reshape(B, k_out * k_in)


PROJECT_FACTORED = Op(
    "project_factored",
    reference=project_factored_reference,
    triton="fasttda.kernels.project_factored:launch_project_factored",
)
