"""fasttda.precondition: streamed (GᵀG/N + λI)⁻¹ against a float64 oracle; diagonal; scoring with it."""
import pytest
import torch
from test_scoring import make_store, stored

import fasttda
from fasttda import precondition
from fasttda.ops.quantize import dequantize


@pytest.mark.parametrize("fmt", ["fp32", "int8", "int4"])
def test_full_fit_matches_float64(gen, fmt, tmp_path):
    x = torch.randn(333, 21, generator=gen) * torch.linspace(0.1, 3.0, 21)
    store = make_store(tmp_path / "s", x, fmt, shard_rows=100)
    pc = precondition.fit(store, 0.05, chunk_rows=64)
    data, scale, _, _ = stored(store)
    g = dequantize(data, scale, fmt, dim=21).double()
    oracle = torch.linalg.inv(g.T @ g / 333 + 0.05 * torch.eye(21, dtype=torch.float64))
    assert pc.kind == "full" and pc.rows == 333 and pc.inverse.dtype == torch.float64
    torch.testing.assert_close(pc.inverse, oracle, rtol=1e-9, atol=1e-9)
    q = torch.randn(4, 21, generator=gen)
    torch.testing.assert_close(pc.apply(q).double(), q.double() @ oracle, rtol=1e-5, atol=1e-5)


def test_diagonal_fit_and_adam(gen, tmp_path):
    x = torch.randn(200, 9, generator=gen)
    store = make_store(tmp_path / "s", x, "fp32", shard_rows=70)
    pc = precondition.fit(store, 0.1, kind="diagonal", chunk_rows=50)
    oracle = 1.0 / ((x.double() ** 2).mean(0) + 0.1)
    torch.testing.assert_close(pc.inverse, oracle, rtol=1e-9, atol=1e-12)
    v = torch.rand(9, generator=gen)
    adam = precondition.from_adam(v, eps=1e-6)
    q = torch.randn(3, 9, generator=gen)
    torch.testing.assert_close(adam.apply(q).double(), q.double() / (v.double().sqrt() + 1e-6), rtol=1e-6, atol=1e-6)


def test_scoring_with_fitted_preconditioner_equals_preconditioned_rows(gen, tmp_path):
    """⟨q H⁻¹, r⟩ = ⟨q, r H⁻¹⟩: scoring preconditioned queries equals preconditioning every row."""
    x = torch.randn(150, 12, generator=gen)
    store = make_store(tmp_path / "s", x, "fp32")
    pc = precondition.fit(store, 0.5)
    q = torch.randn(3, 12, generator=gen)
    result = fasttda.score(q, store, k=10, preconditioner=pc)
    oracle = q.double() @ (x.double() @ pc.inverse).T
    torch.testing.assert_close(oracle.gather(1, result.indices), result.values.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.topk(oracle, 10).values, result.values.double(), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(gen, tmp_path):
    pc = precondition.fit(make_store(tmp_path / "s", torch.randn(40, 5, generator=gen), "fp32"), 0.2)
    pc.save(tmp_path / "pc")
    back = precondition.Preconditioner.load(tmp_path / "pc")
    assert back.kind == "full" and back.damping == 0.2 and back.rows == 40
    assert torch.equal(back.inverse, pc.inverse)


@pytest.mark.parametrize("seed", [9, 54, 101, 3])
def test_singular_gram_is_refused_on_every_machine(tmp_path, seed):
    """3 rows in 6 dims: GᵀG/N has rank 3. For seeds 9, 54 and 101 LAPACK's Cholesky still
    succeeds on this machine (its last pivots are rounding noise); the fit must refuse anyway."""
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(seed))
    store = make_store(tmp_path / "s", x, "fp32")
    with pytest.raises(ValueError, match="increase damping"):
        precondition.fit(store, 0.0)
    assert precondition.fit(store, 1e-3).rows == 3  # any real damping makes it definite


def test_bad_input(gen, tmp_path):
    store = make_store(tmp_path / "s", torch.randn(3, 6, generator=gen), "fp32")  # 3 rows: GᵀG/N is singular
    with pytest.raises(ValueError, match="increase damping"):
        precondition.fit(store, 0.0)
    with pytest.raises(ValueError, match="damping must be"):
        precondition.fit(store, -1.0)
    with pytest.raises(ValueError, match="kind must be"):
        precondition.fit(store, 0.1, kind="kfac")
    with pytest.raises(ValueError, match=r"queries must be \[Q, 6\]"):
        precondition.fit(store, 0.1).apply(torch.randn(2, 5))
    with pytest.raises(TypeError, match="preconditioner must be"):
        fasttda.score(torch.randn(2, 6), store, k=2, preconditioner=torch.randn(2, 3, 4))
