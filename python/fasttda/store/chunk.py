"""`Chunk`: consecutive stored rows as they are on disk, the unit every reader streams."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fasttda.store.feature_store import FeatureStore


@dataclass
class Chunk:
    """Consecutive stored rows ``[start, start + len)``, as they are on disk (the scorer's input).

    ``data`` is the stored dtype (float32/bfloat16/float16/int8/float8_e4m3fn, or uint8
    with two int4 values per byte), zero-copy from the shard's memory map; ``scale`` is
    float32 ``[n]`` for int8/fp8_e4m3/int4, else None; ``norms`` are float32 ``[n]`` L2
    norms of the rows before quantization. ``ids`` is looked up on first access.
    """

    start: int
    data: torch.Tensor
    scale: torch.Tensor | None
    norms: torch.Tensor
    fmt: str
    store: "FeatureStore" = field(repr=False)

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def stop(self) -> int:
        return self.start + len(self)

    @cached_property
    def ids(self):
        """Row ids: an int64 array (running row indices when none were given), or a list of str."""
        return self.store.ids(self.start, self.stop)

    def dequantize(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The rows as float32 ``[n, dim]``; into ``out`` (float32 ``[n, dim]``) when given.

        Into ``out``, every format is converted in one pass straight from the memory map
        (`fasttda.ops.dequantize` with ``out``: the C++ kernel on the CPU), so a full read
        allocates nothing per chunk."""
        from fasttda.ops.quantize import dequantize

        return dequantize(self.data, self.scale, self.fmt, dim=self.store.dim, out=out)
