"""score_topk / score_dense: reference vs a float64 oracle, Triton vs reference, ties, bad input."""
import numpy as np
import pytest
import torch
import helpers
from helpers import cpp_or_skip, needs_triton, triton_device

from fasttda import topk as topk_mod
from fasttda.ops import score as score_mod
from fasttda.ops.quantize import FORMATS, dequantize, quantize
from fasttda.ops.score import score_dense, score_topk

# float32 scores of d ~ 40 terms of O(1) against the float64 oracle
ATOL = 1e-4


def oracle_scores(queries, rows, scales, fmts, weights, normalize, norms=None):
    """float64 Σ_c w_c·⟨q_c, r_c⟩ (cosine per store when normalize) from dequantized rows."""
    total = 0.0
    for c, (q, r, s, f) in enumerate(zip(queries, rows, scales, fmts)):
        rr = dequantize(r, s, f, dim=q.shape[1]).double()
        qq = q.double()
        dots = qq @ rr.T
        if normalize:
            rn = rr.norm(dim=1) if norms is None else norms[c].double()
            qn = qq.norm(dim=1, keepdim=True)
            dots = dots * torch.where(qn > 0, 1 / qn, 0.0) * torch.where(rn > 0, 1 / rn, 0.0)
        total = total + weights[c] * dots
    return total


def oracle_topk(scores, k):
    """Top-k of float64 scores, ties by lower index (a stable descending sort)."""
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return values[:, :k], order[:, :k]


def assert_topk_matches(values, indices, scores, k, atol=ATOL):
    """values/indices are a correct top-k of ``scores`` up to float32 rounding."""
    ref_values, _ = oracle_topk(scores, k)
    assert values.shape == indices.shape == (scores.shape[0], k)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    torch.testing.assert_close(values.double(), ref_values, atol=atol, rtol=1e-5)
    torch.testing.assert_close(scores.gather(1, indices), values.double(), atol=atol, rtol=1e-5)
    assert all(len(set(row.tolist())) == k for row in indices)
    assert (values[:, :-1] >= values[:, 1:]).all()


def assert_same_ranking(a, b, tol=ATOL):
    """Two (values, indices) results agree: values within tol, indices wherever no near-tie."""
    helpers.assert_same_ranking(a, b, tol)


def make_store(x, fmt):
    data, scale = quantize(x, fmt)
    return data, scale, x.norm(dim=1)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("normalize", [False, True])
def test_reference_matches_float64(gen, fmt, normalize):
    q = torch.randn(3, 37, generator=gen)
    x = torch.randn(301, 37, generator=gen)
    data, scale, norms = make_store(x, fmt)
    values, indices = score_topk(q, data, k=10, scales=scale, norms=norms, normalize=normalize, fmt=fmt,
                                 backend="reference")
    scores = oracle_scores([q], [data], [scale], [fmt], [1.0], normalize, norms=[norms])
    assert_topk_matches(values, indices, scores, 10)


def test_single_query_and_fewer_rows_than_k(gen):
    q = torch.randn(1, 19, generator=gen)
    x = torch.randn(7, 19, generator=gen)
    values, indices = score_topk(q, x, k=100, backend="reference")
    assert values.shape == (1, 7)
    assert_topk_matches(values, indices, q.double() @ x.double().T, 7)


def test_bf16_queries_and_strided_inputs(gen):
    base = torch.randn(129, 50, generator=gen)
    rows = base[:, 3:44]  # row stride 50, column stride 1
    q = torch.randn(41, 4, generator=gen).T.to(torch.bfloat16)  # [4, 41], not contiguous
    values, indices = score_topk(q, rows, k=5, backend="reference")
    assert_topk_matches(values, indices, q.double() @ rows.double().T, 5)


@pytest.mark.parametrize("normalize", [False, True])
def test_multi_store_combination(gen, normalize):
    fmts = ["int8", "bf16", "int4"]
    dims = [24, 17, 33]
    weights = [0.5, 1.25, -1.0]
    xs = [torch.randn(203, d, generator=gen) * (c + 1) for c, d in enumerate(dims)]
    qs = [torch.randn(5, d, generator=gen) for d in dims]
    stores = [make_store(x, f) for x, f in zip(xs, fmts)]
    values, indices = score_topk(qs, [s[0] for s in stores], k=9, scales=[s[1] for s in stores],
                                 norms=[s[2] for s in stores], weights=weights, normalize=normalize, fmt=fmts,
                                 backend="reference")
    scores = oracle_scores(qs, [s[0] for s in stores], [s[1] for s in stores], fmts, weights, normalize,
                           norms=[s[2] for s in stores])
    assert_topk_matches(values, indices, scores, 9)


