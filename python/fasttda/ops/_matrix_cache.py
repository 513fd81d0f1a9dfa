"""`BytesLRU`: generated projection matrices kept within a byte budget (a torch-only leaf).

Counter-hash matrices are pure functions of their key (seeds, rows, columns, kind,
offset, device), so a kept one never goes stale: the same key always builds the same
tensor. Callers never hand a kept tensor out (they multiply with it), so nobody can
modify it in place.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch


class BytesLRU:
    """Least-recently-used tensors, at most ``budget_bytes`` together."""

    def __init__(self, budget_bytes: int):
        if not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes < 0:
            raise ValueError(f"budget_bytes must be an int >= 0, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.generated = 0  # tensors built so far: what keeping them saves shows here

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget_bytes

    def get(self, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor kept under ``key``, or ``build()`` kept (oldest dropped past the budget)."""
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        built = build()
        self.generated += 1
        size = built.numel() * built.element_size()
        while self._items and self.bytes + size > self.budget_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        if size <= self.budget_bytes:
            self._items[key] = built
            self.bytes += size
        return built

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
