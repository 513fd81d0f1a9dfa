"""Suite `store`: writing, reading and verifying N projected rows on disk, per format.

fasttda's `FeatureStore` (quantize + append in batches + commit with fsync and SHA-256
manifest; full dequantized read; `verify` re-hashing every byte; `open`) against the
anchors' storage, reproduced with the same library calls they make:

* ``numpy.memmap[fp16]``: TRAK's and Bergson's layout, one preallocated memmap written
  batch by batch and flushed (no fsync, no checksum, no resume);
* ``numpy.memmap[fp32]``: LogIX/dattri-llm-style float32 chunks;
* ``torch.save[fp32]``: LESS's one `.pt` file per run.

Reads run against the page cache the writes just filled (no cache dropping on a shared
machine): they measure the software path, not the disk. Bytes: the stored bytes. The impl
name carries the format, ``fasttda.FeatureStore[int8]``; fasttda's write and read are compared
with the float16 memmap (the float32 one for fp32).
"""
from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from fasttda.bench.suites._common import AnchorMissing, fasttda_attr, missing_all

SUITE = "store"
FORMATS = ("fp32", "bf16", "int8", "fp8_e4m3", "int4")
BATCH_ROWS = 8192


def config(ctx) -> dict:
    return dict(N=4096, d=128) if ctx.quick else dict(N=262_144, d=1024)


def run(ctx) -> list[dict]:
    cfg = config(ctx)
    rows = torch.randn(cfg["N"], cfg["d"], generator=torch.Generator().manual_seed(800))  # stores take host rows
    root = Path(tempfile.mkdtemp(prefix="fasttda-bench-store-"))
    try:
        out = anchor_cases(ctx, rows, root)
        for fmt in FORMATS:
            out += fasttda_cases(ctx, rows, fmt, root)
        return add_goals(ctx, out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def add_goals(ctx, cases: list[dict]) -> list[dict]:
    """``extra["goals"]`` (issue 16): the int8 store writes and reads (into float32) at least
    as fast as the float16 memmap the anchors write."""
    ok = {(c["name"], c["impl"]): c for c in cases if c.get("status") == "ok"}
    for name in ("write", "read"):
        mine, base = ok.get((name, "fasttda.FeatureStore[int8]")), ok.get((name, "numpy.memmap[fp16]"))
        if mine is None or base is None or ctx.quick:
            continue
        value = base["median_s"] / mine["median_s"]
        mine.setdefault("extra", {})["goals"] = [dict(goal=f"int8 {name} vs numpy.memmap[fp16] >= 1",
                                                      value=round(value, 4), met=value >= 1.0)]
    return cases


class _FreshDirs:
    """A new empty path per call (each write starts from nothing); old ones are removed."""

    def __init__(self, root: Path, stem: str):
        self.root, self.stem, self.count, self.last = root, stem, itertools.count(), None

    def __call__(self) -> Path:
        if self.last is not None:
            shutil.rmtree(self.last, ignore_errors=True)
        self.last = self.root / f"{self.stem}-{next(self.count)}"
        return self.last


def _params(rows) -> dict:
    return dict(N=rows.shape[0], d=rows.shape[1])


def anchor_cases(ctx, rows: torch.Tensor, root: Path) -> list[dict]:
    N, d = rows.shape
    out = []
    for dtype, fmt in ((np.float16, "fp16"), (np.float32, "fp32")):
        nbytes = N * d * np.dtype(dtype).itemsize
        params = _params(rows)
        impl = f"numpy.memmap[{fmt}]"
        fresh = _FreshDirs(root, f"memmap-{fmt}")

        def write_memmap(path, dtype=dtype):
            path.mkdir(parents=True)
            mm = np.lib.format.open_memmap(path / "grads.npy", mode="w+", dtype=dtype, shape=(N, d))
            for lo in range(0, N, BATCH_ROWS):
                mm[lo:lo + BATCH_ROWS] = rows[lo:lo + BATCH_ROWS].numpy().astype(dtype)
            mm.flush()
            del mm

        out.append(ctx.measure(write_memmap, suite=SUITE, name="write", impl=impl, params=params, setup=fresh,
                               bytes_moved=nbytes))
        written = fresh.last
        out.append(ctx.measure(lambda p=written: torch.from_numpy(np.load(p / "grads.npy", mmap_mode="r")
                                                                  .astype(np.float32)),
                               suite=SUITE, name="read", impl=impl, params=params, bytes_moved=nbytes))
    params = _params(rows)
    fresh = _FreshDirs(root, "torch-save")

    def write_pt(path):
        path.mkdir(parents=True)
        torch.save(rows, path / "grads.pt")

    out.append(ctx.measure(write_pt, suite=SUITE, name="write", impl="torch.save[fp32]", params=params, setup=fresh,
                           bytes_moved=4 * N * d))
    written = fresh.last
    out.append(ctx.measure(lambda: torch.load(written / "grads.pt", weights_only=True), suite=SUITE, name="read",
                           impl="torch.save[fp32]", params=params, bytes_moved=4 * N * d))
    return out


def fasttda_cases(ctx, rows: torch.Tensor, fmt: str, root: Path) -> list[dict]:
    params = _params(rows)
    impl = f"fasttda.FeatureStore[{fmt}]"
    try:
        store_cls = fasttda_attr("fasttda.store", "FeatureStore")
        bytes_per_row = fasttda_attr("fasttda.ops.quantize", "bytes_per_row")
    except AnchorMissing as exc:
        return missing_all(ctx, SUITE, "write", [impl], params, str(exc))
    N, d = rows.shape
    nbytes = N * bytes_per_row(fmt, d)
    # Compared with the anchor layout of the same width: float formats vs the float32/16 memmap.
    baseline = "numpy.memmap[fp32]" if fmt == "fp32" else "numpy.memmap[fp16]"
    fresh = _FreshDirs(root, f"fasttda-{fmt}")

    def write(path):
        store = store_cls.create(path, dim=d, fmt=fmt)
        try:
            for lo in range(0, N, BATCH_ROWS):
                store.append(rows[lo:lo + BATCH_ROWS])
            store.commit()
        finally:
            store.close()

    out = [ctx.measure(write, suite=SUITE, name="write", impl=impl, params=params, setup=fresh, bytes_moved=nbytes,
                       baseline=baseline, extra={"stored_bytes": nbytes, "fsync": True, "checksums": "sha256"})]
    written = fresh.last
    if out[0]["status"] != "ok":
        return out
    ro = store_cls.open(written)
    try:
        out.append(ctx.measure(lambda: ro.read(), suite=SUITE, name="read", impl=impl, params=params,
                               bytes_moved=nbytes, baseline=baseline))
        out.append(ctx.measure(lambda: sum(c.data.shape[0] for c in ro.iter_chunks()), suite=SUITE,
                               name="iter_chunks (zero-copy)", impl=impl, params=params))
        out.append(ctx.measure(lambda: ro.verify(), suite=SUITE, name="verify (sha256)", impl=impl, params=params,
                               bytes_moved=nbytes))
    finally:
        ro.close()
    out.append(ctx.measure(lambda: store_cls.open(written).close(), suite=SUITE, name="open", impl=impl,
                           params=params))
    return out
