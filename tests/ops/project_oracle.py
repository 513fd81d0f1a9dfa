"""An independent float64 oracle for the projection matrices: numpy uint32 arithmetic
(native wrap-around), written from the definitions in fasttda/ops/_counter_hash.py rather
than from the reference's int64-with-masks code."""
import numpy as np

from fasttda.ops._counter_hash import seed_keys

M1, M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)


def mix(x):
    x = x.astype(np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= M1
        x ^= x >> np.uint32(15)
        x *= M2
        x ^= x >> np.uint32(16)
    return x


def words(in_dim, n_cols, offset, k_row, k_col):
    i = np.arange(offset, offset + in_dim, dtype=np.uint64)
    hi = (i >> np.uint64(32)).astype(np.uint32)
    lo = (i & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    rk = mix(mix(hi ^ np.uint32(k_row)) ^ lo)
    ck = mix(np.arange(n_cols, dtype=np.uint32) ^ np.uint32(k_col))
    with np.errstate(over="ignore"):
        return mix(rk[:, None] + ck[None, :])


def matrix64(in_dim, out_dim, kind, seed, offset=0, s=1, absolute=False):
    """Scaled P ``[in_dim, out_dim]`` in float64; with ``absolute``, Σ|term| per entry (for SJLT,
    replicas of one coordinate that land in one bucket with opposite signs cancel in P but
    are still two float32 terms of the sum, so error bounds need this)."""
    k_row, k_col = seed_keys(seed, kind)
    if kind == "rademacher":
        w = words(in_dim, (out_dim + 31) // 32, offset, k_row, k_col)
        j = np.arange(out_dim)
        bits = (w[:, j // 32] >> (j % 32).astype(np.uint32)) & np.uint32(1)
        return (1.0 - 2.0 * bits.astype(np.float64)) / np.sqrt(out_dim)
    if kind == "gaussian":
        w = words(in_dim, 2 * ((out_dim + 1) // 2), offset, k_row, k_col)
        u1 = ((w[:, 0::2] >> np.uint32(8)).astype(np.float64) + 1.0) * 2.0**-24
        u2 = (w[:, 1::2] >> np.uint32(8)).astype(np.float64) * 2.0**-24
        r = np.sqrt(-2.0 * np.log(u1))
        pairs = np.stack((r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)), axis=2)
        return pairs.reshape(in_dim, -1)[:, :out_dim] / np.sqrt(out_dim)
    w = words(in_dim, s, offset, k_row, k_col)
    P = np.zeros((in_dim, out_dim))
    sign = 1.0 - 2.0 * (w & np.uint32(1)).astype(np.float64)
    bucket = (w >> np.uint32(1)) % np.uint32(out_dim)
    for r in range(s):
        np.add.at(P, (np.arange(in_dim), bucket[:, r]), np.abs(sign[:, r]) if absolute else sign[:, r])
    return P / np.sqrt(s)
