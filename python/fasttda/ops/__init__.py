"""The ops: argument checks, dispatch and the pure-PyTorch reference, one module each.

Each op takes ``backend="auto"|"reference"|"triton"|"cuda"|"cpp"`` (see `fasttda._dispatch`).
The op modules import only torch, so importing them here is cheap. Importing them eagerly
also matters: ``fasttda.ops.project`` is both a module and a function, and an eager
``from … import`` makes the function win whichever is imported first. Ops still being
written resolve lazily through ``_LAZY``.
"""
from __future__ import annotations

import importlib

from fasttda.ops.encoder_epilogue import encoder_epilogue, mean_pool_normalize
from fasttda.ops.project import project, projection_matrix
from fasttda.ops.project_factored import factored_seeds, project_factored
from fasttda.ops.project_quantized import QuantizedRows, project_quantized
from fasttda.ops.quantize import dequantize, quantize

_LAZY = {
    "score_topk": "fasttda.ops.score:score_topk",
    "score_dense": "fasttda.ops.score:score_dense",
}

__all__ = sorted(["QuantizedRows", "dequantize", "encoder_epilogue", "mean_pool_normalize", "factored_seeds", "project", "project_factored",
                  "project_quantized", "projection_matrix", "quantize", *_LAZY])


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
