"""Suite `quantize`: rows [N, d] float32 to each store format with per-row scales, and back.

fasttda's `ops.quantize` / `ops.dequantize` per format against plain PyTorch doing the
same thing eagerly (absmax per row, divide, round, clamp, cast; and the inverse), and,
for context, LogIX's int8 storage, a bare cast that truncates (no scale: not equivalent,
and its error is shown beside its time). Bytes: float32 in once, stored bytes out once
(the reverse for dequantize). `extra.rel_error` is ‖dequantize(quantize(x)) − x‖ / ‖x‖.
"""
from __future__ import annotations

import torch

from fasttda._dispatch import BackendUnavailable
from fasttda.bench.suites._common import AnchorMissing, fasttda_attr, missing_all, usable_backends

SUITE = "quantize"
FORMATS = ("bf16", "fp16", "int8", "fp8_e4m3", "int4")
QMAX = {"int8": 127.0, "fp8_e4m3": 448.0, "int4": 7.0}


def run(ctx) -> list[dict]:
    N, d = (2048, 128) if ctx.quick else ((1 << 20, 1024) if ctx.device == "cuda" else (1 << 16, 1024))
    xs = [ctx.randn(N, d, seed=300 + i) for i in range(3 if ctx.device == "cuda" else 1)]
    out = []
    for fmt in FORMATS:
        out += format_cases(ctx, xs, fmt)
    return add_goals(out, ctx)


CAST_GOAL = 0.9  # issue 16: the C++ bf16/fp16 cast at >= 0.9x eager torch


def add_goals(results: list[dict], ctx) -> list[dict]:
    """``extra["goals"]`` on the C++ bf16/fp16 quantize rows: time vs eager torch's cast."""
    if ctx.device != "cpu" or ctx.quick:
        return results
    base = {r["name"]: r for r in results if r.get("status") == "ok" and r["impl"] == "torch.eager"}
    for r in results:
        name = r.get("name")
        if (r.get("status") == "ok" and r["impl"] == "fasttda.quantize[cpp]" and name in base
                and name in ("quantize_bf16", "quantize_fp16")):
            value = base[name]["median_s"] / r["median_s"]
            r["extra"]["goals"] = [dict(goal=f"{name} vs torch.eager >= {CAST_GOAL}", value=round(value, 4),
                                        met=value >= CAST_GOAL)]
    return results


def torch_quantize(x: torch.Tensor, fmt: str):
    """Eager PyTorch: what a user writes without fasttda."""
    if fmt in ("bf16", "fp16"):
        return x.to(torch.bfloat16 if fmt == "bf16" else torch.float16), None
    scale = x.abs().amax(dim=1) / QMAX[fmt]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = x / safe[:, None]
    if fmt == "fp8_e4m3":
        return y.to(torch.float8_e4m3fn), scale
    q = y.round_().clamp_(-QMAX[fmt], QMAX[fmt]).to(torch.int8)
    if fmt == "int4":  # two nibbles per byte
        q = q.add_(8).to(torch.uint8)
        if q.shape[1] % 2:
            q = torch.nn.functional.pad(q, (0, 1), value=8)
        q = q[:, 0::2] | (q[:, 1::2] << 4)
    return q, scale


def torch_dequantize(data: torch.Tensor, scale, fmt: str, dim: int):
    if scale is None:
        return data.to(torch.float32)
    if fmt == "int4":
        lo = (data & 0xF).to(torch.int8) - 8
        hi = (data >> 4).to(torch.int8) - 8
        data = torch.stack((lo, hi), dim=2).reshape(data.shape[0], -1)[:, :dim]
    return data.to(torch.float32) * scale[:, None]


def format_cases(ctx, xs, fmt: str) -> list[dict]:
    N, d = xs[0].shape
    params = dict(N=N, d=d, fmt=fmt)
    try:
        quantize = fasttda_attr("fasttda.ops", "quantize")
        dequantize = fasttda_attr("fasttda.ops", "dequantize")
        bytes_per_row = fasttda_attr("fasttda.ops.quantize", "bytes_per_row")
    except AnchorMissing as exc:
        return missing_all(ctx, SUITE, f"quantize_{fmt}", ["fasttda.quantize"], params, str(exc))
    stored = N * bytes_per_row(fmt, d)
    q_bytes, dq_bytes = 4 * N * d + stored, stored + 4 * N * d
    out = []
    base_q, base_dq = "torch.eager", "torch.eager"
    if fmt == "fp8_e4m3" and not hasattr(torch, "float8_e4m3fn"):
        out.append(ctx.missing(suite=SUITE, name=f"quantize_{fmt}", impl=base_q, params=params,
                               reason="this torch has no float8_e4m3fn"))
    else:
        out.append(ctx.measure(lambda x: torch_quantize(x, fmt), suite=SUITE, name=f"quantize_{fmt}", impl=base_q,
                               params=params, rotate=xs, bytes_moved=q_bytes))
        ref_data, ref_scale = torch_quantize(xs[0], fmt)
        out.append(ctx.measure(lambda: torch_dequantize(ref_data, ref_scale, fmt, d), suite=SUITE,
                               name=f"dequantize_{fmt}", impl=base_dq, params=params,
                               bytes_moved=dq_bytes))
    if fmt == "int8":
        err = _rel_error(xs[0], xs[0].to(torch.int8).to(torch.float32))
        out.append(ctx.measure(lambda x: x.to(torch.int8), suite=SUITE, name="quantize_int8",
                               impl="logix.cast (truncating, no scale)", params=params, rotate=xs,
                               bytes_moved=5 * N * d, extra={"rel_error": err}))

    small = xs[0][:8]
    backends, missing = usable_backends(ctx, SUITE, f"quantize_{fmt}", params,
                                        lambda b: quantize(small, fmt, backend=b), "fasttda.quantize")
    out += missing
    for backend in backends:
        data, scale = quantize(xs[0], fmt, backend=backend)
        try:  # a backend may have a quantize kernel and no dequantize one (the C++ bf16/fp16 cast)
            restored = dequantize(data, scale, fmt, dim=d, backend=backend)
            dq_backend = backend
        except BackendUnavailable as exc:
            restored, dq_backend = dequantize(data, scale, fmt, dim=d), None
            out.append(ctx.missing(suite=SUITE, name=f"dequantize_{fmt}", impl=f"fasttda.dequantize[{backend}]",
                                   params=params, reason=str(exc)))
        err = _rel_error(xs[0], restored)
        del restored
        out.append(ctx.measure(lambda x, b=backend: quantize(x, fmt, backend=b), suite=SUITE,
                               name=f"quantize_{fmt}", impl=f"fasttda.quantize[{backend}]", params=params,
                               rotate=xs, bytes_moved=q_bytes, baseline=base_q, extra={"rel_error": err}))
        if dq_backend is not None:
            out.append(ctx.measure(lambda b=backend: dequantize(data, scale, fmt, dim=d, backend=b), suite=SUITE,
                                   name=f"dequantize_{fmt}", impl=f"fasttda.dequantize[{backend}]", params=params,
                                   bytes_moved=dq_bytes, baseline=base_dq, extra={"rel_error": err}))
        del data, scale
    return out


def _rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    x64 = x.double()
    return float((y.double() - x64).norm() / x64.norm())
