"""Suite `score`: top-k inner products of Q queries against N stored rows, per store format.

fasttda's `ops.score_topk` (fused scan, per-row scales, streaming top-k) per format against:

* ``torch.topk(q@R.T)``: the full Q × N score matrix, then top-k (what most anchors do);
* ``torch.chunked``: 64k-row chunks, each dequantized to float32 when the format is not
  fp32, matmul, top-k per chunk, merged (the best plain-PyTorch streaming scan);
* ``faiss.IndexFlatIP`` (fp32) and ``faiss.IndexScalarQuantizer`` QT_8bit (int8), exhaustive.

The impl name carries the format (``fasttda.score_topk[int8]``); every fasttda case is
compared with ``torch.topk(q@R.T)[fp32]``, and `extra.recall` gives the overlap of its
top-k with the exact float32 top-k. FLOPs 2·Q·N·d; bytes: the stored rows (data + scales)
read once plus the queries and results.

The memory-bandwidth floor: ``torch.copy_[bandwidth]`` (name ``copy``) copies a buffer the
size of the int8 store in the same run; its bandwidth is bytes read + written per second.
Every fasttda case then carries ``extra.floor_s`` = its bytes ÷ that bandwidth (the least
time a scan of its store could take) and ``extra.x_floor`` = its median ÷ ``floor_s``.
int8 and int4 rows are also scanned with integer queries (``query_precision="int8"``: each
query rounded to int8, exact integer dot products): impl ``fasttda.score_topk[int8][cpp][int8 queries]``,
on the compiled backends only; their recall is against the same exact float32 top-k.
The default shape covers the goals of issue 16: N=500k, d=1024, k=100, Q = 1, 8, 32, 256
(at Q >= 256 only the fp32 baselines and the compiled backends, to keep the run to minutes).
"""
from __future__ import annotations

import inspect
import shutil
import tempfile
from pathlib import Path

import torch

from fasttda.bench import anchors
from fasttda.bench.suites._common import AnchorMissing, fasttda_attr, missing_all, usable_backends
from fasttda.bench.suites.quantize import torch_dequantize, torch_quantize

SUITE = "score"
FORMATS = ("fp32", "bf16", "fp16", "int8", "fp8_e4m3", "int4")
CHUNK_ROWS = 1 << 16
BASELINE = "torch.topk(q@R.T)[fp32]"
STORE_FORMATS = ("fp32", "int8", "int4")  # also scanned from an on-disk FeatureStore
INT_QUERY_FORMATS = ("int8", "int4")  # also timed with query_precision="int8"
INT_QUERIES = "[int8 queries]"
SLOW_Q = 256  # from here on, the plain-PyTorch chunked scan and the reference backend are not timed


def config(ctx) -> dict:
    if ctx.quick:
        return dict(N=20_000, d=128, Qs=(1, 8), k=10)
    return dict(N=500_000, d=1024, Qs=(1, 8, 32, 256), k=100)


def run(ctx) -> list[dict]:
    cfg = config(ctx)
    N, d, k = cfg["N"], cfg["d"], cfg["k"]
    rows = ctx.randn(N, d, seed=600)
    queries = {Q: [ctx.randn(Q, d, seed=700 + 10 * Q + i) for i in range(3 if ctx.device == "cuda" else 1)]
               for Q in cfg["Qs"]}
    exact = {Q: torch.topk(qs[0] @ rows.T, k, dim=1).indices for Q, qs in queries.items()}
    out = []
    for Q, qs in queries.items():
        out += fp32_baselines(ctx, rows, qs, k)
    out.append(copy_bandwidth(ctx, N * d))
    norms = rows.norm(dim=1)
    root = Path(tempfile.mkdtemp(prefix="fasttda-bench-score-"))
    try:
        for fmt in FORMATS:
            stored = store_rows(rows, fmt)
            for Q, qs in queries.items():
                out += format_cases(ctx, stored, fmt, qs, k, exact[Q], d)
            if fmt in STORE_FORMATS:
                out += store_cases(ctx, stored, norms, fmt, queries, k, exact, d, root)
            del stored
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return add_goals(add_floors(out), ctx)


