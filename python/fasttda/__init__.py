"""fasttda: fast training data attribution for language models.

The public API is reached lazily so that ``import fasttda`` stays cheap and never needs a
GPU, triton, a compiler or a compiled extension:

* ``fasttda.ops``: the kernels' front door (project, project_factored, quantize,
  dequantize, score_topk, score_dense), each with ``backend="auto"|"reference"|"triton"|"cuda"``.
* ``fasttda.GradientCapture``: per-example projected gradients from a model.
* ``fasttda.FeatureStore``: the on-disk, quantized, crash-safe feature store.
* ``fasttda.score`` and ``fasttda.precondition``: streaming top-k over stores.
* ``fasttda.pipeline``: index a data set at a checkpoint, featurize queries, check stores, score.
* ``fasttda.dda``: Debias-and-Denoise attribution over checkpoints.
* ``fasttda.influcoder``: a learned encoder distilled from gradient similarities.
"""
from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"

# The one mechanism that makes the top-level `kernels/` and `csrc/` the packages
# `fasttda.kernels` and `fasttda.csrc`: in a source tree (an editable install, or
# PYTHONPATH=python) they sit beside `python/`, and the tree's root joins this package's
# path. Wheels and sdists carry them inside the package (setup.py maps them there), where
# this finds no source tree and adds nothing.
_source_root = Path(__file__).resolve().parents[2]
if (_source_root / "kernels" / "__init__.py").is_file() and (_source_root / "python" / "fasttda").is_dir():
    __path__.append(str(_source_root))  # noqa: F821 (module __path__)

# public name -> "module" (a submodule) or "module:attribute"
_LAZY = {
    "ops": "fasttda.ops",
    "precondition": "fasttda.precondition",
    "dda": "fasttda.methods.dda",
    "influcoder": "fasttda.methods.influcoder",
    "pipeline": "fasttda.pipeline",
    "GradientCapture": "fasttda.capture:GradientCapture",
    "FeatureStore": "fasttda.store:FeatureStore",
    "score": "fasttda.scoring:score",
    "BackendUnavailable": "fasttda._dispatch:BackendUnavailable",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'fasttda' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
