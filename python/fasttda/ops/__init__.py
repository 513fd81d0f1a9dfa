"""The ops: argument checks, dispatch and the pure-PyTorch reference, one module each.

Each op takes ``backend="auto"|"reference"|"triton"|"cuda"|"cpp"`` (see `fasttda._dispatch`).
The op modules import only torch, so importing them here is cheap. Importing them eagerly
also matters: ``fasttda.ops.project`` is both a module and a function, and an eager
``from … import`` makes the function win whichever is imported first.
"""
from __future__ import annotations

from fasttda.ops.project import project, projection_matrix
from fasttda.ops.quantize import dequantize, quantize

__all__ = ["dequantize", "project", "projection_matrix", "quantize"]
