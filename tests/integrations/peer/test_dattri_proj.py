"""dattri's test/dattri/func/test_proj.py random-projection cases with fasttda's random_project.

Upstream (TRAIS-Lab/dattri main, after PR #248) calls ``random_project(feature,
proj_params=RandomProjectionParams(...))``; dattri 0.3.0 on PyPI takes the same values
positionally. Each case runs with the signature of the installed dattri, and with the other
one too (fasttda's adapter accepts both). The CUDA matrix
(``TestProjectionCombinationsCUDA``: sjlt, normal, rademacher, random_mask, grass × four
dtypes, and ``test_cuda_grass_with_multiplier``) runs on the CPU here, since fasttda's kinds
all run there. Test bodies, thresholds and batch sizes are upstream's; SmallModel is cut to
CPU size (see its docstring).
"""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fasttda.integrations.dattri import installed_signature, random_project

SIGNATURES = ["positional", "proj_params"]


def params_class():
    try:
        from dattri.params.projection import RandomProjectionParams
        return RandomProjectionParams
    except ImportError:  # dattri <= 0.3: the fields of RandomProjectionParams, as a plain record
        return lambda **kw: SimpleNamespace(**{**kw, "device": torch.device(str(kw.get("device", "cpu")))})


def make_project(feature, signature, **kw):
    if signature == "proj_params":
        return random_project(feature, proj_params=params_class()(**kw))
    return random_project(feature, kw["feature_batch_size"], kw["proj_dim"], kw["proj_max_batch_size"],
                          kw["proj_seed"], kw["proj_type"], device=kw["device"])


def test_installed_signature_is_detected():
    dattri = pytest.importorskip("dattri.func.projection")
    import inspect
    want = "proj_params" if "proj_params" in inspect.signature(dattri.random_project).parameters else "positional"
    assert installed_signature() == want


def compute_pairwise_distance_metrics(batch_vec, batch_vec_p):
    if batch_vec.dtype in (torch.float16, torch.bfloat16):
        batch_vec = batch_vec.float()
        batch_vec_p = batch_vec_p.float()
    original_distances = torch.cdist(batch_vec, batch_vec, p=2)
    projected_distances = torch.cdist(batch_vec_p, batch_vec_p, p=2)
    mask = original_distances > 1e-8
    relative_errors = torch.abs((original_distances[mask] - projected_distances[mask]) / original_distances[mask])
    return torch.mean(relative_errors).item()


class SmallModel(nn.Module):
    """Upstream's SmallModel with channels cut 8x (159k -> 10k parameters, CPU size)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)


PROJ_DIM, PROJ_MAX_BATCH_SIZE, FEATURE_DIM = 512, 16, 1000


def _test_projection_combination(signature, proj_type, dtype, batch_size):
    device = torch.device("cpu")
    gradient_dict = {name: torch.rand(batch_size, p.numel(), dtype=dtype) for name, p in SmallModel().named_parameters()}
    kw = dict(feature_batch_size=batch_size, proj_dim=PROJ_DIM, proj_max_batch_size=PROJ_MAX_BATCH_SIZE, proj_seed=0,
              proj_type=proj_type, device=device)
    project = make_project(gradient_dict, signature, **kw)
    result = project(gradient_dict)
    assert result.shape == (batch_size, PROJ_DIM)
    assert result.dtype == dtype

    test_tensor = torch.rand(batch_size, FEATURE_DIM, dtype=dtype)
    project_tensor = make_project(test_tensor, signature, **kw)
    result_tensor = project_tensor(test_tensor)
    assert result_tensor.shape == (batch_size, PROJ_DIM)
    assert result_tensor.dtype == dtype

    distance_test_tensor = torch.rand(min(batch_size, 32), FEATURE_DIM, dtype=dtype)
    relative_error = compute_pairwise_distance_metrics(distance_test_tensor, project_tensor(distance_test_tensor))
    max_relative_error = 0.5 if proj_type == "random_mask" else 0.05
    assert relative_error < max_relative_error, (
        f"Pairwise distance check failed: relative error ={relative_error:.4f} "
        f"exceeds threshold={max_relative_error} for {proj_type} with {dtype}")


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("signature", SIGNATURES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("proj_type", ["normal", "rademacher", "random_mask"])
def test_cpu_projections(signature, proj_type, dtype):
    """TestProjectionCombinationsCPU.test_cpu_projections (upstream: subTests of one test)."""
    _test_projection_combination(signature, proj_type, dtype, batch_size=8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("proj_type", ["sjlt", "normal", "rademacher", "random_mask", "grass"])
def test_cuda_projections_on_cpu(proj_type, dtype):
    """TestProjectionCombinationsCUDA.test_cuda_projections, batch 32 as upstream, on the CPU
    (with the installed dattri's signature only; both are covered by test_cpu_projections)."""
    _test_projection_combination(installed_signature() or "positional", proj_type, dtype, batch_size=32)


@pytest.mark.parametrize("signature", SIGNATURES)
def test_cuda_grass_with_multiplier_on_cpu(signature):
    batch_size = 16
    gradient_dict = {name: torch.rand(batch_size, p.numel(), dtype=torch.float32)
                     for name, p in SmallModel().named_parameters()}
    kw = dict(feature_batch_size=batch_size, proj_dim=PROJ_DIM, proj_max_batch_size=PROJ_MAX_BATCH_SIZE, proj_seed=0,
              device=torch.device("cpu"))
    if signature == "proj_params" and installed_signature() == "proj_params":
        pytest.skip("dattri's RandomProjectionParams (pydantic) only admits proj_type 'grass', not 'grass_N'")
    result = make_project(gradient_dict, signature, proj_type="grass_2", **kw)(gradient_dict)
    assert result.shape == (batch_size, PROJ_DIM)
    result_8 = make_project(gradient_dict, signature, proj_type="grass_8", **kw)(gradient_dict)
    assert result_8.shape == (batch_size, PROJ_DIM)
    assert not torch.allclose(result, result_8), "Different multipliers should produce different results"


@pytest.mark.parametrize("signature", SIGNATURES)
def test_basicprojector(signature):
    """TestRandomProjectionFactory.test_basicprojector."""
    small_gradient = {name: torch.rand(8, p.numel(), dtype=torch.float16) for name, p in SmallModel().named_parameters()}
    project = make_project(small_gradient, signature, feature_batch_size=8, proj_dim=PROJ_DIM,
                           proj_max_batch_size=PROJ_MAX_BATCH_SIZE, proj_seed=0, proj_type="normal",
                           device=torch.device("cpu"))
    assert project(small_gradient).shape == (8, PROJ_DIM)


@pytest.mark.parametrize("signature", SIGNATURES)
def test_tensor_input_cpu(signature):
    """TestRandomProjectionFactory.test_tensor_input_cpu."""
    test_tensor = torch.rand(64, 1000, dtype=torch.float16)
    project = make_project(test_tensor, signature, feature_batch_size=64, proj_dim=PROJ_DIM,
                           proj_max_batch_size=PROJ_MAX_BATCH_SIZE, proj_seed=0, proj_type="normal",
                           device=torch.device("cpu"))
    assert project(test_tensor).shape == (64, PROJ_DIM)
