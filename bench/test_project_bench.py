import pytest

from bench_helpers import op_or_skip


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sjlt"])
@pytest.mark.parametrize("B,D,k", [(8, 1 << 14, 512), (32, 1 << 16, 1024)])
def test_project(benchmark, randn, kind, B, D, k):
    project = op_or_skip("fasttda.ops", "project")
    x = randn(B, D)
    benchmark.extra_info.update(flops=2 * B * D * k)
    out = benchmark(project, x, k, kind=kind, seed=0)
    assert out.shape == (B, k)


def test_project_factored(benchmark, randn):
    project_factored = op_or_skip("fasttda.ops", "project_factored")
    x, dy = randn(4, 128, 256), randn(4, 128, 384)
    out = benchmark(project_factored, x, dy, k_in=16, k_out=16, seed=0)
    assert out.shape == (4, 256)
