"""fasttda's ops as PyTorch custom ops: ``torch.ops.fasttda.*``.

Each op is declared with ``torch.library.custom_op`` and a fake (meta) implementation
(``register_fake``), so ``torch.compile`` and ``torch.export`` see it as one opaque node of
known output shape instead of tracing into (or breaking on) its kernels, and
``torch.library.opcheck`` tests its registration (``tests/ops/test_library.py``).

The public functions (`fasttda.ops.project` and friends) check their arguments in Python
with one-line errors, turn 64-bit seeds into the counter hash's two 32-bit keys (a custom
op's ints are int64, and seeds span [0, 2**64)), and `call` the op: under ``torch.compile``
or ``torch.export`` that is the custom op, eagerly its body itself (see `call`). The body
of each op asks the op's `fasttda._dispatch.Op` for the backend (``"auto"``,
``"reference"``, ``"triton"``, ``"cuda"``, ``"cpp"``), so dispatch stays in one place.

    torch.ops.fasttda.project(x, out_dim, kind, k_row, k_col, offset, s, backend) -> y [B, out_dim]
    torch.ops.fasttda.project_factored(x, dy, mask, k_in, k_out, kind, keys, backend) -> [B, k_out*k_in]
        keys = [k_row_in, k_col_in, k_row_out, k_col_out]; mask a bool [B, T] or None
    torch.ops.fasttda.quantize(x, fmt, backend) -> (data, scale)    scale is empty for float formats
    torch.ops.fasttda.dequantize(data, scale, fmt, dim, backend) -> [N, dim] float32
    torch.ops.fasttda.encoder_epilogue(hidden, mask, fmt, backend) -> (data, scale, norms)
        scale is empty for float formats
    torch.ops.fasttda.score_topk(queries, rows, factors, fmts, k, backend) -> (values, indices)
        lists of per-store tensors, checked by `fasttda.ops.score.prepare_terms`; fmts
        comma-separated

None of them has an autograd formula: they compute features and scores, not losses
(backward through one raises). The public functions' value checks (non-finite rows, 0/1
masks, the fp16 range) read data on the host, which breaks a compiled graph; compiled code
that has checked its inputs once calls ``torch.ops.fasttda.*`` directly and traces to one
graph (``tests/ops/test_library.py``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.library import custom_op

import importlib

from fasttda._dispatch import common_device



def _op_module(name: str):
    """``fasttda.ops.<name>`` the module (the package attribute of that name is the function);
    looked up when called, since those modules import this one."""
    return importlib.import_module(f"fasttda.ops.{name}")


def call(op: str, *args):
    """Run op ``op``: traced code (``torch.compile``, ``torch.export``) gets the custom op
    ``torch.ops.fasttda.<op>``, one opaque node; eager code runs the same body directly, so
    an eager call pays no dispatcher round trip and never imports ``torch._dynamo`` (which
    a custom op's first eager call does, and which imports triton)."""
    if torch.compiler.is_compiling():
        out = getattr(torch.ops.fasttda, op)(*args)
        if op == "quantize" and not out[1].numel() and args[1] not in _op_module("quantize").SCALED_QMAX:
            return out[0], None
        if op == "encoder_epilogue" and not out[1].numel() and args[2] not in _op_module("quantize").SCALED_QMAX:
            return out[0], None, out[2]
        return out
    return _BODIES[op](*args)


def _fresh(out: Tensor, *inputs: Tensor | None) -> Tensor:
    """A custom op's output may not alias its inputs (a float32 "quantize" of float32 rows would)."""
    if any(t is not None and t.numel() and out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
           for t in inputs):
        return out.clone()
    return out


# -- the bodies: each asks its Op for the backend -----------------------------------------------
def _project_body(x, out_dim, kind, k_row, k_col, offset, s, backend):
    impl = _op_module("project").choose_backend(backend, kind, common_device(x), x.dtype)
    return impl(x, out_dim, kind, k_row, k_col, offset, s)


def _factored_body(x, dy, mask, k_in, k_out, kind, keys, backend):
    device = common_device(x, dy, mask, names=("x", "dy", "mask"))
    _, impl = _op_module("project_factored").PROJECT_FACTORED.resolve(backend, device)
    return impl(x, dy, mask, k_in, k_out, kind, (keys[0], keys[1]), (keys[2], keys[3]))


def _quantize_body(x, fmt, backend):
    _, impl = _op_module("quantize").QUANTIZE.resolve(backend, common_device(x))
    return impl(x, fmt)


def _dequantize_body(data, scale, fmt, dim, backend):
    _, impl = _op_module("quantize").DEQUANTIZE.resolve(backend, common_device(data))
    return impl(data, scale, fmt, dim)


def dequantize_into(data, scale, fmt, dim, out, backend):
    """`dequantize` into ``out`` (checked by the caller): the C++ kernel writes it directly,
    the other backends' result is copied in. Traced code gets the custom op and a copy."""
    if torch.compiler.is_compiling():
        return out.copy_(torch.ops.fasttda.dequantize(data, scale, fmt, dim, backend))
    name, impl = _op_module("quantize").DEQUANTIZE.resolve(backend, common_device(data))
    if name == "cpp":
        return impl(data, scale, fmt, dim, out)
    return out.copy_(impl(data, scale, fmt, dim))


def _encoder_epilogue_body(hidden, mask, fmt, backend):
    device = common_device(hidden, mask, names=("hidden", "mask"))
    _, impl = _op_module("encoder_epilogue").ENCODER_EPILOGUE.resolve(backend, device)
    return tuple(impl(hidden, mask, fmt))


def _score_topk_body(queries, rows, factors, fmts, k, backend):
    _, impl = _op_module("score").SCORE_TOPK.resolve(backend, common_device(*queries, *rows))
    return impl(list(queries), list(rows), list(factors), fmts.split(","), k)


_BODIES = {"project": _project_body, "project_factored": _factored_body, "quantize": _quantize_body,
           "dequantize": _dequantize_body, "encoder_epilogue": _encoder_epilogue_body,
           "score_topk": _score_topk_body}


# -- project ---------------------------------------------------------------------------------
@custom_op("fasttda::project", mutates_args=())
def project(x: Tensor, out_dim: int, kind: str, k_row: int, k_col: int, offset: int, s: int,
            backend: str) -> Tensor:
    return _project_body(x, out_dim, kind, k_row, k_col, offset, s, backend)


@project.register_fake
def _(x, out_dim, kind, k_row, k_col, offset, s, backend):
    return x.new_empty((x.shape[0], out_dim), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


# -- project_factored --------------------------------------------------------------------------
@custom_op("fasttda::project_factored", mutates_args=())
def project_factored(x: Tensor, dy: Tensor, mask: Optional[Tensor], k_in: int, k_out: int, kind: str,
                     keys: Sequence[int], backend: str) -> Tensor:
    return _factored_body(x, dy, mask, k_in, k_out, kind, keys, backend)


@project_factored.register_fake
def _(x, dy, mask, k_in, k_out, kind, keys, backend):
    return x.new_empty((x.shape[0], k_out * k_in), dtype=torch.float32)


# -- quantize / dequantize ---------------------------------------------------------------------
@custom_op("fasttda::quantize", mutates_args=())
def quantize(x: Tensor, fmt: str, backend: str) -> tuple[Tensor, Tensor]:
    data, scale = _quantize_body(x, fmt, backend)
    return _fresh(data, x), (scale if scale is not None else x.new_empty(0, dtype=torch.float32))


@quantize.register_fake
def _(x, fmt, backend):
    n, d = x.shape
    q = _op_module("quantize")
    scaled = fmt in q.SCALED_QMAX
    return (x.new_empty((n, q.stored_width(fmt, d)), dtype=q.storage_dtype(fmt)),
            x.new_empty((n if scaled else 0,), dtype=torch.float32))


@custom_op("fasttda::dequantize", mutates_args=())
def dequantize(data: Tensor, scale: Optional[Tensor], fmt: str, dim: int, backend: str) -> Tensor:
    return _fresh(_dequantize_body(data, scale, fmt, dim, backend), data)


@dequantize.register_fake
def _(data, scale, fmt, dim, backend):
    return data.new_empty((data.shape[0], dim), dtype=torch.float32)


# -- encoder_epilogue --------------------------------------------------------------------------
@custom_op("fasttda::encoder_epilogue", mutates_args=())
def encoder_epilogue(hidden: Tensor, mask: Tensor, fmt: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    data, scale, norms = _encoder_epilogue_body(hidden, mask, fmt, backend)
    return (_fresh(data, hidden, mask), scale if scale is not None else hidden.new_empty(0, dtype=torch.float32),
            _fresh(norms, hidden, mask))


@encoder_epilogue.register_fake
def _(hidden, mask, fmt, backend):
    b, _, h = hidden.shape
    q = _op_module("quantize")
    return (hidden.new_empty((b, q.stored_width(fmt, h)), dtype=q.storage_dtype(fmt)),
            hidden.new_empty((b if fmt in q.SCALED_QMAX else 0,), dtype=torch.float32),
            hidden.new_empty((b,), dtype=torch.float32))


# -- score_topk --------------------------------------------------------------------------------
@custom_op("fasttda::score_topk", mutates_args=())
def score_topk(queries: Sequence[Tensor], rows: Sequence[Tensor], factors: Sequence[Optional[Tensor]], fmts: str,
               k: int, backend: str) -> tuple[Tensor, Tensor]:
    return _score_topk_body(queries, rows, factors, fmts, k, backend)


@score_topk.register_fake
def _(queries, rows, factors, fmts, k, backend):
    q = queries[0]
    return q.new_empty((q.shape[0], k), dtype=torch.float32), q.new_empty((q.shape[0], k), dtype=torch.int64)
