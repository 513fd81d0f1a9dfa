"""Triton twins of `fasttda.ops._counter_hash`: the same words, bit for bit.

Scalars (keys, ``out_dim``) go through ``tl.cast``, not ``.to``: Triton turns an int
argument equal to 1 into a constexpr, which has no ``.to``. Keys arrive as int32 with the
key's bits (`_launch.as_i32`); the cast to uint32 keeps the bits.

All hash arithmetic is uint32 (wrapping multiply, logical shifts). Row indices are int64
so offsets past 2**32 (whole-model gradients) stay exact. Every projection kernel builds
its tiles of P from these helpers; tests compare them against the reference bitwise.
"""
import triton
import triton.language as tl


@triton.jit
def mix(x):
    """lowbias32 finalizer on uint32."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def row_keys(i, k_row):
    """row_key for int64 input coordinates ``i`` (any shape)."""
    hi = (i >> 32).to(tl.uint32)
    lo = (i & 0xFFFFFFFF).to(tl.uint32)
    return mix(mix(hi ^ tl.cast(k_row, tl.uint32)) ^ lo)


@triton.jit
def col_keys(c, k_col):
    """col_key for int32/int64 column counters ``c`` (any shape)."""
    return mix(tl.cast(c, tl.uint32) ^ tl.cast(k_col, tl.uint32))


@triton.jit
def words(rk, ck):
    """word(i, c) from broadcastable row and column keys."""
    return mix(rk + ck)


@triton.jit
def gaussian_tile(rk, col0, k_col, BLOCK_C: tl.constexpr):
    """Unscaled N(0, 1) float32 tile ``[R, BLOCK_C]`` of columns ``col0 + [0, BLOCK_C)``, ``col0``
    even: Box–Muller per column pair (column 2j: r·cos θ, 2j + 1: r·sin θ). Each pair's two
    hashes, log and sqrt are computed once for both columns (half the work and registers of
    one Box–Muller per entry, and the same values)."""
    pair = col0 + 2 * tl.arange(0, BLOCK_C // 2)
    w1 = words(rk[:, None], col_keys(pair, k_col)[None, :])
    w2 = words(rk[:, None], col_keys(pair + 1, k_col)[None, :])
    u1 = ((w1 >> 8) + 1).to(tl.float32) * (1.0 / 16777216.0)
    u2 = (w2 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    r = tl.sqrt(-2.0 * tl.log(u1))
    theta = u2 * 6.283185307179586
    return tl.reshape(tl.join(r * tl.cos(theta), r * tl.sin(theta)), (rk.shape[0], BLOCK_C))


@triton.jit
def rademacher_tile_packed(rk, word_start, N_WORDS: tl.constexpr, k_col):
    """Unscaled ±1 tile ``[R, 32 * N_WORDS]`` for columns ``[32 * word_start, ...)``.

    One hash per 32 entries, then a shift per entry: generation stays cheap when the
    tile is multiplied by only a few rows (the common case: B ≤ 32 examples per launch).
    """
    w = words(rk[:, None], col_keys(word_start + tl.arange(0, N_WORDS), k_col)[None, :])
    shifts = tl.arange(0, 32).to(tl.uint32)
    bits = (w[:, :, None] >> shifts[None, None, :]) & 1
    bits = tl.reshape(bits, (rk.shape[0], N_WORDS * 32))
    return 1.0 - 2.0 * bits.to(tl.float32)


@triton.jit
def sjlt_targets(rk, r, k_col, out_dim):
    """Bucket (int32) and sign (float32) of replica ``r`` for row keys ``rk``."""
    h = words(rk, col_keys(tl.cast(r, tl.uint32), k_col))
    bucket = ((h >> 1) % tl.cast(out_dim, tl.uint32)).to(tl.int32)
    sign = 1.0 - 2.0 * (h & 1).to(tl.float32)
    return bucket, sign
