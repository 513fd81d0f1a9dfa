"""Triton scoring kernel: dequantize in the load stage, fp32 accumulation, in-kernel top-k.

One kernel, two epilogues. Each program owns a block of queries and a contiguous slice of
rows, and walks that slice a tile of ``BLOCK_N`` rows at a time. For each tile it sums,
over the C stores, the fp32 ``tl.dot`` of the (already weighted, normalized) queries with
the tile's rows, dequantized as they are loaded (int8 / fp8 converted, int4 unpacked), then
multiplies by the per-row factor (scale, times 1/‖r‖ under cosine). Then either

* ``TOPK``: the tile's scores become int64 keys (the same `pack_keys` order as the
  reference: higher score, then lower row index), and the program keeps its running best
  ``K_PAD`` keys in registers, sorted ascending. A tile that holds a key better than some
  query's k-th best is merged: its top ``K_PAD`` (``tl.topk``, descending), the elementwise
  max with the running best (a bitonic sequence that holds the ``K_PAD`` best of both),
  and ``log2(K_PAD)`` compare-and-swap stages (``tl.bitonic_merge``). Sorting the joined
  ``2·K_PAD`` keys instead spilled kilobytes of registers. The program writes its ``K_PAD``
  keys once; a small ``torch.topk`` over ``[Q, programs × K_PAD]`` keys finishes. The score
  matrix never exists.
* dense: the tile is stored into ``out`` (`score_dense`, and top-k with k > ``MAX_KERNEL_K``,
  where the launcher scores bounded chunks and merges them on the host).

Stores are passed as tuples (one entry per store) and unrolled at compile time, so DDA's
N+1 checkpoints are one pass over the rows.
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from fasttda.formats import FMT_CODE
from fasttda.kernels._launch import interpreted, launch, multiprocessor_count, triton_interpreted
from fasttda.kernels.quantize import fp8_e4m3_value
from fasttda.topk import chunk_rows, chunk_topk_keys, merge_topk, unpack_keys

MAX_KERNEL_K = 256
INT64_MIN = tl.constexpr(-9223372036854775808)  # a global read in @triton.jit must be a constexpr
# Under TRITON_INTERPRET=1, merge by repeated max instead of tl.topk (see
# `_merge_by_extraction`); tests set this to run the GPU's sort-network merge too.
SORT_NETWORK_IN_INTERPRETER = False


@triton.jit
def _load_rows_t(rows_ptr, row_stride, offs_n, offs_d, mask, FMT: tl.constexpr):
    """A ``[BLOCK_D, BLOCK_N]`` tile of rows (transposed), as unscaled float32."""
    row_offsets = offs_n.to(tl.int64)[None, :] * row_stride  # N × stride may pass 2**31
    if FMT == 5:  # int4: column d is nibble d % 2 of byte d // 2, stored as q + 8
        ptrs = rows_ptr + row_offsets + (offs_d[:, None] // 2)
        byte = tl.load(ptrs, mask=mask, other=0).to(tl.int32)
        vals = ((byte >> ((offs_d[:, None] & 1) * 4)) & 0xF).to(tl.float32) - 8.0
    elif FMT == 4:  # fp8 e4m3 as raw bytes, decoded with integer ops: sm_80 has no fp8 type
        ptrs = rows_ptr + row_offsets + offs_d[:, None]
        vals = fp8_e4m3_value(tl.load(ptrs, mask=mask, other=0))
    else:
        ptrs = rows_ptr + row_offsets + offs_d[:, None]
        vals = tl.load(ptrs, mask=mask, other=0).to(tl.float32)
    return tl.where(mask, vals, 0.0)


@triton.jit
def _merge_by_extraction(best, keys, K_PAD: tl.constexpr):
    """The K_PAD largest of ``best`` and ``keys`` (distinct keys), by repeated max.

    Equal to the ``tl.topk`` merge; used under the interpreter, where Triton's sort network
    runs element by element in Python (seconds per call) while a max is one numpy call.
    """
    offs_k = tl.arange(0, K_PAD)
    merged = tl.full(best.shape, INT64_MIN, tl.int64)
    for j in tl.static_range(K_PAD):
        top = tl.maximum(tl.max(best, axis=1), tl.max(keys, axis=1))[:, None]
        merged = tl.where(offs_k[None, :] == j, top, merged)
        best = tl.where(best == top, INT64_MIN, best)
        keys = tl.where(keys == top, INT64_MIN, keys)
    return merged


@triton.jit
def _score_kernel(
    q_ptrs, rows_ptrs, row_strides, factor_ptrs, dims,
    out_ptr, out_stride, n_queries, n_rows, rows_per_program,
    FMTS: tl.constexpr, HAS_FACTOR: tl.constexpr, TOPK: tl.constexpr, K_PAD: tl.constexpr, SORT_MERGE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Scores of a ``[BLOCK_Q]`` query block against a slice of rows, summed over the C stores;
    either a running top-k of packed keys (``TOPK``) or the dense tile.

    Precision: ``tl.dot(..., input_precision="ieee")``: float32 FMA, no tensor cores, so the
    GPU sums exactly the float32 products the reference sums (in another order); integer-valued
    inputs give bitwise the reference's scores. Division: none (the launcher folds 1/‖r‖ into
    the per-row factor).

    Numerics: dot=ieee; div=none.
    """
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = offs_q < n_queries
    start = pid_s * rows_per_program
    stop = tl.minimum(start + rows_per_program, n_rows)
    best = tl.full([BLOCK_Q, K_PAD], INT64_MIN, tl.int64)
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < stop
        acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
        for c in tl.static_range(len(FMTS)):
            dim = dims[c]
            part = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                d_mask = offs_d < dim
                q = tl.load(q_ptrs[c] + offs_q[:, None] * dim + offs_d[None, :],
                            mask=q_mask[:, None] & d_mask[None, :], other=0.0)
                r = _load_rows_t(rows_ptrs[c], row_strides[c], offs_n, offs_d,
                                 d_mask[:, None] & n_mask[None, :], FMTS[c])
                part = tl.dot(q, r, part, input_precision="ieee")
            if HAS_FACTOR[c]:
                factor = tl.load(factor_ptrs[c] + offs_n, mask=n_mask, other=0.0)
                part = part * factor[None, :]
            acc += part
        if TOPK:
            acc = tl.where(acc == 0.0, 0.0, acc)  # -0.0 sorts as 0.0, as in the reference
            bits = acc.to(tl.int32, bitcast=True)
            ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
            keys = (ordered << 32) | (0xFFFFFFFF - offs_n.to(tl.int64))[None, :]
            keys = tl.where(q_mask[:, None] & n_mask[None, :], keys, INT64_MIN)
            # Merge only tiles that hold a key better than some query's current k-th best:
            # after the first tiles that is rare, and the sort network is the costly part.
            kth = tl.min(best, axis=1)
            if tl.sum((keys > kth[:, None]).to(tl.int32)) > 0:
                if SORT_MERGE:
                    # best is sorted ascending, the tile's top K_PAD descending: their
                    # elementwise max is bitonic and holds the K_PAD best of both, which
                    # log2(K_PAD) compare-and-swap stages sort ascending again.
                    best = tl.bitonic_merge(tl.maximum(best, tl.topk(keys, K_PAD)), descending=False)
                else:
                    best = _merge_by_extraction(best, keys, K_PAD)
        else:
            ptrs = out_ptr + offs_q.to(tl.int64)[:, None] * out_stride + offs_n[None, :]
            tl.store(ptrs, acc, mask=q_mask[:, None] & n_mask[None, :])
    if TOPK:
        offs_k = tl.arange(0, K_PAD)
        ptrs = out_ptr + offs_q.to(tl.int64)[:, None] * out_stride + pid_s * K_PAD + offs_k[None, :]
        tl.store(ptrs, best, mask=q_mask[:, None])


