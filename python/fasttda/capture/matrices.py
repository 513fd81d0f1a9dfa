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

from collections import OrderedDict

import torch

from fasttda.ops.project import projection_matrix

DEFAULT_BUDGET_BYTES = 256 << 20


class MatrixCache:
    """Least-recently-used store of scaled projection matrices, bounded by bytes."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        if not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes < 0:
            raise ValueError(f"budget_bytes must be an int >= 0, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.generated = 0  # matrices built so far (kept or not): what the cache saves shows here

    def matrix(self, seeds: tuple[int, ...], rows: int, k: int, kind: str, device, backend=None):
        """``[rows, k · len(seeds)]`` float32: the seeds' scaled matrices side by side, or
        None when that is larger than the whole budget."""
        if 4 * rows * k * len(seeds) > self.budget_bytes:
            return None
        device = torch.device(device)
        key = (tuple(seeds), rows, k, kind, device, backend)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        parts = [projection_matrix(rows, k, kind=kind, seed=s, device=device, backend=backend) for s in seeds]
        self.generated += 1
        built = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        size = built.numel() * built.element_size()
        while self._items and self.bytes + size > self.budget_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        self._items[key] = built
        self.bytes += size
        return built

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
