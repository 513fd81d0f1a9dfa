"""Suite `project`: seeded random projection of [B, D] rows to k dims.

fasttda's `ops.project` (every backend that runs here) against TRAK's BasicProjector (and
CudaProjector/fast_jl on GPU), dattri's projector, `sjlt` on GPU, and a plain torch matmul
with the matrix materialized up front (its generation left out of the timing: the floor a
cached-matrix approach reaches, paying D × k floats of memory).

Cost per call: 2·B·D·k FLOPs; bytes: the input and output once (the matrix is generated,
not read), or plus D·k floats when it is materialized.
"""
from __future__ import annotations

import warnings

import torch

from fasttda.bench import anchors
from fasttda.bench.suites._common import AnchorMissing, fasttda_attr, missing_all, usable_backends

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

SUITE = "project"


def shapes(ctx) -> list[dict]:
    if ctx.quick:
        return [dict(B=8, D=1 << 14, k=256)]
    if ctx.device == "cuda":
        return [dict(B=32, D=1 << 18, k=2048), dict(B=32, D=1 << 24, k=8192)]
    return [dict(B=32, D=1 << 18, k=2048)]


def small_k_shapes(ctx) -> list[dict]:
    """TRAK's own resnet18 case (11.7M gradient coordinates to 20 dims), where BasicProjector
    keeps its whole matrix (k <= its 100-column block) and we regenerate ours every call;
    a test-sized version of the same shape in quick mode."""
    if ctx.device == "cuda":
        return []
    D = 1 << 16 if ctx.quick else 11_700_000
    return [dict(B=4 if ctx.quick else 8, D=D, k=20, kind=kind) for kind in ("rademacher", "gaussian")]


def run(ctx) -> list[dict]:
    results = []
    for shape in shapes(ctx):
        results += dense_cases(ctx, **shape)
    for shape in small_k_shapes(ctx):
        results += dense_cases(ctx, **shape, anchors_only=("trak.BasicProjector",), skip_backends=("reference",))
    if ctx.quick or ctx.device == "cuda":  # on CPU the fused op is the two ops back to back
        results += fused_quantize_cases(ctx, **shapes(ctx)[0])
    sjlt_shape = dict(B=8, D=1 << 14, k=256, s=1) if ctx.quick else dict(B=32, D=1 << 20, k=4096, s=1)
    results += sjlt_cases(ctx, **sjlt_shape)
    return add_goals(ctx, results)


def add_goals(ctx, results: list[dict]) -> list[dict]:
    """``extra["goals"]`` (issue 16, CPU): ``fasttda.project[auto]`` ≥ 10× TRAK's BasicProjector
    at the headline shape (≥ 5× under ``--busy``) and ≥ 1× at every other dense shape."""
    if ctx.device != "cpu" or ctx.quick:
        return results
    ok = {(r["name"], r["impl"], tuple(sorted(r["params"].items()))): r for r in results if r.get("status") == "ok"}
    for (name, impl, params), r in ok.items():
        trak = ok.get((name, "trak.BasicProjector", params))
        if name != "dense_jl" or impl != "fasttda.project[auto]" or trak is None:
            continue
        p = dict(params)
        headline = (p["B"], p["D"], p["k"]) == (32, 1 << 18, 2048)
        target = (5.0 if getattr(ctx, "busy", False) else 10.0) if headline else 1.0
        value = trak["median_s"] / r["median_s"]
        r.setdefault("extra", {})["goals"] = [dict(goal=f"speed-up vs trak.BasicProjector >= {target:g}",
                                                   value=round(value, 4), met=value >= target)]
    return results


def _inputs(ctx, B, D, sets):
    return [ctx.randn(B, D, seed=100 + i) for i in range(sets)]


def dense_cases(ctx, B, D, k, kind="rademacher", anchors_only=None, skip_backends=()) -> list[dict]:
    """``anchors_only``: time only these anchors (and no materialized matmul);
    ``skip_backends``: fasttda backends too slow to time at this shape."""
    import fasttda.ops as ops

    params = dict(B=B, D=D, k=k, kind=kind, dtype="float32")
    flops = 2 * B * D * k
    io_bytes = 4 * (B * D + B * k)
    xs = _inputs(ctx, B, D, 3 if ctx.device == "cuda" else 1)
    baseline = "trak.CudaProjector" if ctx.device == "cuda" else "trak.BasicProjector"
    common = dict(suite=SUITE, name="dense_jl", params=params, flops=flops)
    out = []

    def anchor_case(impl, build, extra_bytes=0):
        kw = {} if kind == "rademacher" else {"kind": kind}  # trak_cuda is Rademacher only
        return ctx.measure(build=lambda: build(D, k, ctx.device, **kw), impl=impl, rotate=xs,
                           bytes_moved=io_bytes + extra_bytes, baseline=None if impl == baseline else baseline,
                           **common)

    dattri_impl = "dattri.CudaProjector" if ctx.device == "cuda" else "dattri.BasicProjector"
    for impl, build, extra in (("trak.BasicProjector", anchors.trak_basic, 0),
                               ("trak.CudaProjector", anchors.trak_cuda, 0),
                               (dattri_impl, anchors.dattri_projector, 4 * D * k if ctx.device == "cuda" else 0)):
        if impl == "trak.CudaProjector" and ctx.device != "cuda":
            continue
        if anchors_only is None or impl in anchors_only:
            out.append(anchor_case(impl, build, extra))

    backends, missing = usable_backends(ctx, SUITE, "dense_jl", params,
                                        lambda b: ops.project(xs[0][:, :64], 8, kind=kind, backend=b),
                                        "fasttda.project")
    out += missing
    # "auto" is what users get: on CPU the C++ kernel, or one GEMM with P kept for few rows
    for backend in [*backends, "auto"] if ctx.device == "cpu" else backends:
        if backend in skip_backends:
            continue
        out.append(ctx.measure(lambda x, b=backend: ops.project(x, k, kind=kind, seed=0, backend=b),
                               impl=f"fasttda.project[{backend}]", rotate=xs, bytes_moved=io_bytes,
                               baseline=baseline, **common))

    if anchors_only is None:
        out.append(materialized_matmul_case(ctx, xs, B, D, k, params, baseline))
    return out


