"""The TRAK and dattri adapters: same contract as the projectors they replace."""
import pytest
import torch

from fasttda import ops
from fasttda.integrations.dattri import random_project
from fasttda.integrations.trak import FastTDAProjector


def grads_dict(gen, batch=3):
    return {"w": torch.randn(batch, 7, 5, generator=gen), "b": torch.randn(batch, 5, generator=gen),
            "v": torch.randn(batch, 301, generator=gen)}


def test_trak_projector_is_a_trak_projector_and_projects_dicts_like_vectors(gen):
    trak = pytest.importorskip("trak.projectors")
    g = grads_dict(gen)
    flat = torch.cat([v.reshape(3, -1) for v in g.values()], 1)
    proj = FastTDAProjector(grad_dim=flat.shape[1], proj_dim=100, seed=4, proj_type=trak.ProjectionType.normal,
                            device="cpu")
    assert isinstance(proj, trak.AbstractProjector)
    from trak.utils import vectorize

    torch.testing.assert_close(vectorize(g, device="cpu"), flat)  # TRAK's own flattening order
    got = proj.project(g, model_id=2)
    want = ops.project(flat, 100, kind="gaussian", seed=4 + 20_000) * 10.0  # TRAK's raw sums: no 1/sqrt(100)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got, proj.project(g, model_id=3))


def test_trak_projector_keeps_dtype_and_checks_grad_dim(gen):
    x = torch.randn(2, 50, generator=gen).to(torch.bfloat16)
    proj = FastTDAProjector(grad_dim=50, proj_dim=33, seed=0, proj_type="rademacher")
    assert proj.project(x, 0).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="grad_dim=49"):
        FastTDAProjector(grad_dim=49, proj_dim=33).project(x, 0)
    with pytest.raises(ValueError, match="proj_type"):
        FastTDAProjector(grad_dim=50, proj_dim=33, proj_type="orthogonal")


@pytest.mark.parametrize("proj_type", ["normal", "rademacher", "sjlt"])
def test_dattri_random_project_contract(proj_type, gen):
    g = grads_dict(gen, batch=4)
    fn = random_project(g, 4, 64, 32, proj_seed=9, proj_type=proj_type)
    flat = torch.cat([v.reshape(4, -1) for v in g.values()], 1)
    kind = {"normal": "gaussian"}.get(proj_type, proj_type)
    torch.testing.assert_close(fn(g), ops.project(flat, 64, kind=kind, seed=9), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fn(flat, ensemble_id=1), ops.project(flat, 64, kind=kind, seed=100_009),
                               rtol=1e-5, atol=1e-5)
