"""`score_topk` / `score_dense`: queries against stored rows, with streaming top-k.

The score of query q against stored row n is

    S[q, n] = Σ_c  w_c · ⟨q_c, r_c[n]⟩                      (normalize=False)
    S[q, n] = Σ_c  w_c · ⟨q_c, r_c[n]⟩ / (‖q_c‖ · ‖r_c[n]‖)   (normalize=True, cosine per store)

over C ≥ 1 stores c (one store: C = 1, w = 1). ``r_c[n]`` is row n of store c
dequantized (`fasttda.ops.quantize` formats); its per-row scale is applied to the dot
product rather than to the row, and the row norm is the fp32 norm stored before
quantization (``norms``), or, when no norms are given, the norm of the dequantized row.
A zero-norm row or query has cosine 0 with everything.

Ordering is total and identical across backends: higher score first, equal scores by
lower row index (`pack_keys` turns each (score, index) into one int64 whose order is
exactly that). ``-0.0`` counts as ``0.0``.

Backends: ``reference`` (below; the CPU fallback and the oracle), ``cpp`` (csrc/cpu/score.cpp:
the same algorithm with hand-written row conversion, picked by ``auto`` on CPU tensors
when it builds), ``triton`` (kernels/score.py: dequantization in the load stage, running
top-k in registers, the score matrix never materialized).

Integer queries (``query_precision="int8"``, int8 and int4 rows, one store): each query
row is rounded to int8 with its own scale, ``q ≈ s_q · q8`` (``s_q = max|q| / 127``), and the
score is ``fl32(fl32(⟨q8, r[n]⟩) · factor[n]) · s_q`` where the integer dot product is exact.
Every backend computes exactly that (the reference in float64, the C++ scan in int32 with
VNNI / AVX2 byte multiplies, the GPU in float32, exact while |partial sums| < 2^24), so the
backends agree bitwise on CPU. The price is the query's rounding (relative error about
1/254 per element, like the int8 rows'); the gain is the scan at the rows' memory speed.

Memory: the reference never holds more than one chunk of scores (``Q × chunk`` float32,
at most `fasttda.topk.SCORE_BUFFER_BYTES`) plus one block of dequantized rows (``BLOCK_BYTES``),
whatever N is; int8/fp8/int4/bf16/fp16 rows are converted to float32 in those small,
cache-resident blocks just before their matmul.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fasttda._dispatch import Op, common_device
from fasttda.formats import TORCH_DTYPE
from fasttda.ops import _library
from fasttda.ops.quantize import FP8, SCALED_QMAX, check_format, storage_dtype, stored_width, unpack_int4
from fasttda.topk import (MAX_ROWS, block_rows, chunk_rows, chunk_topk_keys, merge_topk,  # noqa: F401 (API)
                          pack_keys, pack_keys_at, unpack_keys)


# the format a dtype implies (uint8 is fp8 bits or int4 pairs: the caller must say which)
_FMT_OF_DTYPE = {dtype: name for name, dtype in TORCH_DTYPE.items() if dtype != torch.uint8}
QUERY_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def score_topk(queries, rows, *, k: int, scales=None, norms=None, weights=None, normalize: bool = False,
               fmt=None, query_precision: str = "fp32",
               backend: str | None = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The k best rows for each query: ``(values [Q, k] float32, indices [Q, k] int64)``.

    Args:
        queries: ``[Q, d]`` float tensor, or a list of C such tensors (one per store).
        rows: ``[N, stored width]`` in a store format (see `fasttda.ops.quantize`), or a list
            of C such tensors with the same N.
        k: rows to return per query, ``>= 1``; ``k > N`` returns all N.
        scales: float32 ``[N]`` per-row scales for int8 / fp8_e4m3 / int4 rows (a list for C stores,
            None entries for unscaled formats).
        norms: float32 ``[N]`` row L2 norms before quantization, used by ``normalize=True``.
        weights: one float per store (default 1.0 each): the combination Σ_c w_c·score_c.
        normalize: cosine instead of dot product, per store.
        fmt: the row format; inferred from the dtype except for uint8 rows (``"int4"``, or
            ``"fp8_e4m3"`` stored as raw bytes). A list for C stores.
        query_precision: ``"fp32"`` (default: float32 products), or ``"int8"``: the queries
            rounded to int8 with a per-query scale, exact integer dot products (int8 and int4
            rows, one store; see the module's docstring), several times faster on CPU at Q <= 8.
        backend: ``"auto"``, ``"reference"``, ``"triton"`` or ``"cpp"``.

    Raises ValueError for non-finite queries, and when scores come out non-finite (NaN/inf
    rows or scales, or float32 overflow). Rows come back best first; equal scores in increasing row index, on every backend.
    """
    values, indices = _score_topk(queries, rows, k, scales, norms, weights, normalize, fmt, query_precision, backend,
                                  None)
    check_finite_scores(values)
    return values, indices


