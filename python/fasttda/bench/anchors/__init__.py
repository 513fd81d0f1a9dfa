"""The anchors' real code, imported on demand; an absent one raises `AnchorMissing` saying why.

Each builder returns a callable that runs the anchor's own implementation (never a
re-implementation of it), so the benchmark compares against what users of the anchor get.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch


class AnchorMissing(RuntimeError):
    """The anchor is not installed here, or does not run on this device."""


def need(module: str, extra: str = "pip install 'fasttda[bench]'"):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising anything
        raise AnchorMissing(f"{module} not importable ({type(exc).__name__}: {exc}); {extra}") from exc


def version(module: str) -> str | None:
    try:
        from importlib.metadata import version as dist_version

        return dist_version(module)
    except Exception:
        return None


# -- projection ----------------------------------------------------------------------------
def trak_basic(in_dim: int, out_dim: int, device: str, *, seed: int = 0,
               kind: str = "rademacher") -> Callable[[torch.Tensor], torch.Tensor]:
    """TRAK's BasicProjector (its default block size of 100 columns): the matrix is regenerated
    per call when out_dim > 100, and generated once and kept when out_dim <= 100."""
    projectors = need("trak.projectors")
    ptype = projectors.ProjectionType.normal if kind == "gaussian" else projectors.ProjectionType.rademacher
    proj = projectors.BasicProjector(grad_dim=in_dim, proj_dim=out_dim, seed=seed, proj_type=ptype,
                                     device=torch.device(device), dtype=torch.float32)
    return lambda x: proj.project(x, model_id=0)


def trak_cuda(in_dim: int, out_dim: int, device: str, *, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """TRAK's CudaProjector (the fast_jl CUDA kernel; batch ≤ 32 per launch, out_dim % 512 == 0)."""
    if device != "cuda":
        raise AnchorMissing("trak CudaProjector (fast_jl) runs on CUDA only")
    projectors = need("trak.projectors")
    need("fast_jl", "pip install traker[fast] (builds the fast_jl CUDA extension)")
    proj = projectors.CudaProjector(grad_dim=in_dim, proj_dim=out_dim, seed=seed,
                                    proj_type=projectors.ProjectionType.rademacher,
                                    device=torch.device("cuda"), max_batch_size=32)
    return lambda x: proj.project(x, model_id=0)


def dattri_projector(in_dim: int, out_dim: int, device: str, *, seed: int = 0,
                     kind: str = "rademacher") -> Callable[[torch.Tensor], torch.Tensor]:
    """dattri's projector for the device: BasicProjector on CPU, CudaProjector on CUDA.

    dattri's CudaProjector caches a materialized dense matrix for Rademacher (so its
    memory is in_dim × out_dim floats) and calls the `sjlt` package for ``kind='sjlt'``.
    """
    projection = need("dattri.func.projection")
    ptype = projection.ProjectionType(kind)
    if device == "cuda":
        proj = projection.CudaProjector(feature_dim=in_dim, proj_dim=out_dim, seed=seed, proj_type=ptype,
                                        device=torch.device("cuda"), dtype=torch.float32)
    else:
        if kind == "sjlt":
            raise AnchorMissing("dattri's sjlt projection runs on CUDA only (CudaProjector + sjlt)")
        proj = projection.BasicProjector(feature_dim=in_dim, proj_dim=out_dim, seed=seed, proj_type=ptype,
                                         device=torch.device(device), dtype=torch.float32)
    return lambda x: proj.project(x, ensemble_id=0)


def sjlt_cuda(in_dim: int, out_dim: int, device: str, *, s: int = 1, seed: int = 0) -> Callable:
    """GraSS's `sjlt` CUDA kernel (scatter with atomicAdd)."""
    if device != "cuda":
        raise AnchorMissing("sjlt runs on CUDA only")
    sjlt = need("sjlt", "pip install sjlt (a CUDA extension built against the installed torch)")
    proj = sjlt.SJLTProjection(original_dim=in_dim, proj_dim=out_dim, c=s, device="cuda")
    return proj


# -- scoring -------------------------------------------------------------------------------
def faiss_flat_ip(rows: torch.Tensor, k: int):
    """faiss IndexFlatIP holding ``rows`` (float32, CPU); returns ``search(queries)`` for top-k."""
    faiss = need("faiss", "pip install faiss-cpu")
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows.detach().cpu().float().contiguous().numpy())
    return lambda q: index.search(q.detach().cpu().float().contiguous().numpy(), k)


def faiss_sq8(rows: torch.Tensor, k: int):
    """faiss IndexScalarQuantizer QT_8bit, inner product: int8-coded rows, exhaustive scan."""
    faiss = need("faiss", "pip install faiss-cpu")
    index = faiss.IndexScalarQuantizer(rows.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    data = rows.detach().cpu().float().contiguous().numpy()
    index.train(data)
    index.add(data)
    return lambda q: index.search(q.detach().cpu().float().contiguous().numpy(), k)
