"""score_topk / score_dense with integer queries (query_precision="int8"): int8 and int4 rows.

The integer dot products are exact on every backend, so the backends agree bit for bit; the
queries' rounding is checked on its own, and its effect on rankings against float queries.
"""
import pytest
import torch
from helpers import cpp_or_skip, needs_triton, triton_device

from fasttda.ops.quantize import quantize
from fasttda.ops.score import quantize_queries, score_dense, score_topk

INT_FORMATS = ["int8", "int4"]



def stored_ints(data, fmt, dim):
    """The stored integers as float64 [N, dim] (int4: nibble - 8, low nibble first)."""
    if fmt == "int8":
        return data.double()
    lo, hi = (data & 15).long() - 8, (data >> 4).long() - 8
    return torch.stack([lo, hi], dim=2).reshape(data.shape[0], -1)[:, :dim].double()


def oracle(q, data, scale, fmt, norms=None):
    """fl32(fl32(exact integer dot) * factor) * s_q, the documented semantics, from float64 integer sums."""
    q8, s_q = quantize_queries(q)
    dots = (q8.double() @ stored_ints(data, fmt, q.shape[1]).T).float()
    factor = scale if norms is None else scale * torch.where(norms > 0, 1.0 / norms, 0.0)
    return dots * factor * s_q[:, None]


def test_quantize_queries_rounds_to_nearest_with_a_scale_per_query(gen):
    q = torch.randn(9, 301, generator=gen) * torch.logspace(-3, 3, 9)[:, None]
    q[4] = 0.0
    q8, scale = quantize_queries(q)
    assert q8.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (9,)
    assert q8.abs().max() <= 127 and (q8[4] == 0).all() and scale[4] == 0
    nonzero = [i for i in range(9) if i != 4]
    assert (q8[nonzero].abs().amax(dim=1) == 127).all()
    err = (q.double() - scale.double()[:, None] * q8.double()).abs()
    assert (err <= scale.double()[:, None] * (0.5 + 1e-6)).all()


@pytest.mark.parametrize("fmt", INT_FORMATS)
@pytest.mark.parametrize("d", [1, 63, 130, 1031])
@pytest.mark.parametrize("nq", [1, 5, 8, 17])
def test_cpp_and_reference_agree_bitwise_and_with_the_oracle(gen, fmt, d, nq):
    cpp_or_skip()
    base = torch.randn(303, d + 9, generator=gen)
    data, scale = quantize(base[:, :d], fmt)[:2]
    wide = torch.zeros(data.shape[0], data.shape[1] + 3, dtype=data.dtype)
    wide[:, :data.shape[1]] = data
    strided = wide[:, :data.shape[1]]  # rows with stride(0) > width
    q = torch.randn(nq, d, generator=gen)
    args = dict(k=21, scales=scale, fmt=fmt, query_precision="int8")
    ref = score_topk(q, data, backend="reference", **args)
    cpp = score_topk(q, strided, backend="cpp", **args)
    assert torch.equal(ref[0], cpp[0]) and torch.equal(ref[1], cpp[1])
    expected = oracle(q, data, scale, fmt)
    assert torch.equal(expected.gather(1, ref[1]), ref[0])
    best, _ = torch.sort(expected, dim=1, descending=True, stable=True)
    assert torch.equal(best[:, :21], ref[0])
    dense = score_dense(q, strided, scales=scale, fmt=fmt, query_precision="int8", backend="cpp")
    assert torch.equal(dense, expected)


@pytest.mark.parametrize("fmt", INT_FORMATS)
def test_cosine_with_stored_norms(gen, fmt):
    cpp_or_skip()
    x = torch.randn(211, 77, generator=gen) * torch.rand(211, 1, generator=gen)
    data, scale = quantize(x, fmt)[:2]
    norms = x.norm(dim=1)
    q = torch.randn(3, 77, generator=gen)
    args = dict(k=10, scales=scale, norms=norms, normalize=True, fmt=fmt, query_precision="int8")
    ref = score_topk(q, data, backend="reference", **args)
    assert torch.equal(ref[0], score_topk(q, data, backend="cpp", **args)[0])
    qn = q / q.double().norm(dim=1, keepdim=True).float()
    expected = oracle(qn.float(), data, scale, fmt, norms)
    torch.testing.assert_close(ref[0], expected.gather(1, ref[1]), rtol=1e-6, atol=0)


