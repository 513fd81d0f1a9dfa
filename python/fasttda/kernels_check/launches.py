"""The launch list: every Triton launch fasttda makes, by calling the real launchers.

Each case calls a launcher of `fasttda.kernels` with ``meta`` tensors (dtype, shape,
strides and byte offset are real; no memory is allocated), so the launch arguments, grid,
block sizes and specialization are exactly what a GPU run with those inputs would give.
The grid covers kernel × kind × format × dtype, plus the edges: k = 1, D = 1, odd strides,
offsets past 2**31, Q/N/d at 1 and at sizes that are not multiples of 16, and sizes whose
element offsets pass 2**31 (which only meta tensors can afford).

A new kernel adds its launches here (one function per op, registered in `CASES`).
"""
from __future__ import annotations

import itertools

import torch

META = torch.device("meta")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FORMATS = ("fp32", "bf16", "fp16", "int8", "fp8_e4m3", "int4")
KEYS = (0x9E3779B9, 0x7F4A7C15)  # one key above 2**31, one below
BIG = 2**31 + 5


def meta(shape, dtype=torch.float32, *, stride=None, offset=0):
    """A meta tensor; ``stride``/``offset`` (elements) make strided or misaligned views."""
    if stride is None and not offset:
        return torch.empty(shape, dtype=dtype, device=META)
    stride = stride or torch.empty(shape, device=META).stride()
    extent = offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    return torch.empty(extent, dtype=dtype, device=META).as_strided(shape, stride, offset)


def pairwise(full, typical, variants, edges, core_edges=()):
    """The grid: ``typical`` × every variant, then the edge shapes. The CI grid (``full``
    False) runs every variant once on the typical shape and the edges on ``core_edges``
    variants only; the full grid runs every variant on every edge."""
    for v in variants:
        yield v, typical
    for v in variants:
        if full or v in core_edges:
            for e in edges:
                yield v, e


def project_cases(full):
    from fasttda.kernels.project import launch_project

    shapes = [  # (B, D, K, x stride or None, offset)
        (1, 1, 1, None, 0), (37, 1000, 100, None, 0),
        (5, 77, 33, (231, 3), 0), (16, 64, 48, None, BIG), (3, 4096, 2**16, None, 0),
    ]
    variants = [(kind, dtype, s) for kind in ("rademacher", "gaussian", "sjlt") for dtype in FLOAT_DTYPES
                for s in ((1, 4) if kind == "sjlt" else (1,))]
    core = [("rademacher", torch.float32, 1), ("sjlt", torch.float32, 4)]
    for (kind, dtype, s), (B, D, K, stride, offset) in pairwise(full, (32, 4096, 512, None, 0), variants, shapes, core):
        x = meta((B, D), dtype, stride=stride)
        yield f"project {kind} {dtype} B={B} D={D} K={K} s={s}", lambda x=x, K=K, kind=kind, o=offset, s=s: \
            launch_project(x, K, kind, *KEYS, o, s)
    # D past 2**24 (whole-model gradients): SJLT's D blocks exceed the 65535 of grid axis 1
    yield "project sjlt D=2**25", lambda: launch_project(meta((8, 2**25)), 4096, "sjlt", *KEYS, 0, 2)
    # rows·K past 2**31 (the partial-sum offsets) and B·D past 2**31
    yield "project rademacher B·K>2**31", lambda: launch_project(meta((2**17, 64)), 2**15, "rademacher", *KEYS, 0, 1)
    yield "project gaussian B·D>2**31", lambda: launch_project(meta((40, 2**26)), 64, "gaussian", *KEYS, 0, 1)


def grass_cases(full):
    from fasttda.kernels.project_grass import launch_project_grass

    for dtype in FLOAT_DTYPES:
        yield f"grass {dtype} B=32 D=4096 K=512", lambda dtype=dtype: \
            launch_project_grass(meta((32, 4096), dtype), 512, *KEYS, 0, 1 << 22)
    yield "grass k=1 D=1 keep=1", lambda: launch_project_grass(meta((1, 1)), 1, *KEYS, 0, 1 << 24)
    yield "grass odd strides offset>2**31", lambda: launch_project_grass(meta((5, 77), stride=(231, 3)), 33, *KEYS, BIG, 1)
    yield "grass D=2**25", lambda: launch_project_grass(meta((8, 2**25)), 4096, *KEYS, 0, 1 << 20)