def _programs_target(device: torch.device) -> int:
    # 4 programs per SM on a GPU; the interpreter (0 SMs) runs programs one after another
    return max(1, 4 * multiprocessor_count(device))


def _blocks(n_queries: int, dim: int, k_pad: int, gpu: bool):
    # The running top-k holds [BLOCK_Q, K_PAD] int64 keys plus a tile's [BLOCK_Q, BLOCK_N]
    # in registers: past K_PAD = 64, 16 queries per program on 8 warps keep it out of local
    # memory (the compile check limits spills). On a GPU the float32 FMA dot holds its
    # operands' whole BLOCK_D slice in registers: BLOCK_D = 16 (255 registers and 1 KB of
    # spills at 64, 178 registers and none at 16, sm_90a). The interpreter takes wide tiles.
    block_q = 16 if n_queries <= 16 or k_pad > 64 else 32
    block_n = max(64, k_pad)
    block_d = 16 if gpu else 32 if dim <= 32 else 64
    return block_q, block_n, block_d


def _gpu_options(k_pad: int) -> dict:
    # 8 warps at every k: with 4, ptxas spills up to 28 bytes of the FMA dot's operands
    # (3 stores, or d not a multiple of 16, where the pipelined loads stay in registers)
    return {"num_warps": 8}


