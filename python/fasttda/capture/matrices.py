"""`MatrixCache`: the factored projection's P matrices, generated once per module and kept.

The factored projection multiplies every module's input tokens by ``P_in`` and its output
gradients by ``P_out`` at every step. Both are pure functions of (side seed, rows, k, kind)
(`fasttda.ops.projection_matrix`), so regenerating them per call only costs time; the
cache keeps each one on the device it is used on, keyed by everything that defines it:

    (side seeds, rows, k, kind, device, backend)

A key never goes stale: the same key always describes the same matrix. Several seeds in
one key stand for their matrices side by side (``[rows, k · len(seeds)]``): modules that
read one input tensor (q/k/v, gate/up) project it with one GEMM; their columns are exactly
the separate matrices' columns.

Memory is bounded: least recently used matrices are dropped past ``budget_bytes``
(default 256 MiB, about what 16×16 capture of every linear of a 7B model needs); for a
matrix larger than the budget on its own `matrix` returns None and the caller projects
with `fasttda.ops.project`, which never materializes P.
Matrices are float32, scaled by ``1/sqrt(k)``, and never handed out to callers.
"""
from __future__ import annotations

import torch

from fasttda.ops._matrix_cache import BytesLRU
from fasttda.ops.project import projection_matrix

DEFAULT_BUDGET_BYTES = 256 << 20


class MatrixCache(BytesLRU):
    """Least-recently-used store of scaled projection matrices, bounded by bytes."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        super().__init__(budget_bytes)

    def matrix(self, seeds: tuple[int, ...], rows: int, k: int, kind: str, device, backend=None):
        """``[rows, k · len(seeds)]`` float32: the seeds' scaled matrices side by side, or
        None when that is larger than the whole budget."""
        if not self.fits(4 * rows * k * len(seeds)):
            return None
        device = torch.device(device)

        def build():
            parts = [projection_matrix(rows, k, kind=kind, seed=s, device=device, backend=backend) for s in seeds]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        return self.get((tuple(seeds), rows, k, kind, device, backend), build)
