"""The ops: argument checks, dispatch and the pure-PyTorch reference, one module each.

Each op takes ``backend="auto"|"reference"|"triton"|"cuda"|"cpp"`` (see `fasttda._dispatch`)
and is also a PyTorch custom op, ``torch.ops.fasttda.<name>`` (see `fasttda.ops._library`),
which importing any op registers. The op modules import only torch, so importing
them here is cheap. ``fasttda.ops.project`` is both a module and a function; importing the
functions here makes the function the package attribute.
"""
from __future__ import annotations

from fasttda.ops.encoder_epilogue import encoder_epilogue, mean_pool_normalize
from fasttda.ops.project import project, projection_matrix
from fasttda.ops.project_factored import factored_seeds, project_factored
from fasttda.ops.project_grass import project_grass
from fasttda.ops.project_quantized import QuantizedRows, project_quantized
from fasttda.ops.quantize import dequantize, quantize
from fasttda.ops.score import score_dense, score_topk

__all__ = sorted(["QuantizedRows", "dequantize", "encoder_epilogue", "factored_seeds", "mean_pool_normalize",
                  "project", "project_factored", "project_grass", "project_quantized", "projection_matrix", "quantize", "score_dense",
                  "score_topk"])
