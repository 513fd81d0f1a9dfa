"""A TRAK projector backed by fasttda: ``TRAKer(..., projector=FastTDAProjector(...))``.

It follows TRAK's contract, including its conventions:
* raw sums ``x @ P``, no 1/sqrt(proj_dim) (TRAK's BasicProjector and fast_jl do not scale);
* seeds may be numpy integers (TRAK's ChunkedCudaProjector draws them with numpy);
* checkpoint ``model_id`` uses the matrix of ``seed + 10_000 * model_id``;
* CudaProjector's attributes (``num_sms``, ``max_batch_size``, ``dtype``) exist and may be
  set; ``num_sms`` changes nothing, since fasttda's matrix never depends on the GPU.

Differences from TRAK's own projectors, all in the user's favour: no multiple-of-512
output dims and no batch-of-32 limit (fast_jl's limits); bf16 and float64 gradients are
accepted (float64 is projected in float32 and returned as float64); dict gradients are
projected per parameter, never concatenated; the matrix for a (seed, model_id) is the same
on every GPU model and on the CPU. Matrices are fasttda's counter-hash matrices, not TRAK's,
so scores are equal in distribution, not bitwise. LESS builds TRAK projectors directly, so
the same class serves it.
"""
from __future__ import annotations

import torch

from fasttda.integrations._projector import kind_of, project_blocks
from fasttda.ops._checks import check_seed

try:
    from trak.projectors import AbstractProjector as _TrakBase
except ImportError:  # TRAK not installed: same interface, no base class
    _TrakBase = object


def _device_sms(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device.index or 0).multi_processor_count
    return 1


class FastTDAProjector(_TrakBase):
    def __init__(self, grad_dim: int, proj_dim: int, seed: int = 0, proj_type="rademacher", device="cpu",
                 dtype: torch.dtype | None = None, max_batch_size: int = 32, *, backend: str = "auto",
                 **_trak_only_options) -> None:
        for name, value in (("grad_dim", grad_dim), ("proj_dim", proj_dim)):
            if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.grad_dim, self.proj_dim = int(grad_dim), int(proj_dim)
        self.seed = check_seed(seed)
        self.proj_type, self.device, self.dtype = proj_type, torch.device(device), dtype
        self.kind = kind_of(proj_type)
        if self.kind.name not in ("rademacher", "gaussian", "sjlt"):
            raise ValueError(f"proj_type must be rademacher, normal or sjlt for TRAK, got {proj_type!r}")
        self.max_batch_size = max_batch_size
        self.num_sms = _device_sms(self.device)
        self.backend = backend

    def project(self, grads, model_id: int = 0) -> torch.Tensor:
        """``[B, grad_dim]`` (or a dict of per-parameter blocks) -> ``[B, proj_dim]``."""
        first = next(iter(grads.values())) if isinstance(grads, dict) else grads
        out = project_blocks(grads, self.grad_dim, self.proj_dim, kind=self.kind,
                             seed=self.seed + 10_000 * int(model_id), backend=self.backend, scaled=False)
        return out.to(self.dtype or first.dtype)

    def free_memory(self) -> None:
        """Nothing to free: no matrix is ever held."""
