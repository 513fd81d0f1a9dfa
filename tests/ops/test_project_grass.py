"""`ops.project_grass` (GraSS: Bernoulli mask then SJLT) against a float64 numpy oracle."""
import math

import numpy as np
import pytest
import torch

from fasttda import ops
from fasttda.ops.project_grass import keep_threshold
from helpers import needs_triton, triton_device
from project_oracle import words
from fasttda.ops._counter_hash import seed_keys


def grass_matrix64(in_dim, out_dim, keep, seed, offset=0, scaled=True):
    """The GraSS sketch as a dense float64 ``[in_dim, out_dim]`` matrix, from the module docstring."""
    k_row, k_col = seed_keys(seed, "grass")
    w = words(in_dim, 2, offset, k_row, k_col)
    threshold = keep_threshold(keep)
    kept = (w[:, 1] >> np.uint32(8)) < threshold
    m = np.zeros((in_dim, out_dim))
    rows = np.nonzero(kept)[0]
    m[rows, (w[rows, 0] >> np.uint32(1)) % out_dim] = 1.0 - 2.0 * (w[rows, 0] & np.uint32(1))
    return m / math.sqrt(threshold / 2**24) if scaled else m


def check_against_oracle(x, out, want_matrix):
    want = x.double().numpy() @ want_matrix
    # each output is a signed sum of at most D inputs: float32 rounding grows like sqrt(D)
    tol = 4 * math.sqrt(x.shape[1]) * 2**-24 * (np.abs(x.double().numpy()) @ np.abs(want_matrix)).max() + 1e-6
    np.testing.assert_allclose(out.double().numpy(), want, rtol=0, atol=tol)


# the Triton case runs on a GPU, or on the CPU under TRITON_INTERPRET=1; skipped otherwise
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("B, D, k, keep, offset", [(3, 1001, 37, 0.25, 0), (17, 333, 64, 1.0, 5 + 2**33), (1, 77, 5, 0.6, 9)])
def test_grass_matches_float64_oracle(backend, B, D, k, keep, offset, gen):
    x = torch.randn(B, D + 3, generator=gen)[:, 3:]  # odd strides
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    xd = x.to(triton_device()) if backend == "triton" else x
    got = ops.project_grass(xd, k, keep=keep, seed=seed, offset=offset, backend=backend).cpu()
    assert got.dtype == torch.float32 and got.shape == (B, k)
    check_against_oracle(x, got, grass_matrix64(D, k, keep, seed, offset))
    raw = ops.project_grass(xd, k, keep=keep, seed=seed, offset=offset, scaled=False, backend=backend).cpu()
    check_against_oracle(x, raw, grass_matrix64(D, k, keep, seed, offset, scaled=False))


def test_grass_offset_identity_and_bf16(gen):
    x = torch.randn(4, 500, generator=gen)
    whole = ops.project_grass(x, 31, keep=0.3, seed=np.uint64(7))  # numpy seeds are ints
    parts = ops.project_grass(x[:, :123], 31, keep=0.3, seed=7) + ops.project_grass(x[:, 123:], 31, keep=0.3, seed=7, offset=123)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)
    xb = x.to(torch.bfloat16)
    check_against_oracle(xb.float(), ops.project_grass(xb, 31, keep=0.3, seed=7), grass_matrix64(500, 31, 0.3, 7))


def test_grass_keeps_about_keep_times_d_and_preserves_norms(gen):
    d, keep = 20_000, 0.1
    m = grass_matrix64(d, 256, keep, seed=3, scaled=False)
    kept = int((m != 0).sum())
    assert abs(kept - keep * d) < 5 * math.sqrt(d * keep * (1 - keep))  # Binomial(d, keep)
    x = torch.randn(8, d, generator=gen)
    ratio = ops.project_grass(x, 256, keep=keep, seed=3).norm(dim=1) / x.norm(dim=1)
    assert ((ratio - 1).abs() < 0.25).all(), ratio


def test_grass_bad_input():
    x = torch.randn(2, 10)
    for keep in (0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="keep"):
            ops.project_grass(x, 4, keep=keep)
    with pytest.raises(ValueError, match="out_dim"):
        ops.project_grass(x, 0, keep=0.5)
    with pytest.raises(ValueError, match="offset"):
        ops.project_grass(x, 4, keep=0.5, offset=-1)
    with pytest.raises(TypeError, match="seed"):
        ops.project_grass(x, 4, keep=0.5, seed=1.0)
    with pytest.raises(TypeError, match="x must be"):
        ops.project_grass(x.to(torch.int32), 4, keep=0.5)
