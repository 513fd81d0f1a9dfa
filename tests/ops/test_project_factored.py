"""project_factored: reference vs a float64 Kronecker oracle, Triton vs reference, bad input."""
import importlib

import pytest
import torch

from helpers import needs_triton, triton_device
from fasttda.ops.project import projection_matrix
from fasttda.ops.project_factored import factored_seeds, project_factored


def oracle(x, dy, k_in, k_out, seed, mask=None, kind="rademacher"):
    """(P_out ⊗ P_in)·vec(G_b) in float64 from materialized matrices and the full G_b."""
    seed_in, seed_out = factored_seeds(seed)
    p_in = projection_matrix(x.shape[2], k_in, kind=kind, seed=seed_in).double()
    p_out = projection_matrix(dy.shape[2], k_out, kind=kind, seed=seed_out).double()
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    xs = torch.where(keep[:, :, None], x.double(), 0.0)
    dys = torch.where(keep[:, :, None], dy.double(), 0.0)
    G = torch.einsum("bto,bti->boi", dys, xs)  # [B, d_out, d_in]
    return torch.einsum("oK,boi,ik->bKk", p_out, G, p_in).reshape(x.shape[0], -1)


def rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_reference_matches_float64_oracle(gen, kind):
    x, dy = rand(gen, 3, 11, 23), rand(gen, 3, 11, 9)
    mask = torch.rand(3, 11, generator=gen) > 0.3
    out = project_factored(x, dy, k_in=5, k_out=7, seed=11, mask=mask, kind=kind, backend="reference")
    assert out.shape == (3, 35) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), oracle(x, dy, 5, 7, 11, mask, kind), rtol=1e-5, atol=1e-5)


def test_chunked_over_tokens_and_strided_inputs(gen, monkeypatch):
    base_x, base_dy = rand(gen, 19, 2, 13), rand(gen, 2, 19, 6)
    x = base_x.transpose(0, 1)  # non-contiguous [2, 19, 13]
    dy = base_dy[:, :, ::1]
    expected = oracle(x, dy, 4, 3, 5)
    pf_module = importlib.import_module("fasttda.ops.project_factored")
    monkeypatch.setattr(pf_module, "CHUNK_ENTRIES", 2 * 19)  # one token per chunk
    out = project_factored(x, dy, k_in=4, k_out=3, seed=5, backend="reference")
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_masked_tokens_contribute_nothing_even_nan(gen):
    x, dy = rand(gen, 2, 8, 10), rand(gen, 2, 8, 4)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 6:] = False
    clean = project_factored(x[:, :], dy, k_in=3, k_out=2, seed=1, mask=mask, backend="reference")
    x[0, 1] = float("nan")
    dy[1, 7] = float("inf")
    dirty = project_factored(x, dy, k_in=3, k_out=2, seed=1, mask=mask, backend="reference")
    torch.testing.assert_close(dirty, clean)
    int_mask = project_factored(x, dy, k_in=3, k_out=2, seed=1, mask=mask.long(), backend="reference")
    torch.testing.assert_close(int_mask, clean)


def test_seeds_are_stable_and_sides_differ(gen):
    # Pinned values: the same seed must give the same matrices on every machine.
    assert factored_seeds(0) == (7611181148681782856, 1816494239012259215)
    assert factored_seeds(12345) == (13167909861868163980, 11445670875866928158)
    x = rand(gen, 1, 4, 6)
    a = project_factored(x, x, k_in=6, k_out=6, seed=3, backend="reference").reshape(6, 6)
    # Same input on both sides: equal seeds would make this matrix symmetric.
    assert not torch.allclose(a, a.T)
    b = project_factored(x, x, k_in=6, k_out=6, seed=4, backend="reference").reshape(6, 6)
    assert not torch.allclose(a, b)