def test_crafted_minus_128_bytes_are_summed_exactly(gen):
    cpp_or_skip()
    data = torch.randint(-128, 128, (64, 515), generator=gen, dtype=torch.int8)
    data[::3, ::2] = -128
    scale = torch.rand(64, generator=gen) + 0.5
    q = torch.randn(4, 515, generator=gen)
    args = dict(k=64, scales=scale, fmt="int8", query_precision="int8")
    ref = score_topk(q, data, backend="reference", **args)
    assert torch.equal(ref[0], score_topk(q, data, backend="cpp", **args)[0])
    assert torch.equal(ref[0], oracle(q, data, scale, "int8").gather(1, ref[1]))


@pytest.mark.parametrize("fmt", INT_FORMATS)
def test_rankings_stay_close_to_float_queries(gen, fmt):
    """The queries' rounding costs about what the rows' rounding costs: rankings barely move."""
    cpp_or_skip()
    x = torch.randn(4000, 256, generator=gen)
    data, scale = quantize(x, fmt)[:2]
    q = torch.randn(6, 256, generator=gen)
    exact = score_dense(q, data, scales=scale, fmt=fmt)
    rounded = score_dense(q, data, scales=scale, fmt=fmt, query_precision="int8")
    corr = torch.corrcoef(torch.stack([exact.flatten(), rounded.flatten()]))[0, 1]
    assert corr > 0.999
    top_exact = score_topk(q, data, k=50, scales=scale, fmt=fmt)[1]
    top_int = score_topk(q, data, k=50, scales=scale, fmt=fmt, query_precision="int8")[1]
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_exact, top_int)) / top_exact.numel()
    assert overlap > 0.85


def test_bad_arguments_name_the_problem(gen):
    x = torch.randn(20, 16, generator=gen)
    q = torch.randn(2, 16, generator=gen)
    data, scale = quantize(x, "int8")[:2]
    with pytest.raises(ValueError, match="query_precision must be one of"):
        score_topk(q, data, k=3, scales=scale, query_precision="int4")
    with pytest.raises(ValueError, match="needs int8 or int4 rows, got fmt='fp16'"):
        score_topk(q, x.half(), k=3, query_precision="int8")
    with pytest.raises(ValueError, match="one store at a time"):
        score_topk([q, q], [data, data], k=3, scales=[scale, scale], query_precision="int8")
    bad = q.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="queries has non-finite values in rows"):
        score_topk(bad, data, k=3, scales=scale, query_precision="int8")
    from fasttda.ops.score import score_topk_deferred

    for value in (float("nan"), float("inf")):  # deferred checks: the kernels still get valid int8 queries
        bad[1, 3] = value
        *_, ok = score_topk_deferred(bad, data, k=3, scales=scale, query_precision="int8")
        assert not bool(ok)


def test_feature_store_scores_with_integer_queries(gen, tmp_path):
    from fasttda import FeatureStore, score

    x = torch.randn(500, 40, generator=gen)
    with FeatureStore.create(tmp_path / "s", dim=40, fmt="int8") as store:
        store.append(x)
    store = FeatureStore.open(tmp_path / "s")
    q = torch.randn(3, 40, generator=gen)
    got = score(q, store, k=7, chunk_rows=128, query_precision="int8")
    data, scale = quantize(x, "int8")[:2]
    want = score_topk(q, data, k=7, scales=scale, query_precision="int8", backend="reference")
    assert torch.equal(got.values, want[0]) and (got.indices == want[1]).all()


@needs_triton
@pytest.mark.parametrize("fmt", INT_FORMATS)
def test_triton_equals_reference(gen, fmt):
    """float32 sums of these integers stay below 2^24, so the GPU's sums are exact too."""
    device = triton_device()
    x = torch.randn(150, 99, generator=gen)
    data, scale = quantize(x, fmt)[:2]
    q = torch.randn(5, 99, generator=gen)
    args = dict(k=9, scales=scale, fmt=fmt, query_precision="int8")
    ref = score_topk(q, data, backend="reference", **args)
    got = score_topk(q.to(device), data.to(device), backend="triton", **{**args, "scales": scale.to(device)})
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])