def _plan(n_q: int, n: int, dim: int, k_pad: int, device: torch.device):
    """Block sizes, rows per program and the number of row slices for ``n`` rows."""
    block_q, block_n, block_d = _blocks(n_q, dim, k_pad, not interpreted(device))
    q_blocks = triton.cdiv(n_q, block_q)
    if k_pad:  # top-k: few long slices, each merged once on the host
        splits = max(1, min(triton.cdiv(n, block_n), _programs_target(device) // q_blocks))
    else:
        splits = max(1, min(triton.cdiv(n, block_n), 4 * _programs_target(device)))
    per_program = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    return (block_q, block_n, block_d), per_program, triton.cdiv(n, per_program)


def _raw(rows: torch.Tensor, fmt: str) -> torch.Tensor:
    """fp8 rows as their bytes (the kernel decodes them); other formats as given."""
    return rows.view(torch.uint8) if fmt == "fp8_e4m3" else rows


def _launch(queries, rows, factors, fmts, out, n_lo, n_hi, k_pad, plan):
    (block_q, block_n, block_d), per_program, splits = plan
    n_q = queries[0].shape[0]
    empty = torch.empty(0, dtype=torch.float32, device=out.device)
    grid = (triton.cdiv(n_q, block_q), splits)
    launch(
        _score_kernel, grid,
        tuple(queries), tuple(_raw(r[n_lo:n_hi], f) for r, f in zip(rows, fmts)), tuple(r.stride(0) for r in rows),
        tuple(empty if f is None else f[n_lo:n_hi] for f in factors), tuple(q.shape[1] for q in queries),
        out, out.stride(0), n_q, n_hi - n_lo, per_program,
        FMTS=tuple(FMT_CODE[f] for f in fmts), HAS_FACTOR=tuple(f is not None for f in factors),
        TOPK=k_pad > 0, K_PAD=max(k_pad, 1), SORT_MERGE=SORT_NETWORK_IN_INTERPRETER or not triton_interpreted(),
        BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d,
        **({} if interpreted(out.device) else _gpu_options(k_pad)),
    )


def _dense(queries, rows, factors, fmts, out, n_lo, n_hi):
    dim = max(q.shape[1] for q in queries)
    plan = _plan(queries[0].shape[0], n_hi - n_lo, dim, 0, out.device)
    _launch(queries, rows, factors, fmts, out, n_lo, n_hi, 0, plan)


def _float_queries(queries):
    """int8 queries (integer mode) as float32: the same integers, summed exactly while |sums| < 2^24."""
    return [q.to(torch.float32) if q.dtype == torch.int8 else q for q in queries]


def launch_score_topk(queries, rows, factors, fmts, k):
    queries = _float_queries(queries)
    n_q, n_rows = queries[0].shape[0], rows[0].shape[0]
    dim = max(q.shape[1] for q in queries)
    device = queries[0].device
    if k > MAX_KERNEL_K:  # too many keys for registers: dense tiles in bounded chunks, host merge
        step = chunk_rows(n_q, dim)
        buffer = torch.empty(n_q, min(step, n_rows), dtype=torch.float32, device=device)
        best = None
        for lo in range(0, n_rows, step):
            hi = min(n_rows, lo + step)
            scores = buffer[:, :hi - lo]
            _dense(queries, rows, factors, fmts, scores, lo, hi)
            best = merge_topk(best, chunk_topk_keys(scores, lo, k), k)
        return unpack_keys(best)
    k_pad = max(16, triton.next_power_of_2(k))  # tl.dot needs tiles of 16+ rows
    plan = _plan(n_q, n_rows, dim, k_pad, device)
    keys = torch.empty(n_q, plan[2] * k_pad, dtype=torch.int64, device=device)
    _launch(queries, rows, factors, fmts, keys, 0, n_rows, k_pad, plan)
    return unpack_keys(torch.topk(keys, k, dim=1).values)


def launch_score_dense(queries, rows, factors, fmts, out):
    queries = _float_queries(queries)
    if out.stride(1) != 1:
        raise ValueError("backend='triton' writes rows of out contiguously; give out with stride(1) == 1")
    _dense(queries, rows, factors, fmts, out, 0, rows[0].shape[0])
    return out
