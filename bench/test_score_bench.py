import pytest

from bench_helpers import op_or_skip


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("Q", [1, 32])
def test_score_topk(benchmark, randn, fmt, Q):
    score_topk = op_or_skip("fasttda.ops", "score_topk")
    quantize = op_or_skip("fasttda.ops", "quantize")
    data, scale = quantize(randn(65536, 256), fmt)
    q = randn(Q, 256)
    kwargs = {"scales": scale} if scale is not None else {}
    import inspect

    params = inspect.signature(score_topk).parameters
    if "fmt" in params:
        kwargs["fmt"] = fmt
    if "dim" in params:
        kwargs["dim"] = 256
    values, indices = benchmark(score_topk, q, data, k=50, **kwargs)[:2]
    assert indices.shape == (Q, 50)


@pytest.mark.parametrize("Q", [1, 32])
def test_torch_topk_baseline(benchmark, randn, Q):
    import torch

    rows, q = randn(65536, 256), randn(Q, 256)
    values, indices = benchmark(lambda: torch.topk(q @ rows.T, 50, dim=1))
    assert indices.shape == (Q, 50)
