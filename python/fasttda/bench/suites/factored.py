"""Suite `factored`: LoGra-style factored projection of one linear layer's per-example gradient.

For x ``[B, T, d_in]`` (layer input) and dy ``[B, T, d_out]`` (output gradient),
``Σ_t (P_out dy_t)(P_in x_t)ᵀ`` per example, ``[B, k_out·k_in]``. fasttda's
`ops.project_factored` (matrices generated from the seed) against:

* ``logix.outer_products``: LogIX's way, per-token outer products materialized
  ``[B, T, k_out, k_in]`` then summed over tokens;
* ``torch.two_matmul``: plain PyTorch, both sides projected with cached matrices then one
  batched matmul over tokens (the best a user gets without a kernel);
* ``torch.full_gradient``: the per-example gradient ``G = dyᵀ x`` formed, then projected.

The cached P_in/P_out of the baselines are built outside the timing (their memory counts).
FLOPs: the two side projections plus the token contraction, 2·B·T·(d_in·k_in + d_out·k_out +
k_in·k_out); bytes: x and dy read once, the output written once.
"""
from __future__ import annotations

import torch

from fasttda.bench.suites._common import AnchorMissing, fasttda_attr, missing_all, usable_backends

SUITE = "factored"
IMPLS = ("logix.outer_products", "torch.two_matmul", "torch.full_gradient")


def shapes(ctx) -> list[dict]:
    if ctx.quick:
        return [dict(B=2, T=32, d_in=64, d_out=96, k_in=8, k_out=8)]
    if ctx.device == "cuda":
        return [dict(B=16, T=1024, d_in=4096, d_out=4096, k_in=16, k_out=16),
                dict(B=16, T=1024, d_in=4096, d_out=11008, k_in=64, k_out=64)]
    return [dict(B=8, T=256, d_in=1024, d_out=1024, k_in=16, k_out=16),
            dict(B=8, T=256, d_in=1024, d_out=2816, k_in=64, k_out=64)]


def run(ctx) -> list[dict]:
    out = []
    for shape in shapes(ctx):
        out += shape_cases(ctx, **shape)
    return out


def _side_matrices(ctx, d_in, d_out, k_in, k_out):
    g = torch.Generator().manual_seed(11)
    p_in = (torch.randint(0, 2, (d_in, k_in), generator=g).float() * 2 - 1) / k_in ** 0.5
    p_out = (torch.randint(0, 2, (d_out, k_out), generator=g).float() * 2 - 1) / k_out ** 0.5
    return p_in.to(ctx.torch_device), p_out.to(ctx.torch_device)


def logix_outer_products(p_in, p_out):
    def fn(inputs):
        x, dy = inputs
        px, pdy = x @ p_in, dy @ p_out  # [B, T, k]
        outer = pdy[:, :, :, None] * px[:, :, None, :]  # [B, T, k_out, k_in], materialized
        return outer.sum(dim=1).flatten(1)
    return fn


def two_matmul(p_in, p_out):
    def fn(inputs):
        x, dy = inputs
        return ((dy @ p_out).transpose(1, 2) @ (x @ p_in)).flatten(1)
    return fn


def full_gradient(p_in, p_out):
    def fn(inputs):
        x, dy = inputs
        grad = dy.transpose(1, 2) @ x  # [B, d_out, d_in], the per-example gradient
        return (p_out.T @ grad @ p_in).flatten(1)
    return fn


def shape_cases(ctx, B, T, d_in, d_out, k_in, k_out) -> list[dict]:
    params = dict(B=B, T=T, d_in=d_in, d_out=d_out, k_in=k_in, k_out=k_out, dtype="float32")
    inputs = [(ctx.randn(B, T, d_in, seed=400 + i), ctx.randn(B, T, d_out, seed=500 + i))
              for i in range(3 if ctx.device == "cuda" else 1)]
    flops = 2 * B * T * (d_in * k_in + d_out * k_out + k_in * k_out)
    io_bytes = 4 * (B * T * (d_in + d_out) + B * k_in * k_out)
    common = dict(suite=SUITE, name="project_factored", params=params, rotate=inputs, bytes_moved=io_bytes)
    baseline = "logix.outer_products"
    out = []
    for impl, make in zip(IMPLS, (logix_outer_products, two_matmul, full_gradient)):
        impl_flops = flops + (2 * B * T * d_in * d_out if impl == "torch.full_gradient" else 0)
        out.append(ctx.measure(build=lambda m=make: m(*_side_matrices(ctx, d_in, d_out, k_in, k_out)), impl=impl,
                               flops=impl_flops, baseline=None if impl == baseline else baseline, **common))
    try:
        project_factored = fasttda_attr("fasttda.ops", "project_factored")
    except AnchorMissing as exc:
        return out + missing_all(ctx, SUITE, "project_factored", ["fasttda.project_factored"], params, str(exc))
    x0, dy0 = inputs[0]
    backends, missing = usable_backends(
        ctx, SUITE, "project_factored", params,
        lambda b: project_factored(x0[:1, :2], dy0[:1, :2], k_in=k_in, k_out=k_out, backend=b),
        "fasttda.project_factored")
    out += missing
    for backend in backends:
        out.append(ctx.measure(
            lambda xs, b=backend: project_factored(xs[0], xs[1], k_in=k_in, k_out=k_out, seed=0, backend=b),
            impl=f"fasttda.project_factored[{backend}]", flops=flops, baseline=baseline, **common))
    return out
