"""TRAK's tests/test_jl.py and tests/test_jl_additional.py with FastTDAProjector as the projector.

Upstream: ``BasicProjector = CudaProjector`` on ``cuda:0``; here ``BasicProjector =
FastTDAProjector`` on the CPU, grid cut to CPU size (3 of the 7 shapes, ~1000 wide instead
of ~10_000 and without the 1e9-wide row; proj dims 64 and 16 instead of 4096 and 1024; the
int32-overflow shapes are GPU-memory cases). Note that upstream's norm test divides the
projected norm by sqrt(grad_dim) where an unscaled sketch needs sqrt(proj_dim): it passes
only while sqrt(proj_dim / grad_dim) is within 35·eps of 1, which holds on this grid.
TRAK's own ChunkedCudaProjector is used where upstream uses it: it is plain PyTorch and
hands numpy-integer seeds to the per-chunk projectors.
"""
import math
from itertools import product

import numpy as np
import pytest
import torch
from torch import testing

trak_projectors = pytest.importorskip("trak.projectors")
from trak.projectors import ChunkedCudaProjector, ProjectionType  # noqa: E402

from fasttda.integrations.trak import FastTDAProjector  # noqa: E402

ch = torch
BasicProjector = FastTDAProjector
DEVICE = "cpu"
MAX_BATCH_SIZE = 32


def get_max_chunk_size(batch_size: int):
    # Upstream: np.iinfo(np.uint32).max // batch_size (a GPU-memory budget; ChunkedCudaProjector
    # allocates a [batch, max_chunk_size] buffer, 16 GiB at batch 1). CPU size: the same budget
    # scaled by 2**-20, which also splits the ~1000-wide inputs into several chunks, so the
    # per-chunk numpy seeds are exercised.
    return (np.iinfo(np.uint32).max >> 20) // batch_size


def make_input(input_shape, max_chunk_size, device=DEVICE, dtype=torch.float32, g_tensor=None):
    g = testing.make_tensor(*input_shape, device=device, dtype=dtype) if g_tensor is None else g_tensor
    _, num_params = input_shape
    num_chunks = np.ceil(num_params / max_chunk_size).astype("int32")
    return dict(enumerate(ch.chunk(g, num_chunks, dim=1)))


PARAM = list(product(
    [0, 10**8],  # seed (upstream: 0, 1, 10**8)
    [ProjectionType.normal, ProjectionType.rademacher],  # proj type
    [ch.float16, ch.float32],  # dtype
    [(1, 25), (9, 1_002), (45, 1049)],  # input shape (CPU size)
    [64, 16],  # proj dim (CPU size)
))


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM)
def test_seed_consistency(seed, proj_type, dtype, proj_dim, input_shape):
    proj = BasicProjector(grad_dim=input_shape[-1], proj_dim=proj_dim, proj_type=proj_type, seed=seed,
                          device=DEVICE, dtype=dtype, max_batch_size=MAX_BATCH_SIZE)
    g = make_input(input_shape, get_max_chunk_size(input_shape[0]), DEVICE, dtype)
    result = proj.project(g, model_id=0)
    result_again = proj.project(g, model_id=0)
    testing.assert_close(result, result_again, equal_nan=True)


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM)
def test_seed_consistency_2(seed, proj_type, dtype, proj_dim, input_shape):
    g = make_input(input_shape, get_max_chunk_size(input_shape[0]), DEVICE, dtype)
    kw = dict(grad_dim=input_shape[-1], proj_dim=proj_dim, proj_type=proj_type, seed=seed, device=DEVICE,
              dtype=dtype, max_batch_size=MAX_BATCH_SIZE)
    result = BasicProjector(**kw).project(g, model_id=0)
    result_again = BasicProjector(**kw).project(g, model_id=0)
    testing.assert_close(result, result_again, equal_nan=True)


NUM_TRIALS = 100


def _pair_trials(g, p, preserved) -> int:
    """Upstream's loop: NUM_TRIALS random pairs (i, j) of rows (np.random, as upstream draws
    them); how many keep their norm or product, as ``preserved(g_i, g_j, p_i, p_j)`` judges."""
    g = ch.cat([v for v in g.values()], dim=1)
    count = 0
    for _ in range(NUM_TRIALS):
        i, j = np.random.choice(range(g.shape[0]), size=2)
        count += preserved(g[i], g[j], p[i], p[j])
    return count


