"""`fasttda.ops.project`: reference vs an independent float64 oracle, Triton vs reference
(bitwise where the sums are exact), the offset identity, JL statistics, strides, errors."""
import importlib
import math

import numpy as np
import pytest
import torch
from helpers import needs_triton, triton_device
from project_oracle import matrix64

from fasttda import ops

project_module = importlib.import_module("fasttda.ops.project")

KINDS = [("rademacher", 1), ("gaussian", 1), ("sjlt", 1), ("sjlt", 3)]
KIND_IDS = ["rademacher", "gaussian", "sjlt1", "sjlt3"]


def oracle(x, out_dim, kind, seed, offset=0, s=1):
    P = torch.from_numpy(matrix64(x.shape[1], out_dim, kind, seed, offset, s))
    terms = torch.from_numpy(matrix64(x.shape[1], out_dim, kind, seed, offset, s, absolute=True)).abs()
    return x.double() @ P, x.double().abs() @ terms


def assert_close_to_oracle(y, x, out_dim, kind, seed, offset=0, s=1):
    want, magnitude = oracle(x, out_dim, kind, seed, offset, s)
    # fp32 accumulation over D terms: error ≤ ~D·eps·Σ|x||p|; random signs make it √D. On a
    # GPU the dense kernels multiply float32 in 3xTF32 (their docstrings): the dropped
    # low×low term adds ~2**-22 relative per product, so eps is 2**-21 there.
    eps = 2**-21 if y.is_cuda else 2**-24
    tol = 8 * eps * math.sqrt(x.shape[1]) * magnitude + 1e-30
    if kind == "gaussian":
        # Entries are float32 Box–Muller: θ = 2πu rounds by ≤ 2π·2⁻²⁵ and r ≤ 5.8, so an
        # unscaled entry is off by up to ~2.5e-6 from its float64 value.
        tol = tol + 3e-6 / math.sqrt(out_dim) * x.double().abs().sum(1, keepdim=True)
    err = (y.double() - want).abs()
    assert (err <= tol).all(), f"max error {err.max():.3g} vs tolerance {tol.max():.3g}"


@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("B", [1, 3, 33])
@pytest.mark.parametrize("D", [1, 7, 1000, 4099])
@pytest.mark.parametrize("out_dim", [1, 17, 512, 1000])
def test_reference_matches_float64_oracle(kind, s, B, D, out_dim, gen):
    x = torch.randn(B, D, generator=gen)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    y = ops.project(x, out_dim, kind=kind, seed=seed, s=s, backend="reference")
    assert y.shape == (B, out_dim) and y.dtype == torch.float32
    assert_close_to_oracle(y, x, out_dim, kind, seed, s=s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
def test_reference_low_precision_inputs(dtype, kind, s, gen):
    x = torch.randn(5, 333, generator=gen).to(dtype)
    y = ops.project(x, 65, kind=kind, seed=9, s=s, backend="reference")
    assert_close_to_oracle(y, x.float(), 65, kind, 9, s=s)


@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
def test_offset_chunk_identity(kind, s, gen):
    a = torch.randn(4, 37, generator=gen)
    b = torch.randn(4, 90, generator=gen)
    whole = ops.project(torch.cat([a, b], 1), 50, kind=kind, seed=3, s=s)
    parts = ops.project(a, 50, kind=kind, seed=3, s=s) + ops.project(b, 50, kind=kind, seed=3, s=s, offset=37)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)


def test_offset_beyond_32_bits_matches_oracle(gen):
    x = torch.randn(2, 40, generator=gen)
    offset = 2**33 + 12345
    for kind, s in KINDS:
        y = ops.project(x, 19, kind=kind, seed=1, offset=offset, s=s)
        assert_close_to_oracle(y, x, 19, kind, 1, offset, s)


@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
def test_strided_input_equals_contiguous(kind, s, gen):
    # ±1 entries: integer-valued inputs make every summation order exact, so bitwise holds on
    # any CPU; Gaussian entries are not integers, so there both are held to the oracle.
    base = torch.randn(61, 24, generator=gen) if kind == "gaussian" else torch.randint(-9, 10, (61, 24), generator=gen).float()
    x = base.t()[::2]  # [12, 61], strides (2, 24)
    assert not x.is_contiguous()
    strided, contiguous = ops.project(x, 33, kind=kind, s=s), ops.project(x.contiguous(), 33, kind=kind, s=s)
    assert_close_to_oracle(strided, x, 33, kind, 0, s=s)
    if kind == "gaussian":
        assert_close_to_oracle(contiguous, x, 33, kind, 0, s=s)
    else:
        assert torch.equal(strided, contiguous)


def test_reference_chunking_is_invisible(monkeypatch, gen):
    x = torch.randint(-5, 6, (3, 300), generator=gen).float()
    whole = {(k, s): ops.project(x, 40, kind=k, s=s, backend="reference") for k, s in KINDS}
    monkeypatch.setattr(project_module, "BLOCK_ENTRIES", 64)  # forces many small blocks
    for kind, s in KINDS:
        blocked = ops.project(x, 40, kind=kind, s=s, backend="reference")
        assert_close_to_oracle(blocked, x, 40, kind, 0, s=s)
        if kind != "gaussian":  # integer inputs, ±1 entries: exact sums in any order
            assert torch.equal(blocked, whole[kind, s])