def score_topk_deferred(queries, rows, *, k: int, scales=None, norms=None, weights=None, normalize: bool = False,
                        fmt=None, query_precision: str = "fp32", backend: str | None = "auto"):
    """`score_topk` without host syncs: ``(values, indices, ok)``.

    ``ok`` is a 0-dim bool tensor on the rows' device, False when the queries, scales or
    norms hold NaN/inf (or negative scales/norms) or the scores are not finite; the values
    are then meaningless. Shapes, dtypes and formats are still checked at once (they need
    no device data). A caller streaming many chunks (`fasttda.score`) combines the flags on
    the device, reads them once at the end, and on failure calls `score_topk` on the
    chunks again for the precise error.
    """
    checks: list[torch.Tensor] = []
    values, indices = _score_topk(queries, rows, k, scales, norms, weights, normalize, fmt, query_precision, backend,
                                  checks)
    checks.append(finite(values))
    return values, indices, torch.stack(checks).all()


def _score_topk(queries, rows, k, scales, norms, weights, normalize, fmt, query_precision, backend, checks):
    _check_k(k)
    terms = prepare_terms(queries, rows, scales=scales, norms=norms, weights=weights, normalize=normalize, fmt=fmt,
                          query_precision=query_precision, checks=checks)
    k = min(k, terms.n_rows)
    q = terms.queries[0].shape[0]
    if k == 0:
        return torch.empty(q, 0, device=terms.device), torch.empty(q, 0, dtype=torch.int64, device=terms.device)
    values, indices = _library.call("score_topk", terms.queries, terms.rows, terms.factors, ",".join(terms.fmts), k,
                                    backend or "auto")
    if terms.query_scales is not None:  # a positive factor per query: the order stands
        values = values * terms.query_scales[:, None]
    return values, indices


def score_dense(queries, rows, *, scales=None, norms=None, weights=None, normalize: bool = False, fmt=None,
                out=None, query_precision: str = "fp32", backend: str | None = "auto"):
    """The full ``[Q, N]`` float32 score matrix (same arguments as `score_topk`, no k).

    ``out``: an optional float32 ``[Q, N]`` destination, a torch tensor or a numpy array
    (an ``np.memmap`` writes the matrix to disk chunk by chunk); it is returned.
    """
    terms = prepare_terms(queries, rows, scales=scales, norms=norms, weights=weights, normalize=normalize, fmt=fmt,
                          query_precision=query_precision)
    shape = (terms.queries[0].shape[0], terms.n_rows)
    result = out
    if out is None:
        result = out = torch.empty(shape, dtype=torch.float32, device=terms.device)
    elif not isinstance(out, torch.Tensor):
        import numpy as np

        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a torch.Tensor or a numpy array, got {type(out).__name__}")
        out = torch.from_numpy(out)  # shares memory, so a memmap is written in place
    if tuple(out.shape) != shape or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 {list(shape)}, got {out.dtype} {list(out.shape)}")
    if out.device != terms.device:
        raise ValueError(f"out is on {out.device} but rows are on {terms.device}")
    _, impl = SCORE_DENSE.resolve(backend, terms.device)
    impl(terms.queries, terms.rows, terms.factors, terms.fmts, out)
    if terms.query_scales is not None:
        out.mul_(terms.query_scales[:, None])
    return result


# -- argument checks ----------------------------------------------------------------------
@dataclass
class Terms:
    """Checked, kernel-ready inputs: per store c, float32 queries already multiplied by
    w_c (and divided by ‖q_c‖ for cosine), the stored rows, and a float32 per-row factor
    (scale, times 1/‖r‖ for cosine; None when it would be all ones). With integer queries,
    ``queries[0]`` is int8 and ``query_scales`` the float32 ``[Q]`` factor of each query's scores."""

    queries: list
    rows: list
    factors: list
    fmts: list
    n_rows: int
    device: torch.device
    query_scales: torch.Tensor | None = None