COPY = "torch.copy_[bandwidth]"


def copy_bandwidth(ctx, nbytes: int) -> dict:
    """Copy ``nbytes`` (the int8 store's size: past any cache) once per call."""
    src = torch.randint(-128, 127, (nbytes,), dtype=torch.int8, device=ctx.device)
    dst = torch.empty_like(src)
    return ctx.measure(lambda: dst.copy_(src), suite=SUITE, name="copy", impl=COPY, params=dict(bytes=nbytes),
                       bytes_moved=2 * nbytes)


def add_floors(results: list[dict]) -> list[dict]:
    """``extra.floor_s`` (bytes ÷ the same run's copy bandwidth) and ``extra.x_floor`` on fasttda cases."""
    copy = next((r for r in results if r.get("impl") == COPY and r.get("status") == "ok"), None)
    if copy is None or not copy.get("median_s"):
        return results
    bandwidth = copy["bytes_moved"] / copy["median_s"]  # bytes read + written per second
    for r in results:
        if r.get("status") == "ok" and r["impl"].startswith("fasttda.") and r.get("bytes_moved") and r.get("median_s"):
            floor = r["bytes_moved"] / bandwidth
            r["extra"]["floor_s"] = floor
            r["extra"]["x_floor"] = r["median_s"] / floor
    return results


def _params(N, d, Q, k) -> dict:
    return dict(N=N, d=d, Q=Q, k=k)


def _cost(N, d, Q, k, row_bytes: float) -> dict:
    return dict(flops=2 * Q * N * d, bytes_moved=int(N * row_bytes + 4 * Q * d + 12 * Q * k))


def store_rows(rows: torch.Tensor, fmt: str) -> dict:
    """The rows as a store holds them: fasttda's quantize if present, else eager torch's."""
    if fmt == "fp32":
        return dict(data=rows, scale=None, by="none")
    try:
        quantize = fasttda_attr("fasttda.ops", "quantize")
        data, scale = quantize(rows, fmt)
        return dict(data=data, scale=scale, by="fasttda")
    except AnchorMissing:
        data, scale = torch_quantize(rows, fmt)
        return dict(data=data, scale=scale, by="torch")


def chunked_topk(data, scale, fmt, d, k):
    """Plain-PyTorch streaming scan: dequantize a chunk, matmul, top-k, merge."""
    def fn(q):
        best_v = best_i = None
        for lo in range(0, data.shape[0], CHUNK_ROWS):
            chunk = data[lo:lo + CHUNK_ROWS]
            rows = chunk if fmt == "fp32" else torch_dequantize(chunk, None if scale is None else
                                                                scale[lo:lo + CHUNK_ROWS], fmt, d)
            v, i = torch.topk(q @ rows.T, min(k, rows.shape[0]), dim=1)
            i += lo
            if best_v is not None:
                v, j = torch.topk(torch.cat((best_v, v), 1), k, dim=1)
                i = torch.gather(torch.cat((best_i, i), 1), 1, j)
            best_v, best_i = v, i
        return best_v, best_i
    return fn


def fp32_baselines(ctx, rows, qs, k) -> list[dict]:
    N, d = rows.shape
    Q = qs[0].shape[0]
    params = _params(N, d, Q, k)
    cost = _cost(N, d, Q, k, 4 * d)
    common = dict(suite=SUITE, name="topk", params=params, rotate=qs, **cost)
    out = [ctx.measure(lambda q: torch.topk(q @ rows.T, k, dim=1), impl=BASELINE, **common),
           ctx.measure(chunked_topk(rows, None, "fp32", d, k), impl="torch.chunked[fp32]", baseline=BASELINE,
                       **common)]
    if ctx.device == "cpu":  # faiss-cpu searches host memory; the GPU build is another package
        out.append(ctx.measure(build=lambda: anchors.faiss_flat_ip(rows, k), impl="faiss.IndexFlatIP[fp32]",
                               baseline=BASELINE, **common))
    else:
        out.append(ctx.missing(suite=SUITE, name="topk", impl="faiss.IndexFlatIP[fp32]", params=params,
                               reason="faiss-cpu searches host memory; faiss-gpu is not a dependency"))
    return out


