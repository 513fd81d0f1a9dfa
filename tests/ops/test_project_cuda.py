"""The CUDA Rademacher kernel against the reference (runs only where a GPU is present)."""
import pytest
import torch
from helpers import needs_cuda

from fasttda import ops


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,D,out_dim", [(1, 1, 1), (3, 7, 17), (33, 1000, 1000), (5, 4099, 512), (64, 70000, 300)])
def test_cuda_equals_reference_bitwise_on_exact_sums(dtype, B, D, out_dim, gen):
    x = torch.randint(-8, 9, (B, D), generator=gen).to(dtype)
    want = ops.project(x.float(), out_dim, seed=3, offset=2**32 + 1, backend="reference")
    got = ops.project(x.cuda(), out_dim, seed=3, offset=2**32 + 1, backend="cuda").cpu()
    assert torch.equal(got, want)


@needs_cuda
def test_cuda_float_inputs_close_and_strided(gen):
    base = torch.randn(3000, 40, generator=gen)
    x = base.t()[::2]  # non-contiguous [20, 3000]
    want = ops.project(x, 257, seed=1, backend="reference")
    got = ops.project(x.cuda(), 257, seed=1, backend="cuda").cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # bf16 hi+lo split keeps ~16 bits


@needs_cuda
def test_auto_routes_non_rademacher_kinds_to_triton(gen):
    x = torch.randn(4, 100, generator=gen).cuda()
    got = ops.project(x, 33, kind="gaussian")
    torch.testing.assert_close(got.cpu(), ops.project(x.cpu(), 33, kind="gaussian"), rtol=1e-4, atol=1e-4)