def _chunked(g, seed, proj_type, dtype, proj_dim, batch_size, max_chunk_size):
    seeds = np.random.default_rng(seed).integers(low=0, high=500, size=len(g))  # numpy int64 seeds
    sizes = [v.size(1) for v in g.values()]
    per_chunk = [BasicProjector(grad_dim=n, proj_dim=proj_dim, seed=seeds[i], proj_type=proj_type,
                                max_batch_size=MAX_BATCH_SIZE, dtype=dtype, device=DEVICE)
                 for i, n in enumerate(sizes)]
    return ChunkedCudaProjector(per_chunk, max_chunk_size, sizes, batch_size, DEVICE, dtype)


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM)
def test_norm_preservation(seed, proj_type, dtype, proj_dim, input_shape):
    batch_size = input_shape[0]
    max_chunk_size = get_max_chunk_size(batch_size)
    g = make_input(input_shape, max_chunk_size, DEVICE, dtype)
    p = _chunked(g, seed, proj_type, dtype, proj_dim, batch_size, max_chunk_size).project(g, model_id=0)
    delta = 0.05
    eps = np.sqrt(np.log(1 / delta) / proj_dim)

    def preserved(gi, gj, pi, pj):
        n = (gi - gj).norm()
        pn = (pi - pj).norm() / np.sqrt(input_shape[-1])
        return int((n - pn).cpu().abs().item() <= 35 * eps * n)
    assert _pair_trials(g, p, preserved) >= NUM_TRIALS * (1 - 3 * delta)


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM)
def test_prod_preservation(seed, proj_type, dtype, proj_dim, input_shape):
    g = make_input(input_shape, get_max_chunk_size(input_shape[0]), DEVICE, dtype)
    proj = BasicProjector(grad_dim=input_shape[-1], proj_dim=proj_dim, proj_type=proj_type, seed=seed,
                          device=DEVICE, dtype=dtype, max_batch_size=MAX_BATCH_SIZE)
    p = proj.project(g, model_id=0)
    delta = 0.2
    eps = np.sqrt(np.log(1 / delta) / proj_dim)

    def preserved(gi, gj, pi, pj):
        n = gi @ gj
        pn = (pi / np.sqrt(input_shape[-1])) @ (pj / input_shape[-1])
        res = (n.abs() - pn.abs()).cpu().abs().item()
        t = (50 * np.sqrt(proj_dim) * eps * n).abs().item()
        return max(int(res <= t), math.isinf(res), math.isinf(t))
    assert _pair_trials(g, p, preserved) >= NUM_TRIALS * (1 - 2 * delta)


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM)
def test_single_nonzero_feature(seed, proj_type, dtype, proj_dim, input_shape):
    g = make_input(input_shape, get_max_chunk_size(input_shape[0]), DEVICE, dtype)
    for k in g.keys():
        g[k] = ch.zeros_like(g[k])
    for ind in range(input_shape[0]):
        param_group = np.random.choice(range(len(g.keys())))
        coord = np.random.choice(range(g[param_group].size(1)))
        g[param_group][ind, coord] = ch.randn(1).item()
    proj = BasicProjector(grad_dim=input_shape[-1], proj_dim=proj_dim, proj_type=proj_type, seed=seed,
                          device=DEVICE, dtype=dtype, max_batch_size=MAX_BATCH_SIZE)
    p = proj.project(g, model_id=0)
    assert (~ch.isclose(p, ch.zeros_like(p))).all().item()


@pytest.mark.parametrize("which", [0, -1])
@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM)
def test_first_and_last_nonzero_feature(seed, proj_type, dtype, proj_dim, input_shape, which):
    """Upstream test_first_nonzero_feature (which=0) and test_last_nonzero_feature (which=-1)."""
    g = ch.zeros(*input_shape, device=DEVICE, dtype=dtype)
    g[:, which] = 1.0
    g = make_input(input_shape, get_max_chunk_size(input_shape[0]), g_tensor=g)
    proj = BasicProjector(grad_dim=input_shape[-1], proj_dim=proj_dim, proj_type=proj_type, seed=seed,
                          device=DEVICE, dtype=dtype, max_batch_size=MAX_BATCH_SIZE)
    p = proj.project(g, model_id=0)
    assert (~ch.isclose(p, ch.zeros_like(p))).all().item()


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM)
def test_same_features(seed, proj_type, dtype, proj_dim, input_shape):
    g = testing.make_tensor(*input_shape, device=DEVICE, dtype=dtype)
    g[-1] = g[0]
    batch_size = input_shape[0]
    max_chunk_size = get_max_chunk_size(batch_size)
    g = make_input(input_shape, max_chunk_size, g_tensor=g)
    p = _chunked(g, seed, proj_type, dtype, proj_dim, batch_size, max_chunk_size).project(g, model_id=0)
    assert ch.allclose(p[0], p[-1])


@pytest.mark.skip(reason="broken upstream: p[0] @ p[-1] < 1e-3 holds with probability 1/2 per trial for any "
                         "unbiased projector, so 'more than 3.3 of 10 trials' fails 17.2% of runs "
                         "(P[Binomial(10, 1/2) <= 3]); and with batch 1 the trailing `del g` raises NameError")
@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM[:1])
def test_orthogonality(seed, proj_type, dtype, proj_dim, input_shape):
    raise AssertionError("skipped, see reason")


# tests/test_jl_additional.py, TEST CASES 3 cut to CPU size ((32, 100_000) -> (32, 10_000), 4096 -> 256)
PARAM_ADDITIONAL = list(product([123], [ProjectionType.rademacher], [ch.float32], [(32, 10_000)], [256]))


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM_ADDITIONAL)
def test_additional_same_features(seed, proj_type, dtype, proj_dim, input_shape):
    g = testing.make_tensor(*input_shape, device=DEVICE, dtype=dtype)
    g[-1] = g[0]
    proj = FastTDAProjector(grad_dim=input_shape[-1], proj_dim=proj_dim, proj_type=proj_type, seed=seed,
                            device=DEVICE, dtype=dtype, max_batch_size=MAX_BATCH_SIZE)
    p = proj.project(g, model_id=0)
    assert ch.allclose(p[0], p[-1])


@pytest.mark.parametrize("seed, proj_type, dtype, input_shape, proj_dim", PARAM_ADDITIONAL)
def test_same_features_diff_sms(seed, proj_type, dtype, proj_dim, input_shape):
    g = testing.make_tensor(*input_shape, device=DEVICE, dtype=dtype)
    kw = dict(grad_dim=input_shape[-1], proj_dim=proj_dim, proj_type=proj_type, seed=seed, device=DEVICE,
              dtype=dtype, max_batch_size=MAX_BATCH_SIZE)
    p_full_sms = FastTDAProjector(**kw).project(g, model_id=0)
    proj_half_sms = FastTDAProjector(**kw)
    proj_half_sms.num_sms = max(proj_half_sms.num_sms // 2, 1)
    p_half_sms = proj_half_sms.project(g, model_id=0)
    assert ch.allclose(p_full_sms, p_half_sms)