@needs_triton
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_triton_matches_reference(gen, kind):
    dev = triton_device()
    x, dy = rand(gen, 2, 21, 37).to(dev), rand(gen, 2, 21, 19).to(dev)
    mask = (torch.rand(2, 21, generator=gen) > 0.25).to(dev)
    ref = project_factored(x, dy, k_in=5, k_out=7, seed=3, mask=mask, kind=kind, backend="reference")
    out = project_factored(x, dy, k_in=5, k_out=7, seed=3, mask=mask, kind=kind, backend="triton")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@needs_triton
def test_triton_multi_tile_token_splits_and_nan_padding(gen):
    from fasttda.kernels.project_factored import launch_project_factored
    from fasttda.ops import _counter_hash as ch

    dev = triton_device()
    x = rand(gen, 33, 2, 9).to(dev).transpose(0, 1)  # non-contiguous, T=33 spans 3 token tiles
    dy = rand(gen, 2, 33, 5).to(dev)
    mask = torch.ones(2, 33, dtype=torch.bool, device=dev)
    mask[1, 30:] = False
    dy[1, 31] = float("nan")
    k_in, k_out = 70, 3  # k_in spans two 64-wide tiles
    ref = project_factored(x, dy, k_in=k_in, k_out=k_out, seed=9, mask=mask, backend="reference")
    seed_in, seed_out = factored_seeds(9)
    keys_in, keys_out = ch.seed_keys(seed_in, "rademacher"), ch.seed_keys(seed_out, "rademacher")
    out = launch_project_factored(x, dy, mask, k_in, k_out, "rademacher", keys_in, keys_out, split_t=2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@needs_triton
def test_triton_bfloat16_inputs(gen):
    dev = triton_device()
    x, dy = rand(gen, 2, 17, 20, dtype=torch.bfloat16).to(dev), rand(gen, 2, 17, 12, dtype=torch.bfloat16).to(dev)
    ref = project_factored(x, dy, k_in=16, k_out=4, seed=2, backend="reference")
    out = project_factored(x, dy, k_in=16, k_out=4, seed=2, backend="triton")
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("call, error, match", [
    (lambda x, dy: project_factored(x[0], dy, k_in=2, k_out=2), ValueError, "x must be 3-D"),
    (lambda x, dy: project_factored(x, dy[:1], k_in=2, k_out=2), ValueError, "agree on"),
    (lambda x, dy: project_factored(x, dy, k_in=0, k_out=2), ValueError, "k_in"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2.0), ValueError, "k_out"),
    (lambda x, dy: project_factored(x.double(), dy, k_in=2, k_out=2), TypeError, "float32"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2, seed=-1), ValueError, "seed"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2, kind="sjlt"), ValueError, "kind"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2, mask=torch.ones(2, 3)), ValueError, "mask must have shape"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2, mask=torch.full((2, 4), 0.5)), ValueError, "only 0 and 1"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2, mask=torch.full((2, 4), float("nan"))), ValueError,
     "only 0 and 1"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2, mask=torch.full((2, 4), 2)), ValueError, "only 0 and 1"),
    (lambda x, dy: project_factored(x, dy, k_in=2, k_out=2, backend="nope"), ValueError, "backend"),
])
def test_bad_input(gen, call, error, match):
    x, dy = rand(gen, 2, 4, 5), rand(gen, 2, 4, 3)
    with pytest.raises(error, match=match):
        call(x, dy)


def test_float_and_integer_masks_equal_the_bool_mask(gen):
    """A float 0/1 loss mask is accepted (users pass them all the time), as is an integer one."""
    x, dy = rand(gen, 3, 6, 5), rand(gen, 3, 6, 4)
    keep = torch.rand(3, 6, generator=gen) > 0.4
    want = project_factored(x, dy, k_in=3, k_out=2, seed=1, mask=keep, backend="reference")
    for mask in (keep.float(), keep.double(), keep.half(), keep.long()):
        assert torch.equal(project_factored(x, dy, k_in=3, k_out=2, seed=1, mask=mask, backend="reference"), want)