def matrix_cases(full):
    from fasttda.kernels.project import launch_matrix

    for kind, (D, K, offset) in itertools.product(("rademacher", "gaussian", "sjlt"),
                                                  ((4096, 512, 0), (1, 1, 0), (77, 33, BIG))):
        for s in ((1, 3) if kind == "sjlt" else (1,)):
            yield f"matrix {kind} D={D} K={K} s={s}", lambda D=D, K=K, kind=kind, o=offset, s=s: \
                launch_matrix(D, K, kind, *KEYS, o, s, META)


def factored_cases(full):
    from fasttda.kernels.project_factored import launch_project_factored

    shapes = [  # (B, T, d_in, d_out, k_in, k_out)
        (1, 1, 1, 1, 1, 1), (3, 37, 100, 50, 20, 70),
        (2, 2**17, 2**14, 2**14, 16, 16),  # B·T·d past 2**31
    ]
    # CI grid: every kind × dtype unmasked, the mask on one (it only zeroes token rows)
    variants = [(kind, dtype, masked) for kind in ("rademacher", "gaussian") for dtype in FLOAT_DTYPES
                for masked in (False, True) if full or not masked or (kind, dtype) == ("rademacher", torch.float32)]
    core = [("rademacher", torch.float32, True)]
    for (kind, dtype, masked), (B, T, di, do, ki, ko) in pairwise(full, (32, 512, 768, 768, 32, 32), variants,
                                                                   shapes, core):
        x, dy = meta((B, T, di), dtype), meta((B, T, do), dtype)
        mask = meta((B, T), torch.bool) if masked else None
        yield f"factored {kind} {dtype} B={B} T={T} d={di}/{do} k={ki}/{ko} mask={masked}", \
            lambda x=x, dy=dy, m=mask, ki=ki, ko=ko, kind=kind: \
            launch_project_factored(x, dy, m, ki, ko, kind, KEYS, KEYS[::-1])
    # odd strides: x a transposed view [B, T, d] with the token axis innermost
    x = meta((4, 40, 24), stride=(960, 1, 40))
    yield "factored rademacher strided", lambda: launch_project_factored(x, x, None, 8, 8, "rademacher", KEYS, KEYS)


def project_quantized_cases(full):
    from fasttda.kernels.project_quantized import FUSED_MAX_DIM, FUSED_MAX_DIM_GAUSSIAN, fused, launch_project_quantized

    # the fused kernel runs when B/16 programs fill the GPU (B >= 2112 on 132 SMs): B = 32
    # shows the split path (project, then quantize) that smaller batches take
    shapes = [(2112, 1, 1, 0), (2200, 1000, 100, BIG), (4096, 4096, FUSED_MAX_DIM, 0), (32, 4096, 512, 0)]
    if full:
        variants = list(itertools.product(("rademacher", "gaussian"), FORMATS, FLOAT_DTYPES))
    else:  # every format on fp32 Rademacher, every kind × dtype on int8: the epilogue and the
        # projection are independent code paths
        variants = [("rademacher", f, torch.float32) for f in FORMATS]
        variants += [(k, "int8", d) for k in ("rademacher", "gaussian") for d in FLOAT_DTYPES
                     if (k, d) != ("rademacher", torch.float32)]
    core = [("rademacher", "int4", torch.float32), ("rademacher", "int8", torch.float32)]
    for (kind, fmt, dtype), (B, D, K, offset) in pairwise(full, (4096, 4096, 512, 0), variants, shapes, core):
        K = min(K, FUSED_MAX_DIM_GAUSSIAN) if kind == "gaussian" else K  # the widest fused row
        assert fused(kind, K)
        yield f"project_quantized {kind} {fmt} {dtype} B={B} D={D} K={K}", \
            lambda x=meta((B, D), dtype), K=K, fmt=fmt, kind=kind, o=offset: \
            launch_project_quantized(x, K, fmt, kind, *KEYS, o, 1)


def quantize_cases(full):
    from fasttda.kernels.quantize import launch_dequantize, launch_quantize, stored_width
    from fasttda.formats import storage_dtype

    for fmt, dtype, (N, D) in itertools.product(FORMATS, FLOAT_DTYPES, ((64, 4096), (1, 1), (37, 1000))):
        if not full and dtype != torch.float32 and (N, D) != (64, 4096):
            continue
        yield f"quantize {fmt} {dtype} N={N} D={D}", lambda x=meta((N, D), dtype), fmt=fmt: launch_quantize(x, fmt)
    for fmt, (N, D) in itertools.product(FORMATS, ((64, 4096), (1, 1), (37, 1001))):
        data = meta((N, stored_width(fmt, D)), storage_dtype(fmt))
        scale = meta((N,)) if fmt in ("int8", "fp8_e4m3", "int4") else None
        yield f"dequantize {fmt} N={N} D={D}", lambda d=data, s=scale, fmt=fmt, D=D: launch_dequantize(d, s, fmt, D)
    x = meta((9, 50), stride=(1, 9))  # column-major input
    yield "quantize int8 column-major", lambda: launch_quantize(x, "int8")