def test_cosine_without_stored_norms_uses_dequantized_norms(gen):
    q = torch.randn(2, 30, generator=gen)
    data, scale = quantize(torch.randn(90, 30, generator=gen), "int8")
    values, indices = score_topk(q, data, k=4, scales=scale, normalize=True, backend="reference")
    scores = oracle_scores([q], [data], [scale], ["int8"], [1.0], True)
    assert_topk_matches(values, indices, scores, 4)


def test_zero_norm_rows_and_queries_score_zero(gen):
    x = torch.randn(20, 8, generator=gen)
    x[[3, 11]] = 0.0
    q = torch.randn(2, 8, generator=gen)
    q[1] = 0.0
    dense = score_dense(q, x, normalize=True, norms=x.norm(dim=1), backend="reference")
    assert (dense[0, [3, 11]] == 0).all() and (dense[1] == 0).all()
    values, indices = score_topk(q, x, k=5, normalize=True, backend="reference")
    assert (values[1] == 0).all() and indices[1].tolist() == [0, 1, 2, 3, 4]  # all tied: lowest indices


def integer_case(gen, n=150, d=12, q=6):
    """Small integers: fp32 sums are exact on every backend, with many exact ties."""
    rows = torch.randint(-2, 3, (n, d), generator=gen).to(torch.float32)
    rows[n // 3: n // 3 + 20] = rows[:20]  # duplicated rows: exact ties at different indices
    rows[[5, n - 3]] = 0.0
    queries = torch.randint(-2, 3, (q, d), generator=gen).to(torch.float32)
    return queries, rows


@pytest.mark.parametrize("weight", [1.0, -1.0])
def test_ties_break_by_lower_index(gen, weight):
    queries, rows = integer_case(gen)
    values, indices = score_topk([queries], [rows], k=40, weights=[weight], backend="reference")
    ref_values, ref_indices = oracle_topk(weight * (queries.double() @ rows.double().T), 40)
    assert torch.equal(values.double(), ref_values)
    assert torch.equal(indices, ref_indices)


def test_chunked_reference_equals_one_chunk(gen, monkeypatch):
    q = torch.randn(4, 45, generator=gen)
    data, scale = quantize(torch.randn(1000, 45, generator=gen), "int8")
    whole = score_topk(q, data, k=25, scales=scale, backend="reference")
    monkeypatch.setattr(topk_mod, "SCORE_BUFFER_BYTES", 4 * 4 * 160)  # chunks of 160 rows
    monkeypatch.setattr(topk_mod, "BLOCK_BYTES", 4 * 45 * 16)  # blocks of 16 rows
    assert score_mod.chunk_rows(4, 45) == 160
    chunked = score_topk(q, data, k=25, scales=scale, backend="reference")
    assert_same_ranking(whole, chunked)
    queries, rows = integer_case(gen, n=700)
    assert_equal_results(score_topk(queries, rows, k=50, backend="reference"),
                         oracle_topk(queries.double() @ rows.double().T, 50))


def assert_equal_results(a, b):
    assert torch.equal(a[0].double(), b[0].double()) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_dense_matches_float64(gen, fmt, tmp_path):
    q = torch.randn(3, 21, generator=gen)
    data, scale = quantize(torch.randn(55, 21, generator=gen), fmt)
    oracle = oracle_scores([q], [data], [scale], [fmt], [2.0], False)
    dense = score_dense(q, data, scales=scale, weights=2.0, fmt=fmt, backend="reference")
    torch.testing.assert_close(dense.double(), oracle, atol=ATOL, rtol=1e-5)
    memmap = np.lib.format.open_memmap(tmp_path / "s.npy", mode="w+", dtype=np.float32, shape=(3, 55))
    assert score_dense(q, data, scales=scale, weights=2.0, fmt=fmt, out=memmap, backend="reference") is memmap
    memmap.flush()
    assert np.array_equal(np.load(tmp_path / "s.npy"), dense.numpy())


def test_fp8_rows_given_as_raw_bytes(gen):
    q = torch.randn(2, 16, generator=gen)
    data, scale = quantize(torch.randn(30, 16, generator=gen), "fp8_e4m3")
    typed = score_topk(q, data, k=3, scales=scale, backend="reference")
    raw = score_topk(q, data.view(torch.uint8), k=3, scales=scale, fmt="fp8_e4m3", backend="reference")
    assert_equal_results(typed, raw)


def test_bad_input(gen):
    q = torch.randn(2, 8, generator=gen)
    x = torch.randn(10, 8, generator=gen)
    data, scale = quantize(x, "int8")
    packed, scale4 = quantize(x, "int4")
    with pytest.raises(ValueError, match="k must be >= 1"):
        score_topk(q, x, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        score_topk(q, x, k=2.0)
    bad_q = q.clone()
    bad_q[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"queries has non-finite values in rows \[1\]"):
        score_topk(bad_q, x, k=2)
    with pytest.raises(ValueError, match="pass fmt='int4'"):
        score_topk(q, packed, k=2, scales=scale4)
    with pytest.raises(ValueError, match="scales is required"):
        score_topk(q, data, k=2)
    with pytest.raises(ValueError, match="rows have no scale"):
        score_topk(q, x, k=2, scales=scale)
    with pytest.raises(ValueError, match="columns wide"):
        score_topk(torch.randn(2, 9, generator=gen), x, k=2)
    with pytest.raises(ValueError, match="weights must be a list of 2"):
        score_topk([q, q], [x, x], k=2, weights=[1.0])
    with pytest.raises(ValueError, match="same N rows"):
        score_topk([q, q], [x, x[:5]], k=2)
    with pytest.raises(TypeError, match="both be tensors or both be lists"):
        score_topk([q], x, k=2)
    with pytest.raises(TypeError, match="must be torch.int8"):
        score_topk(q, x, k=2, fmt="int8")
    nan_rows = x.clone()
    nan_rows[4, 0] = float("inf")
    with pytest.raises(ValueError, match="scores are not finite"):
        score_topk(q, nan_rows, k=2, backend="reference")
    with pytest.raises(ValueError, match="out must be float32"):
        score_dense(q, x, out=torch.empty(2, 11))


# -- Triton under the interpreter ----------------------------------------------------------
def to_device(*tensors):
    return [t.to(triton_device()) if isinstance(t, torch.Tensor) else t for t in tensors]


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
def test_triton_equals_reference(gen, fmt):
    q, x = to_device(torch.randn(5, 37, generator=gen), torch.randn(203, 37, generator=gen))
    data, scale, norms = make_store(x, fmt)
    for normalize in (False, True):
        kwargs = dict(k=7, scales=scale, norms=norms, normalize=normalize, fmt=fmt)
        ref = score_topk(q, data, backend="reference", **kwargs)
        tri = score_topk(q, data, backend="triton", **kwargs)
        assert_same_ranking(tri, ref)
    torch.testing.assert_close(score_dense(q, data, scales=scale, fmt=fmt, backend="triton"),
                               score_dense(q, data, scales=scale, fmt=fmt, backend="reference"), atol=ATOL, rtol=1e-5)


@needs_triton
def test_triton_multi_store_and_odd_shapes(gen):
    fmts = ["fp16", "int4", "int8"]
    dims = [9, 70, 33]
    qs = to_device(*[torch.randn(17, d, generator=gen) for d in dims])  # two query blocks
    stores = [make_store(to_device(torch.randn(131, d, generator=gen))[0], f) for d, f in zip(dims, fmts)]
    kwargs = dict(k=5, scales=[s[1] for s in stores], norms=[s[2] for s in stores], weights=[1.0, -0.5, 2.0],
                  normalize=True, fmt=fmts)
    ref = score_topk(qs, [s[0] for s in stores], backend="reference", **kwargs)
    assert_same_ranking(score_topk(qs, [s[0] for s in stores], backend="triton", **kwargs), ref)


@needs_triton
@pytest.mark.parametrize("weight", [1.0, -1.0])
def test_triton_ties_equal_reference_exactly(gen, weight):
    queries, rows = to_device(*integer_case(gen, n=150))
    ref = score_topk([queries], [rows], k=40, weights=[weight], backend="reference")
    assert_equal_results(score_topk([queries], [rows], k=40, weights=[weight], backend="triton"), ref)
    assert_equal_results(ref, oracle_topk(weight * (queries.double().cpu() @ rows.double().cpu().T), 40))


@needs_triton
def test_triton_large_k_falls_back_to_dense_tiles(gen, monkeypatch):
    from fasttda.kernels import score as kernel

    monkeypatch.setattr(kernel, "MAX_KERNEL_K", 8)
    queries, rows = to_device(*integer_case(gen, n=90))
    ref = score_topk(queries, rows, k=30, backend="reference")
    assert_equal_results(score_topk(queries, rows, k=30, backend="triton"), ref)


@needs_triton
@pytest.mark.parametrize("k, n, ascending", [(5, 70, False), (40, 200, True)])
def test_triton_sort_network_merge(gen, monkeypatch, k, n, ascending):
    """The GPU's merge (tile top-k by tl.topk, then a bitonic merge with the running best;
    slow under the interpreter, so small cases). Rows sorted by ascending score make every
    64-row tile replace most of the running top-k (K_PAD = 64 for k = 40)."""
    from fasttda.kernels import score as kernel

    monkeypatch.setattr(kernel, "SORT_NETWORK_IN_INTERPRETER", True)
    queries, rows = integer_case(gen, n=n, q=3)
    if ascending:
        rows = rows[torch.argsort(rows @ queries[0], stable=True)]
    queries, rows = to_device(queries, rows)
    ref = score_topk(queries, rows, k=k, backend="reference")
    assert_equal_results(score_topk(queries, rows, k=k, backend="triton"), ref)


# -- C++ CPU kernel -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_cpp_equals_reference(gen, fmt):
    cpp_or_skip()
    q = torch.randn(6, 45, generator=gen)
    base = torch.randn(700, 47, generator=gen)
    data, scale, norms = make_store(base[:, :45], fmt)
    if fmt == "fp32":
        data = base[:, :45]  # strided rows
    for normalize in (False, True):
        kwargs = dict(k=13, scales=scale, norms=norms, normalize=normalize, fmt=fmt)
        assert_same_ranking(score_topk(q, data, backend="cpp", **kwargs),
                            score_topk(q, data, backend="reference", **kwargs))
    torch.testing.assert_close(score_dense(q, data, scales=scale, fmt=fmt, backend="cpp"),
                               score_dense(q, data, scales=scale, fmt=fmt, backend="reference"), atol=ATOL, rtol=1e-5)


def test_cpp_multi_store_ties_and_chunks(gen):
    cpp_or_skip()
    queries, rows = integer_case(gen, n=400)
    half = rows[:, :6].to(torch.bfloat16)
    args = ([queries, queries[:, :6]], [rows, half])
    kwargs = dict(k=60, weights=[1.0, -1.0])
    expected = oracle_topk(queries.double() @ rows.double().T - queries[:, :6].double() @ half.double().T, 60)
    assert_equal_results(score_topk(*args, backend="cpp", **kwargs), expected)
    assert_equal_results(score_topk(*args, backend="reference", **kwargs), expected)


def test_cpp_rejects_non_finite_rows(gen):
    cpp_or_skip()
    x = torch.randn(50, 8, generator=gen)
    x[7, 2] = float("nan")
    with pytest.raises(ValueError, match="scores are not finite"):
        score_topk(torch.randn(2, 8, generator=gen), x, k=3, backend="cpp")


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_many_queries_span_several_chunks(gen, backend):
    """Q = 2048 makes a 32 MiB score buffer hold 4096 rows: 5000 rows take two chunks."""
    if backend == "cpp":
        cpp_or_skip()
    queries, rows = integer_case(gen, n=5000, d=128, q=2048)
    assert score_mod.chunk_rows(2048, 128) == 4096
    assert_equal_results(score_topk(queries, rows, k=7, backend=backend),
                         oracle_topk(queries.double() @ rows.double().T, 7))


@needs_triton
def test_triton_many_row_slices_merge_on_host(gen, monkeypatch):
    """On a GPU the rows are split over many programs whose top-k are merged on the host;
    the interpreter runs one slice unless told otherwise."""
    from fasttda.kernels import score as kernel

    monkeypatch.setattr(kernel, "_programs_target", lambda device: 6)
    queries, rows = to_device(*integer_case(gen, n=300, q=20))  # Q=20: a 32-query block, padded
    assert kernel._plan(20, 300, 12, 16, rows.device)[2] == 5  # 5 slices of 64 rows
    ref = score_topk(queries, rows, k=10, backend="reference")
    assert_equal_results(score_topk(queries, rows, k=10, backend="triton"), ref)
    x = to_device(torch.randn(300, 12, generator=gen))[0]
    assert_same_ranking(score_topk(queries, x, k=10, backend="triton"), score_topk(queries, x, k=10, backend="reference"))


# -- C++ scan: the few-queries (dot) path and the many-queries (sgemm) path ------------------
def _unscaled(data, scale, fmt, d):
    """The stored values as float64, before their per-row scale."""
    return dequantize(data, None if scale is None else torch.ones_like(scale), fmt, dim=d).double()


# Q <= 16 takes the register-blocked dot path (tiles of 8/4/2/1 queries); Q = 21 the dot
# path for formats narrower than float32 and the sgemm path for fp32; Q = 37 the sgemm path
# for every format. d spans widths below one vector, vector tails and (for int4) odd widths.
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("nq,d", [(1, 45), (3, 71), (8, 5), (13, 64), (21, 33), (37, 50)])
def test_cpp_scan_matches_float64(gen, fmt, nq, d):
    cpp_or_skip()
    n = 613
    q = torch.randn(nq, d, generator=gen)
    x = torch.randn(n, d + 3, generator=gen) * torch.rand(n, 1, generator=gen) * 3
    data, scale = quantize(x[:, :d].contiguous(), fmt)
    if fmt == "fp32":
        data = x[:, :d]  # strided rows
    raw = _unscaled(data, scale, fmt, d)
    factor = 1.0 if scale is None else scale.double()
    scores = q.double() @ raw.T * factor
    tol = helpers.fp32_dot_bound(q, raw) * factor
    values, indices = score_topk(q, data, k=17, scales=scale, fmt=fmt, backend="cpp")
    helpers.assert_topk_tie_aware(values, indices, scores, 17, tol)
    dense = score_dense(q, data, scales=scale, fmt=fmt, backend="cpp")
    assert ((dense.double() - scores).abs() <= tol).all()


@pytest.mark.parametrize("nq", [2, 20, 35])  # dot path, dot path (no fp32 store), sgemm path
def test_cpp_multi_store_factors_and_cosine(gen, nq):
    """Three stores of different formats and widths, weights, stored norms, cosine."""
    cpp_or_skip()
    n, dims, fmts = 530, (37, 16, 9), ("int8", "fp16", "int4")
    qs = [torch.randn(nq, d, generator=gen) for d in dims]
    xs = [torch.randn(n, d, generator=gen) for d in dims]
    stores = [quantize(x, f) for x, f in zip(xs, fmts)]
    data, scales = [s[0] for s in stores], [s[1] for s in stores]
    norms = [x.norm(dim=1) for x in xs]
    weights = [0.5, -1.0, 2.0]
    kwargs = dict(k=25, scales=scales, norms=norms, weights=weights, normalize=True, fmt=list(fmts))
    values, indices = score_topk(qs, data, backend="cpp", **kwargs)
    scores = oracle_scores(qs, data, scales, fmts, weights, True, norms=norms)
    tol = sum(abs(w) * helpers.fp32_dot_bound(q / q.norm(dim=1, keepdim=True), _unscaled(r, s, f, q.shape[1]), extra=4)
              * (1.0 if s is None else s.double()) / nm.double()
              for w, q, r, s, f, nm in zip(weights, qs, data, scales, fmts, norms))
    helpers.assert_topk_tie_aware(values, indices, scores, 25, tol)


@pytest.mark.parametrize("nq", [1, 3, 9, 33])
def test_cpp_fp8_every_code(gen, nq):
    """Every fp8 e4m3 byte converts exactly (the dot path reads them as fp16 bits, 2^-8 times
    the value); a NaN code (0x7F, 0xFF) anywhere in a row, vector body or tail, makes the
    scores non-finite, for 1 query (one row per tile), a few and many (33: the sgemm path)."""
    cpp_or_skip()
    codes = torch.arange(256, dtype=torch.int64)
    finite = codes[(codes & 0x7F) != 0x7F].to(torch.uint8)
    rows = finite[torch.randperm(finite.numel(), generator=gen)].reshape(-1, 254 // 2)  # 2 rows x 127
    rows = torch.cat([rows, rows.flip(1)])
    q = torch.randn(nq, rows.shape[1], generator=gen)
    raw = rows.view(torch.float8_e4m3fn).double()
    scale = torch.ones(rows.shape[0])
    values, indices = score_topk(q, rows, k=4, scales=scale, fmt="fp8_e4m3", backend="cpp")
    helpers.assert_topk_tie_aware(values, indices, q.double() @ raw.T, 4, helpers.fp32_dot_bound(q, raw))
    dense = score_dense(q, rows, scales=scale, fmt="fp8_e4m3", backend="cpp")
    assert ((dense.double() - q.double() @ raw.T).abs() <= helpers.fp32_dot_bound(q, raw)).all()
    for nan, col in ((0x7F, 100), (0xFF, 3), (0x7F, 126)):  # 126: past the last full vector
        bad = rows.clone()
        bad[1, col] = nan
        with pytest.raises(ValueError, match="scores are not finite"):
            score_topk(q, bad, k=2, scales=scale, fmt="fp8_e4m3", backend="cpp")