def _as_list(value, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries but there are {count} stores")
        return list(value)
    if count > 1 and value is not None and name != "fmt":
        raise ValueError(f"{name} must be a list of {count} entries (one per store), got {type(value).__name__}")
    return [value] * count


def _check_k(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")


def infer_format(rows: torch.Tensor, fmt) -> str:
    if fmt is None:
        if rows.dtype == torch.uint8:
            raise ValueError("rows are uint8: pass fmt='int4' (packed nibbles) or fmt='fp8_e4m3' (raw fp8 bytes)")
        if rows.dtype not in _FMT_OF_DTYPE:
            raise TypeError(f"rows dtype {rows.dtype} is not a store format; expected one of "
                            f"{sorted(str(d) for d in _FMT_OF_DTYPE)} or uint8 with fmt='int4'")
        return _FMT_OF_DTYPE[rows.dtype]
    check_format(fmt)
    expected = storage_dtype(fmt)
    if rows.dtype != expected and not (fmt == "fp8_e4m3" and rows.dtype == torch.uint8):
        raise TypeError(f"rows for fmt={fmt!r} must be {expected}, got {rows.dtype}")
    return fmt


def prepare_terms(queries, rows, *, scales=None, norms=None, weights=None, normalize=False, fmt=None,
                  query_precision: str = "fp32", checks: list | None = None) -> Terms:
    """Checked, kernel-ready inputs. Value checks (NaN/inf queries, scales, norms) raise at
    once, or, given a ``checks`` list, append 0-dim device bools to it (no host sync)."""
    multi = isinstance(rows, (list, tuple))
    if multi != isinstance(queries, (list, tuple)):
        raise TypeError("queries and rows must both be tensors or both be lists (one entry per store)")
    queries_list = list(queries) if multi else [queries]
    rows_list = list(rows) if multi else [rows]
    count = len(rows_list)
    if count == 0:
        raise ValueError("rows is an empty list; give at least one store")
    if len(queries_list) != count:
        raise ValueError(f"queries has {len(queries_list)} entries but rows has {count}")
    if weights is None:
        weights_list = [1.0] * count
    elif isinstance(weights, (int, float)) and not multi:
        weights_list = [weights]
    else:
        weights_list = [float(w) for w in weights] if isinstance(weights, (list, tuple)) else None
        if weights_list is None or len(weights_list) != count:
            raise ValueError(f"weights must be a list of {count} floats (one per store), got {weights!r}")
    if not all(math.isfinite(w) for w in weights_list):
        raise ValueError(f"weights must be finite, got {weights_list}")
    scales_list = _as_list(scales, count, "scales")
    norms_list = _as_list(norms, count, "norms")
    fmt_list = _as_list(fmt, count, "fmt")
    for c in range(count):
        tag = f"[{c}]" if multi else ""
        for name, t in ((f"queries{tag}", queries_list[c]), (f"rows{tag}", rows_list[c])):
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                raise ValueError(f"{name} must be a 2-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
    device = common_device(*queries_list, *rows_list, names=tuple(
        [f"queries[{c}]" for c in range(count)] + [f"rows[{c}]" for c in range(count)]))

    out = Terms([], [], [], [], -1, device)
    n_q = None
    for c in range(count):
        tag = f"[{c}]" if multi else ""
        q, r = queries_list[c], rows_list[c]
        if q.dtype not in QUERY_DTYPES:
            raise TypeError(f"queries{tag} must be a float tensor, got {q.dtype}")
        if n_q is None:
            n_q = q.shape[0]
        if q.shape[0] != n_q or n_q < 1:
            raise ValueError(f"every queries tensor needs the same Q >= 1 rows, got {q.shape[0]} for queries{tag}")
        if checks is not None:
            checks.append(torch.isfinite(q).all())
        else:
            bad = (~torch.isfinite(q)).any(dim=1).nonzero().flatten()
            if bad.numel():
                raise ValueError(f"queries{tag} has non-finite values in rows {bad[:10].tolist()}")
        f = infer_format(r, fmt_list[c])
        if f == "fp8_e4m3" and r.dtype == torch.uint8:
            r = r.view(FP8)
        dim = q.shape[1]
        if stored_width(f, dim) != r.shape[1]:
            raise ValueError(f"rows{tag} is {r.shape[1]} columns wide, but queries{tag} have d={dim} "
                             f"(fmt={f!r} stores {stored_width(f, dim)} columns)")
        if out.n_rows < 0:
            out.n_rows = r.shape[0]
        if r.shape[0] != out.n_rows:
            raise ValueError(f"every store needs the same N rows, got {r.shape[0]} for rows{tag} and {out.n_rows} before")
        if out.n_rows > MAX_ROWS:
            raise ValueError(f"rows{tag} has {out.n_rows} rows; one call scores at most {MAX_ROWS} (split the store)")
        factor = _row_factor(r, f, dim, scales_list[c], norms_list[c], normalize, tag, checks)
        qf = q.to(torch.float32)
        if normalize:
            qn = q.to(torch.float64).norm(dim=1, keepdim=True)
            qf = (q.to(torch.float64) * torch.where(qn > 0, weights_list[c] / qn, 0.0)).to(torch.float32)
        elif weights_list[c] != 1.0:
            qf = (q.to(torch.float64) * weights_list[c]).to(torch.float32)
        out.queries.append(qf.contiguous())
        out.rows.append(r if r.stride(-1) == 1 else r.contiguous())
        out.factors.append(factor)
        out.fmts.append(f)
    if query_precision != "fp32":
        _integer_queries(out, query_precision)
    return out


QUERY_PRECISIONS = ("fp32", "int8")
INTEGER_QUERY_FORMATS = ("int8", "int4")


def _integer_queries(terms: Terms, query_precision) -> None:
    if query_precision not in QUERY_PRECISIONS:
        raise ValueError(f"query_precision must be one of {QUERY_PRECISIONS}, got {query_precision!r}")
    if len(terms.fmts) != 1:
        raise ValueError(f"query_precision={query_precision!r} scores one store at a time, got {len(terms.fmts)}")
    if terms.fmts[0] not in INTEGER_QUERY_FORMATS:
        raise ValueError(f"query_precision={query_precision!r} needs int8 or int4 rows, got fmt={terms.fmts[0]!r}")
    terms.queries[0], terms.query_scales = quantize_queries(terms.queries[0])


def quantize_queries(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: ``(q8 int8 [Q, d] in [-127, 127], scale float32 [Q])``, q ≈ scale · q8.

    ``scale = max|q| / 127`` in float32; ``q8 = round(q / scale)`` in float64. A zero row has
    scale 0 and q8 = 0."""
    scale = q.abs().amax(dim=1) / 127.0
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float64)
    q8 = torch.round(q.to(torch.float64) / divisor[:, None])
    # NaN/inf rows (the deferred checks report them later) must not reach a kernel as -128
    q8 = q8.nan_to_num_(nan=0.0, posinf=127.0, neginf=-127.0).clamp_(-127, 127).to(torch.int8)
    return q8, scale


def _row_factor(rows, fmt, dim, scale, norm, normalize, tag, checks=None):
    n = rows.shape[0]
    factor = None
    if fmt in SCALED_QMAX:
        if scale is None:
            raise ValueError(f"scales{tag} is required for fmt={fmt!r} rows")
        factor = _vector(scale, n, f"scales{tag}", rows.device, checks)
    elif scale is not None:
        raise ValueError(f"scales{tag} was given but fmt={fmt!r} rows have no scale")
    if norm is not None:
        norm = _vector(norm, n, f"norms{tag}", rows.device, checks)
    if not normalize:
        return factor
    if norm is None:
        norm = dequantized_norms(rows, fmt, dim, factor)
    inv = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))
    return inv if factor is None else factor * inv


def _vector(t, n, name, device, checks=None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.shape != (n,):
        raise ValueError(f"{name} must be a tensor [{n}], got {getattr(t, 'shape', type(t).__name__)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the rows are on {device}")
    t = t.to(torch.float32).contiguous()
    if checks is not None:
        checks.append(finite(t) & (t.numel() == 0 or t.min() >= 0))
    elif not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return t


def dequantized_norms(rows, fmt, dim, scale) -> torch.Tensor:
    """L2 norms of the dequantized rows, a block at a time (when no stored norms are given)."""
    norms = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
    step = block_rows(dim)
    for lo in range(0, rows.shape[0], step):
        hi = min(rows.shape[0], lo + step)
        norms[lo:hi] = as_float(rows[lo:hi], fmt, dim).norm(dim=1)
    return norms if scale is None else norms * scale


NOT_FINITE = ("scores are not finite: the rows or scales hold NaN/inf (a FeatureStore never does), or the dot "
              "products overflow float32; rescale the features")


def finite(t: torch.Tensor) -> torch.Tensor:
    """0-dim bool on ``t``'s device: no NaN/inf in ``t`` (no host sync; two reductions, no temporary)."""
    if not t.numel():
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)  # both propagate NaN
    return torch.isfinite(lo) & torch.isfinite(hi)


def check_finite_scores(values: torch.Tensor, first_row: int = 0) -> None:
    # One summing pass (cheap next to the matmul) rules out NaN/inf; only then look closer.
    if values.numel() and not math.isfinite(values.sum().item()):
        if not torch.isfinite(values).all():
            raise ValueError(NOT_FINITE.replace("float32;", f"float32 (rows from {first_row});"))


# -- keys: one int64 per (score, row) that sorts as "higher score, then lower row" -------------
# -- reference ------------------------------------------------------------------------------
def as_float(block: torch.Tensor, fmt: str, dim: int) -> torch.Tensor:
    """Stored rows as float32, unscaled (the scale is applied to the dot products)."""
    return unpack_int4(block, dim) if fmt == "int4" else block.to(torch.float32)


def chunk_scores(queries, rows, factors, fmts, lo: int, hi: int, out: torch.Tensor) -> torch.Tensor:
    """Scores of rows ``[lo, hi)`` into ``out [Q, hi - lo]``, a block of rows at a time."""
    for c, (q, r, factor, fmt) in enumerate(zip(queries, rows, factors, fmts)):
        if c == 0 and fmt == "fp32" and out.is_contiguous():  # no conversion: one matmul into out
            torch.mm(q, r[lo:hi].T, out=out)
            if factor is not None:
                out *= factor[lo:hi]
            continue
        dim = q.shape[1]
        step = hi - lo if fmt == "fp32" else block_rows(dim)
        for b in range(lo, hi, step):
            e = min(hi, b + step)
            if q.dtype == torch.int8:  # integer queries: the exact integer dot product, rounded once
                part = (q.to(torch.float64) @ as_float(r[b:e], fmt, dim).to(torch.float64).T).to(torch.float32)
            else:
                part = q @ as_float(r[b:e], fmt, dim).T
            if factor is not None:
                part *= factor[b:e]
            dest = out[:, b - lo:e - lo]
            if c == 0:
                dest.copy_(part)
            else:
                dest += part
    return out


def score_topk_reference(queries, rows, factors, fmts, k):
    n_rows, n_q = rows[0].shape[0], queries[0].shape[0]
    step = chunk_rows(n_q, max(q.shape[1] for q in queries))
    buffer = torch.empty(n_q * min(step, n_rows), dtype=torch.float32, device=queries[0].device)
    best, ok = None, None
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        scores = chunk_scores(queries, rows, factors, fmts, lo, hi, buffer[:n_q * (hi - lo)].view(n_q, hi - lo))
        ok = finite(scores) if ok is None else ok & finite(scores)  # on the device: no sync per chunk
        best = merge_topk(best, chunk_topk_keys(scores, lo, k), k)
    values, indices = unpack_keys(best)
    return torch.where(ok, values, float("nan")), indices  # a non-finite score anywhere: NaN values, reported by the op


def score_dense_reference(queries, rows, factors, fmts, out):
    n_rows, n_q = rows[0].shape[0], queries[0].shape[0]
    step = chunk_rows(n_q, max(q.shape[1] for q in queries))
    ok = None
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        chunk_ok = finite(chunk_scores(queries, rows, factors, fmts, lo, hi, out[:, lo:hi]))
        ok = chunk_ok if ok is None else ok & chunk_ok  # on the device: one sync, at the end
    if ok is not None and not bool(ok):
        raise ValueError(NOT_FINITE)
    return out


SCORE_TOPK = Op("score_topk", reference=score_topk_reference, triton="fasttda.kernels.score:launch_score_topk",
                cpp="score_topk")
SCORE_DENSE = Op("score_dense", reference=score_dense_reference, triton="fasttda.kernels.score:launch_score_dense",
                 cpp="score_dense")