def score_cases(full):
    from fasttda.kernels.quantize import stored_width
    from fasttda.kernels.score import launch_score_dense, launch_score_topk
    from fasttda.formats import storage_dtype

    def terms(fmts, Q, N, d, factor):
        queries = [meta((Q, d)) for _ in fmts]
        rows = [meta((N, stored_width(f, d)), storage_dtype(f)) for f in fmts]
        factors = [meta((N,)) if factor or f in ("int8", "fp8_e4m3", "int4") else None for f in fmts]
        return queries, rows, factors, list(fmts)

    # The row format changes only the load stage and k only the top-k epilogue (a sort network
    # that takes Triton minutes to compile at k = 256), so the CI grid runs every format
    # through the dense epilogue and the top-k epilogue on fp32 and int4 rows (Q, N and d
    # not multiples of 16 on int4).
    for fmt, (Q, N, d), k in itertools.product(FORMATS, ((64, 100_000, 512), (1, 1, 1), (37, 1000, 100)),
                                               (10, 1, 256)):
        if not full and not (fmt == "fp32" and ((Q, N, d) == (64, 100_000, 512) or (Q, N, d, k) == (1, 1, 1, 1))
                             or fmt == "int4" and (Q, N, d) == (37, 1000, 100) and k == 10):
            continue
        yield f"score_topk {fmt} Q={Q} N={N} d={d} k={k}", \
            lambda t=terms((fmt,), Q, N, d, False), k=k: launch_score_topk(*t, k)
    for fmt, (Q, N, d), factor in itertools.product(FORMATS, ((1024, 4096, 512), (1, 1, 1), (20, 77, 33)),
                                                    (False, True)):
        if not full and ((Q, N, d) != (1024, 4096, 512) or factor) and fmt not in ("int8", "int4"):
            continue
        t = terms((fmt,), Q, N, d, factor)
        yield f"score_dense {fmt} Q={Q} N={N} d={d} factor={factor}", \
            lambda t=t, Q=Q, N=N: launch_score_dense(*t, meta((Q, N)))
    # DDA: several stores of different formats in one pass; and N·stride past 2**31
    yield "score_topk 3 stores", lambda: launch_score_topk(*terms(("int8", "bf16", "int4"), 32, 5000, 256, True), 10)
    yield "score_topk N·d>2**31", lambda: launch_score_topk(*terms(("fp32",), 16, 2**22, 1024, False), 10)


def encoder_epilogue_cases(full):
    from fasttda.kernels.encoder_epilogue import launch_encoder_epilogue

    shapes = [  # (B, T, H, hidden stride or None)
        (1, 1, 1, None), (7, 33, 384, None), (5, 13, 37, (13 * 74, 74, 2)), (3, 70, 8192, None),
        (64, 512, 1024, None),
    ]
    # CI grid: every format on float32 hidden states, every dtype on int8 (the load and the
    # epilogue are independent code paths)
    variants = [(fmt, dtype) for fmt in FORMATS for dtype in FLOAT_DTYPES
                if full or dtype == torch.float32 or fmt == "int8"]
    core = [("int8", torch.float32), ("int8", torch.bfloat16), ("int4", torch.float32)]
    for (fmt, dtype), (B, T, H, stride) in pairwise(full, (32, 128, 384, None), variants, shapes, core):
        h, m = meta((B, T, H), dtype, stride=stride), meta((B, T), torch.int64)
        yield f"encoder_epilogue {fmt} {dtype} B={B} T={T} H={H}", lambda h=h, m=m, fmt=fmt: \
            launch_encoder_epilogue(h, m, fmt)


CASES = {
    "project": project_cases, "projection_matrix": matrix_cases, "project_factored": factored_cases,
    "project_quantized": project_quantized_cases, "quantize": quantize_cases, "score": score_cases,
    "project_grass": grass_cases, "encoder_epilogue": encoder_epilogue_cases,
}


def all_cases(ops=None, full=False):
    """``(op, case name, call)`` for the CI grid, or the full product with ``full``."""
    for op, make in CASES.items():
        if ops is None or op in ops:
            for name, call in make(full):
                yield op, name, call
