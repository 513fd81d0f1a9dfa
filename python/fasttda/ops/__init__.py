"""The ops: argument checks, dispatch and the pure-PyTorch reference, one module each.

Each op takes ``backend="auto"|"reference"|"triton"|"cuda"`` (see `fasttda._dispatch`).
Names resolve lazily so that an op's module is imported on first use only.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "project": "fasttda.ops.project:project",
    "projection_matrix": "fasttda.ops.project:projection_matrix",
    "project_factored": "fasttda.ops.project_factored:project_factored",
    "quantize": "fasttda.ops.quantize:quantize",
    "dequantize": "fasttda.ops.quantize:dequantize",
    "score_topk": "fasttda.ops.score:score_topk",
    "score_dense": "fasttda.ops.score:score_dense",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'fasttda.ops' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