def format_cases(ctx, stored, fmt, qs, k, exact, d) -> list[dict]:
    data, scale = stored["data"], stored["scale"]
    N, Q = data.shape[0], qs[0].shape[0]
    params = _params(N, d, Q, k)
    row_bytes = data.element_size() * data.shape[1] + (4 if scale is not None else 0)
    common = dict(suite=SUITE, name="topk", params=params, rotate=qs, baseline=BASELINE,
                  **_cost(N, d, Q, k, row_bytes))
    out = []
    if fmt != "fp32" and Q < SLOW_Q:
        out.append(ctx.measure(chunked_topk(data, scale, fmt, d, k), impl=f"torch.chunked[{fmt}]", **common))
    if fmt == "int8" and ctx.device == "cpu":
        # faiss trains its own per-dimension ranges from float rows; hand it the dequantized rows.
        out.append(ctx.measure(build=lambda: anchors.faiss_sq8(torch_dequantize(data, scale, fmt, d), k),
                               impl="faiss.IndexScalarQuantizer[int8]", **common))
    try:
        score_topk = fasttda_attr("fasttda.ops", "score_topk")
    except AnchorMissing as exc:
        return out + missing_all(ctx, SUITE, "topk", [f"fasttda.score_topk[{fmt}]"], params, str(exc))
    call = _score_call(score_topk, data, scale, fmt, d, k)
    backends, missing = usable_backends(ctx, SUITE, "topk", params, lambda b: call(qs[0][:1], b),
                                        f"fasttda.score_topk[{fmt}]")
    out += missing
    runs = [(backend, call, "", {}) for backend in backends]
    if fmt in INT_QUERY_FORMATS and "query_precision" in inspect.signature(score_topk).parameters:
        int_call = _score_call(score_topk, data, scale, fmt, d, k, query_precision="int8")
        runs += [(backend, int_call, INT_QUERIES, {"queries": "int8"}) for backend in backends if backend != "reference"]
    for backend, fn, tag, more in runs:
        impl = f"fasttda.score_topk[{fmt}][{backend}]{tag}"
        if backend == "reference" and Q >= SLOW_Q:
            out.append(ctx.missing(suite=SUITE, name="topk", impl=impl, params=params,
                                   reason=f"not timed at Q >= {SLOW_Q} (keeps the suite to minutes)"))
            continue
        found = fn(qs[0], backend)[1]
        extra = {"fmt": fmt, "recall": _recall(found, exact), "quantized_by": stored["by"], **more}
        out.append(ctx.measure(lambda q, b=backend, f=fn: f(q, b), impl=impl, extra=extra, **common))
    return out


def _score_call(score_topk, data, scale, fmt, d, k, **options):
    """Adapt to score_topk's keywords (fmt/dim only where the op takes them)."""
    accepted = inspect.signature(score_topk).parameters
    kwargs = {"k": k, **options}
    if scale is not None:
        kwargs["scales"] = scale
    if "fmt" in accepted:
        kwargs["fmt"] = fmt
    if "dim" in accepted:
        kwargs["dim"] = d
    return lambda q, backend: score_topk(q, data, backend=backend, **kwargs)


def _recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact))
    return hits / exact.numel()


