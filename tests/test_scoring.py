"""fasttda.score: streaming over stores equals one op call over all rows; ids; bounded memory."""
import gc
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import fasttda
from fasttda.ops.quantize import quantize
from fasttda.ops.score import score_topk
from fasttda.precondition import diagonal


@dataclass
class FakeChunk:
    start: int
    data: torch.Tensor
    scale: torch.Tensor | None
    norms: torch.Tensor
    fmt: str
    ids: object


class FakeStore:
    """The agreed iter_chunks contract, in memory, with shards that chunks never cross."""

    def __init__(self, x, fmt, shard_rows=None, ids=None):
        self.fmt, self.dim = fmt, x.shape[1]
        self.data, self.scale = quantize(x, fmt)
        self.norms = x.norm(dim=1)
        self.shard_rows = shard_rows or x.shape[0]
        self.row_ids = ids

    def __len__(self):
        return self.data.shape[0]

    def iter_chunks(self, rows, start=0, stop=None):
        stop = len(self) if stop is None else stop
        lo = start
        while lo < stop:
            hi = min(lo + rows, stop, (lo // self.shard_rows + 1) * self.shard_rows)
            ids = None if self.row_ids is None else self.row_ids[lo:hi]
            scale = None if self.scale is None else self.scale[lo:hi]
            yield FakeChunk(lo, self.data[lo:hi], scale, self.norms[lo:hi], self.fmt, ids)
            lo = hi


def one_call(queries, stores, k, **kw):
    multi = isinstance(stores, list)
    pick = (lambda f: [f(s) for s in stores]) if multi else (lambda f: f(stores))
    return score_topk(queries, pick(lambda s: s.data), k=k, scales=pick(lambda s: s.scale),
                      norms=pick(lambda s: s.norms), fmt=pick(lambda s: s.fmt), **kw)


@pytest.mark.parametrize("fmt", ["fp32", "int8", "int4"])
def test_streaming_equals_one_op_call(gen, fmt):
    store = FakeStore(torch.randn(500, 33, generator=gen), fmt, shard_rows=170)
    q = torch.randn(4, 33, generator=gen)
    result = fasttda.score(q, store, k=30, chunk_rows=64)
    values, indices = one_call(q, store, 30)
    assert torch.equal(result.values, values) and torch.equal(result.indices, indices)
    assert np.array_equal(result.ids, indices.numpy())  # no ids: row positions


def test_multi_store_with_misaligned_shards_and_string_ids(gen):
    ids = [f"doc-{i}" for i in range(300)]
    xs = [torch.randn(300, d, generator=gen) for d in (16, 24, 16)]
    stores = [FakeStore(xs[0], "int8", 100, ids), FakeStore(xs[1], "bf16", 70, ids), FakeStore(xs[2], "fp8_e4m3", 128, ids)]
    qs = [torch.randn(3, s.dim, generator=gen) for s in stores]
    kw = dict(weights=[0.5, 0.5, -1.0], normalize=True)
    result = fasttda.score(qs, stores, k=12, chunk_rows=50, **kw)
    values, indices = one_call(qs, stores, 12, **kw)
    assert torch.equal(result.values, values) and torch.equal(result.indices, indices)
    assert result.ids.tolist() == [[ids[i] for i in row] for row in indices.tolist()]


def test_integer_ids_ties_and_k_beyond_n(gen):
    x = torch.randint(-2, 3, (90, 8), generator=gen).float()
    x[45:] = x[:45]  # every row tied with another one 45 rows later
    store = FakeStore(x, "fp32", 32, ids=np.arange(1000, 1090))
    q = torch.randint(-2, 3, (2, 8), generator=gen).float()
    result = fasttda.score(q, store, k=500, chunk_rows=20)
    ref_values, ref_indices = torch.sort(q.double() @ x.double().T, dim=1, descending=True, stable=True)
    assert torch.equal(result.values.double(), ref_values) and torch.equal(result.indices, ref_indices)
    assert np.array_equal(result.ids, ref_indices.numpy() + 1000)


def test_preconditioner_applies_to_queries(gen):
    x = torch.randn(120, 10, generator=gen)
    store = FakeStore(x, "fp32")
    q = torch.randn(3, 10, generator=gen)
    h = torch.rand(10, generator=gen) + 0.5
    result = fasttda.score(q, store, k=5, preconditioner=diagonal(h))
    values, indices = score_topk(q * h, x, k=5)
    torch.testing.assert_close(result.values, values)
    assert torch.equal(result.indices, indices)
    full = torch.diag(h.double())
    assert torch.equal(fasttda.score(q, store, k=5, preconditioner=full).indices, indices)


def test_bad_arguments(gen):
    store = FakeStore(torch.randn(10, 6, generator=gen), "fp32")
    q = torch.randn(2, 6, generator=gen)
    with pytest.raises(ValueError, match=r"must be \[Q, 6\]"):
        fasttda.score(torch.randn(2, 5), store, k=3)
    with pytest.raises(TypeError, match="both be single or both be lists"):
        fasttda.score([q], store, k=3)
    with pytest.raises(ValueError, match="same rows"):
        fasttda.score([q, q], [store, FakeStore(torch.randn(11, 6), "fp32")], k=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fasttda.score(q, store, k=0)
    with pytest.raises(ValueError, match="chunk_rows"):
        fasttda.score(q, store, k=3, chunk_rows=0)


class GeneratedStore:
    """A store of ``n`` int8 rows made chunk by chunk on demand: never all in memory."""

    fmt = "int8"

    def __init__(self, n, dim, seed, chunk):
        self.n, self.dim = n, dim
        g = torch.Generator().manual_seed(seed)
        self.base = torch.randint(-127, 128, (chunk, dim), generator=g, dtype=torch.int8)
        self.base_scale = torch.rand(chunk, generator=g) + 0.5

    def __len__(self):
        return self.n

    def iter_chunks(self, rows, start=0, stop=None):
        stop = self.n if stop is None else stop
        for lo in range(start, stop, rows):
            hi = min(stop, lo + rows)
            shift = (lo // rows) % self.base.shape[0]  # a fresh chunk each time, without an RNG pass
            data = self.base[:hi - lo].roll(shift, dims=0)
            scale = self.base_scale[:hi - lo].roll(shift, dims=0) * (1 + lo / self.n)
            yield FakeChunk(lo, data, scale, scale * 700.0, "int8", None)


def peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_is_bounded_by_chunk_not_store(gen, monkeypatch):
    """A 256 MiB store scored in 1 MiB chunks: peak RSS grows by far less than the store."""
    from fasttda.ops import score as score_mod

    monkeypatch.setattr(score_mod, "SCORE_BUFFER_BYTES", 1 << 20)
    n, dim, chunk = 262_144, 1024, 1024
    store = GeneratedStore(n, dim, int(torch.randint(0, 2**30, (1,), generator=gen)), chunk)
    q = torch.randn(8, dim, generator=gen)
    fasttda.score(q, GeneratedStore(4 * chunk, dim, 0, chunk), k=50, chunk_rows=chunk)  # warm up allocator
    gc.collect()
    if not peak_rss_reset():
        pytest.skip("cannot reset peak RSS here")
    before = rss_kib("VmRSS")
    result = fasttda.score(q, store, k=50, chunk_rows=chunk, backend="reference")
    grown_mib = (rss_kib("VmHWM") - before) / 1024
    store_mib = n * dim / 2**20
    assert result.values.shape == (8, 50) and result.indices.max() >= n // 2
    print(f"peak RSS growth {grown_mib:.1f} MiB for a {store_mib:.0f} MiB store")
    assert grown_mib < 48, f"peak RSS grew {grown_mib:.0f} MiB scoring a {store_mib:.0f} MiB store in 1 MiB chunks"


def test_real_feature_stores(gen, tmp_path):
    """Two committed FeatureStores on disk (shards smaller than a chunk, string ids)."""
    store_mod = pytest.importorskip("fasttda.store")
    if not hasattr(store_mod, "FeatureStore"):
        pytest.skip("fasttda.store.FeatureStore has not landed")
    ids = [f"ex{i}" for i in range(250)]
    xs = [torch.randn(250, 20, generator=gen), torch.randn(250, 20, generator=gen)]
    for name, x, fmt in (("a", xs[0], "int8"), ("b", xs[1], "int4")):
        with store_mod.FeatureStore.create(tmp_path / name, 20, fmt, shard_rows=90) as writer:
            writer.append(x, ids=ids)
            writer.commit()
    stores = [store_mod.FeatureStore.open(tmp_path / n) for n in ("a", "b")]
    qs = [torch.randn(3, 20, generator=gen) for _ in stores]
    kw = dict(weights=[1.0, -0.5], normalize=True)
    result = fasttda.score(qs, stores, k=15, chunk_rows=64, **kw)
    parts = [list(s.iter_chunks(1000)) for s in stores]
    data = [torch.cat([c.data for c in p]) for p in parts]
    values, indices = score_topk(qs, data, k=15, scales=[torch.cat([c.scale for c in p]) for p in parts],
                                 norms=[torch.cat([c.norms for c in p]) for p in parts], fmt=["int8", "int4"], **kw)
    assert torch.equal(result.values, values) and torch.equal(result.indices, indices)
    assert result.ids.tolist() == [[ids[i] for i in row] for row in indices.tolist()]