def test_seeds_and_kinds_give_different_matrices():
    mats = [ops.projection_matrix(64, 64, kind="rademacher", seed=s) for s in (0, 1, 2**40)]
    mats.append(ops.projection_matrix(64, 64, kind="sjlt"))
    for i in range(len(mats)):
        for j in range(i + 1, len(mats)):
            assert not torch.equal(mats[i], mats[j])


@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
def test_jl_preserves_norms_and_inner_products(kind, s, gen):
    """Over fresh seeds, ‖Px‖²/‖x‖² has mean 1 and variance ≈ 2/k; ⟨Px,Py⟩ is unbiased."""
    D, k, n_seeds = 300, 64, 300
    x = torch.randn(2, D, generator=gen, dtype=torch.float64).float()
    x[1] = 0.6 * x[0] + 0.8 * x[1]  # correlated pair: a nonzero inner product
    seeds = torch.randint(0, 2**62, (n_seeds,), generator=gen).tolist()
    ys = torch.stack([ops.project(x, k, kind=kind, seed=sd, s=s) for sd in seeds]).double()
    ratio = ys[:, 0].pow(2).sum(1) / x[0].double().pow(2).sum()
    var = 2.0 / k
    assert abs(ratio.mean() - 1) < 5 * math.sqrt(var / n_seeds)
    assert 0.5 * var < ratio.var() < 1.6 * var
    ip = (ys[:, 0] * ys[:, 1]).sum(1)
    true_ip = float(x[0].double() @ x[1].double())
    ip_sd = math.sqrt((true_ip**2 + x[0].double().pow(2).sum() * x[1].double().pow(2).sum()) / k)
    assert abs(ip.mean() - true_ip) < 5 * ip_sd / math.sqrt(n_seeds)


def test_projection_matrix_matches_oracle():
    for kind, s in KINDS:
        P = ops.projection_matrix(50, 70, kind=kind, seed=11, offset=7, s=s)
        np.testing.assert_allclose(P.double().numpy(), matrix64(50, 70, kind, 11, 7, s), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: ops.project(x, 0), "out_dim"),
        (lambda x: ops.project(x, -3), "out_dim"),
        (lambda x: ops.project(x, 2.5), "out_dim"),
        (lambda x: ops.project(x.long(), 8), "float32, bfloat16, float16 or float64"),
        (lambda x: ops.project(x[None], 8), "2-D"),
        (lambda x: ops.project(x, 8, offset=-1), "offset"),
        (lambda x: ops.project(x, 8, kind="orthogonal"), "kind"),
        (lambda x: ops.project(x, 8, kind="sjlt", s=0), "s must"),
        (lambda x: ops.project(x, 8, seed=-1), "seed"),
        (lambda x: ops.project(x, 8, backend="gpu"), "backend"),
        (lambda x: ops.project(x[:0], 8), "B >= 1"),
    ],
)
def test_bad_input_raises_clear_error(call, match, gen):
    x = torch.randn(3, 10, generator=gen)
    with pytest.raises((ValueError, TypeError), match=match):
        call(x)


# -- Triton (interpreter on CPU, or a GPU) --------------------------------------------------
TRITON_SHAPES = [(1, 1, 1), (3, 7, 17), (33, 100, 70), (2, 1000, 129), (5, 257, 512)]


@needs_triton
@pytest.mark.parametrize("kind,s", [("rademacher", 1), ("sjlt", 1), ("sjlt", 3)], ids=["rademacher", "sjlt1", "sjlt3"])
@pytest.mark.parametrize("B,D,out_dim", TRITON_SHAPES)
def test_triton_equals_reference_bitwise_on_exact_sums(kind, s, B, D, out_dim, gen):
    # Small integers keep every partial sum exact in float32, so any summation order gives
    # the same bits: a mismatch can only come from a different matrix.
    x = torch.randint(-8, 9, (B, D), generator=gen).float().to(triton_device())
    want = ops.project(x.cpu(), out_dim, kind=kind, seed=77, offset=5, s=s, backend="reference")
    got = ops.project(x, out_dim, kind=kind, seed=77, offset=5, s=s, backend="triton").cpu()
    assert torch.equal(got, want)


@needs_triton
@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
def test_triton_matrix_entries_match_reference(kind, s):
    ref = ops.projection_matrix(70, 100, kind=kind, seed=5, offset=2**32 - 3, s=s, backend="reference")
    tri = ops.projection_matrix(70, 100, kind=kind, seed=5, offset=2**32 - 3, s=s, backend="triton",
                                device=triton_device()).cpu()
    if kind == "gaussian":
        assert (tri - ref).abs().max() <= 1e-6 / math.sqrt(100)  # 1e-6 on the unscaled entries
    else:
        assert torch.equal(tri, ref)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
def test_triton_matches_oracle_float_inputs(dtype, kind, s, gen):
    base = torch.randn(40, 19, generator=gen).to(dtype)
    x = base.t()[:, ::3]  # [19, 14] non-contiguous
    got = ops.project(x.to(triton_device()), 45, kind=kind, seed=21, s=s, backend="triton").cpu()
    assert_close_to_oracle(got, x.float(), 45, kind, 21, s=s)