def store_cases(ctx, stored, norms, fmt, queries, k, exact, d, root) -> list[dict]:
    """`fasttda.score` streaming the same rows from an on-disk `FeatureStore` (page cache warm)."""
    N = stored["data"].shape[0]
    impl = f"fasttda.score[FeatureStore {fmt}]"
    try:
        store_cls = fasttda_attr("fasttda.store", "FeatureStore")
        score = fasttda_attr("fasttda", "score")
    except AnchorMissing as exc:
        return missing_all(ctx, SUITE, "topk", [impl], _params(N, d, max(queries), k), str(exc))
    path = root / fmt
    with store_cls.create(path, dim=d, fmt=fmt) as store:
        for lo in range(0, N, CHUNK_ROWS):
            hi = lo + CHUNK_ROWS
            scale = None if stored["scale"] is None else stored["scale"][lo:hi].cpu()
            store.append_quantized(stored["data"][lo:hi].cpu(), scale, norms[lo:hi].cpu())
        store.commit()
    opened = store_cls.open(path)
    out = []
    try:
        row_bytes = stored["data"].element_size() * stored["data"].shape[1] + (4 if stored["scale"] is not None else 0)
        modes = [({}, "")]
        if fmt in INT_QUERY_FORMATS and "query_precision" in inspect.signature(score).parameters:
            modes.append(({"query_precision": "int8"}, INT_QUERIES))
        for Q, qs in queries.items():
            for options, tag in modes:
                found = score(qs[0], opened, k=k, **options)
                indices = found.indices if hasattr(found, "indices") else found[1]
                extra = {"fmt": fmt, "recall": _recall(indices.cpu(), exact[Q].cpu()), "source": "disk (page cache)"}
                out.append(ctx.measure(lambda q, o=options: score(q, opened, k=k, **o), suite=SUITE, name="topk",
                                       impl=impl + tag, params=_params(N, d, Q, k), rotate=qs, baseline=BASELINE,
                                       extra=extra, **_cost(N, d, Q, k, row_bytes)))
    finally:
        opened.close()
        shutil.rmtree(path, ignore_errors=True)
    return out


# issue 16's CPU targets for the C++ backend: (applies to Q, formats, what, op, target)
CPU_GOALS = [
    (lambda q: q <= 8, ("int8", "fp8_e4m3", "int4"), "ratio", ">=", 2.5),
    (lambda q: q <= 8, ("fp16", "bf16"), "ratio", ">=", 1.6),
    (lambda q: q <= 8, ("bf16", "fp16", "int8", "fp8_e4m3", "int4"), "x_floor", "<=", 1.5),
    (lambda q: q == 32, ("int8",), "ratio", ">=", 1.5),
    (lambda q: q >= 256, FORMATS, "ratio", ">=", 1.0),
]


def add_goals(results: list[dict], ctx) -> list[dict]:
    """``extra["goals"]`` on the ``fasttda.score_topk[fmt][cpp]`` rows (float and integer queries):
    each target, its value, met or not.

    ``ratio`` is the torch fp32 baseline's median over this row's (what ``vs base`` shows),
    ``x_floor`` the row's median over its bandwidth floor (see `add_floors`)."""
    if ctx.device != "cpu" or ctx.quick:
        return results
    base = {r["params"]["Q"]: r for r in results if r.get("status") == "ok" and r["impl"] == BASELINE}
    for r in results:
        impl = r["impl"]
        if r.get("status") != "ok" or not impl.startswith("fasttda.score_topk") or not (
                impl.endswith("[cpp]") or impl.endswith("[cpp]" + INT_QUERIES)):
            continue
        mode = " (int8 queries)" if impl.endswith(INT_QUERIES) else ""
        q, fmt, extra = r["params"]["Q"], r["extra"].get("fmt"), r["extra"]
        values = {"x_floor": extra.get("x_floor")}
        if q in base:
            values["ratio"] = base[q]["median_s"] / r["median_s"]
        goals = []
        for applies, formats, what, op, target in CPU_GOALS:
            value = values.get(what)
            if applies(q) and fmt in formats and value is not None:
                label = f"{fmt}{mode} Q={q} {'vs torch fp32' if what == 'ratio' else 'time / bandwidth floor'}"
                goals.append(dict(goal=f"{label} {op} {target}", value=round(value, 4),
                                  met=value >= target if op == ">=" else value <= target))
        extra["goals"] = goals
    return results