def materialized_matmul_case(ctx, xs, B, D, k, params, baseline) -> dict:
    """x @ P with P [D, k] built once outside the timing (what cached-matrix anchors do)."""
    impl = "torch.matmul[materialized P]"
    matrix_bytes = 4 * D * k
    if matrix_bytes > (8 << 30):
        return ctx.missing(suite=SUITE, name="dense_jl", impl=impl, params=params,
                           reason=f"materialized P would need {matrix_bytes / 2**30:.0f} GiB")

    def build():
        g = torch.Generator(device="cpu").manual_seed(7)
        signs = torch.randint(0, 2, (D, k), generator=g, dtype=torch.int8).to(ctx.torch_device)
        matrix = signs.float().mul_(2).sub_(1).div_(k ** 0.5)
        del signs
        return lambda x: x @ matrix

    return ctx.measure(build=build, suite=SUITE, name="dense_jl", impl=impl, params=params, rotate=xs,
                       flops=2 * B * D * k, bytes_moved=4 * (B * D + B * k) + matrix_bytes, baseline=baseline,
                       extra={"matrix_bytes": matrix_bytes, "note": "matrix generation not timed"})


def sjlt_cases(ctx, B, D, k, s) -> list[dict]:
    import fasttda.ops as ops

    params = dict(B=B, D=D, k=k, s=s, dtype="float32")
    xs = _inputs(ctx, B, D, 3 if ctx.device == "cuda" else 1)
    io_bytes = 4 * (B * D + B * k)
    common = dict(suite=SUITE, name="sjlt", params=params, bytes_moved=io_bytes, flops=2 * B * D * s)
    baseline = "sjlt" if ctx.device == "cuda" else "torch.sparse[materialized P]"
    out = []
    if ctx.device == "cuda":
        out.append(ctx.measure(build=lambda: anchors.sjlt_cuda(D, k, ctx.device, s=s), impl="sjlt", rotate=xs,
                               **common))
        out.append(ctx.measure(build=lambda: anchors.dattri_projector(D, k, ctx.device, kind="sjlt"),
                               impl="dattri.CudaProjector", rotate=xs, baseline=baseline, **common))
    else:
        def build_sparse():  # P^T as CSR, built outside the timing: y = (P^T @ x^T)^T
            p_t = sparse_sjlt_transposed(D, k, s, seed=0)
            return lambda x: torch.sparse.mm(p_t, x.t()).t()

        out.append(ctx.measure(build=build_sparse, impl="torch.sparse[materialized P]", rotate=xs, **common))
    backends, missing = usable_backends(ctx, SUITE, "sjlt", params,
                                        lambda b: ops.project(xs[0][:, :64], 8, kind="sjlt", backend=b),
                                        "fasttda.project")
    out += missing
    for backend in backends:
        out.append(ctx.measure(lambda x, b=backend: ops.project(x, k, kind="sjlt", s=s, backend=b),
                               impl=f"fasttda.project[{backend}]", rotate=xs, baseline=baseline, **common))
    return out


def sparse_sjlt_transposed(D: int, k: int, s: int, *, seed: int) -> torch.Tensor:
    """fasttda's SJLT matrix, transposed to ``[k, D]`` CSR, built sparse (D·s entries, never D·k)."""
    from fasttda.ops import _counter_hash as ch
    from fasttda.ops.project import sjlt_targets

    k_row, k_col = ch.seed_keys(seed, "sjlt")
    bucket, sign = sjlt_targets(0, D, k, s, k_row, k_col, torch.device("cpu"))
    cols = torch.arange(D)[:, None].expand(-1, s)
    coo = torch.sparse_coo_tensor(torch.stack((bucket.reshape(-1), cols.reshape(-1))), sign.reshape(-1) / s ** 0.5,
                                  (k, D), check_invariants=False).coalesce()
    return coo.to_sparse_csr()


def fused_quantize_cases(ctx, B, D, k, fmt: str = "int8") -> list[dict]:
    """`ops.project_quantized` (project, per-row scale and int8 in one pass) vs the two ops."""
    import fasttda.ops as ops

    params = dict(B=B, D=D, k=k, kind="rademacher", fmt=fmt)
    name, two_ops = "dense_jl+quantize", "fasttda.project+quantize"
    try:
        project_quantized = fasttda_attr("fasttda.ops", "project_quantized")
    except AnchorMissing as exc:
        return missing_all(ctx, SUITE, name, ["fasttda.project_quantized"], params, str(exc))
    xs = _inputs(ctx, B, D, 3 if ctx.device == "cuda" else 1)
    common = dict(suite=SUITE, name=name, params=params, rotate=xs, flops=2 * B * D * k,
                  bytes_moved=4 * B * D + B * (k + 8))
    out = [ctx.measure(lambda x: ops.quantize(ops.project(x, k), fmt), impl=two_ops, **common)]
    backends, missing = usable_backends(ctx, SUITE, name, params,
                                        lambda b: project_quantized(xs[0][:, :64], 8, fmt, backend=b),
                                        "fasttda.project_quantized")
    for backend in backends:
        out.append(ctx.measure(lambda x, b=backend: project_quantized(x, k, fmt, backend=b),
                               impl=f"fasttda.project_quantized[{backend}]", baseline=two_ops, **common))
    return out + missing
