"""fasttda.score on FeatureStores: streaming equals one op call over all rows; ids; bounded memory."""
import gc
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import assert_same_ranking, assert_topk_tie_aware, fp32_dot_bound

import fasttda
from fasttda.ops.quantize import dequantize, quantize
from fasttda.ops.score import score_topk
from fasttda.precondition import diagonal
from fasttda.store import FeatureStore


@dataclass
class FakeChunk:
    start: int
    data: torch.Tensor
    scale: torch.Tensor | None
    norms: torch.Tensor
    fmt: str
    ids: object


def make_store(path, x, fmt, shard_rows=None, ids=None):
    """A committed FeatureStore of rows ``x`` at ``path``, reopened read-only."""
    with FeatureStore.create(path, x.shape[1], fmt, shard_rows=shard_rows) as writer:
        writer.append(x, ids=ids)
        writer.commit()
    return FeatureStore.open(path)


def stored(store):
    """The store's rows as the op takes them: (data, scale, norms, fmt), whole."""
    chunks = list(store.iter_chunks(len(store)))
    scale = None if chunks[0].scale is None else torch.cat([c.scale for c in chunks])
    return torch.cat([c.data for c in chunks]), scale, torch.cat([c.norms for c in chunks]), store.fmt


def one_call(queries, stores, k, **kw):
    multi = isinstance(stores, list)
    parts = [stored(s) for s in stores] if multi else [stored(stores)]
    pick = (lambda i: [p[i] for p in parts]) if multi else (lambda i: parts[0][i])
    return score_topk(queries, pick(0), k=k, scales=pick(1), norms=pick(2), fmt=pick(3), **kw)


def oracle(queries, stores, weights=None, normalize=False):
    """float64 scores Σ_c w_c·⟨q_c, r_c⟩ over the stores' dequantized rows (cosine with the
    stored norms when normalize), and a bound on the float32 error of any summation order."""
    stores = stores if isinstance(stores, list) else [stores]
    queries = queries if isinstance(queries, list) else [queries]
    weights = weights or [1.0] * len(stores)
    total, bound = 0.0, 0.0
    for q, store, w in zip(queries, stores, weights):
        data, scale, norms, fmt = stored(store)
        r = dequantize(data, scale, fmt, dim=q.shape[1]).double()
        dots, err = q.double() @ r.T, fp32_dot_bound(q, r, extra=8)  # dequantize, norms, weight, sum over stores
        if normalize:
            inv = 1 / (q.double().norm(dim=1, keepdim=True) * norms.double())
            dots, err = dots * inv, err * inv
        total, bound = total + w * dots, bound + abs(w) * err
    return total, bound


@pytest.mark.parametrize("fmt", ["fp32", "int8", "int4"])
def test_streaming_equals_one_op_call(gen, fmt, tmp_path):
    store = make_store(tmp_path / "s", torch.randn(500, 33, generator=gen), fmt, shard_rows=170)
    q = torch.randn(4, 33, generator=gen)
    result = fasttda.score(q, store, k=30, chunk_rows=64)
    scores, bound = oracle(q, store)
    assert_topk_tie_aware(result.values, result.indices, scores, 30, bound)
    assert_same_ranking((result.values, result.indices), one_call(q, store, 30), bound)
    assert np.array_equal(result.ids, result.indices.numpy())  # no ids given: running row indices


def test_multi_store_with_misaligned_shards_and_string_ids(gen, tmp_path):
    ids = [f"doc-{i}" for i in range(300)]
    layout = (("int8", 100), ("bf16", 70), ("fp8_e4m3", 128))  # shard ends differ between stores
    stores = [make_store(tmp_path / f, torch.randn(300, 16, generator=gen) * (c + 1), f, rows, ids)
              for c, (f, rows) in enumerate(layout)]
    qs = [torch.randn(3, 16, generator=gen) for _ in stores]
    kw = dict(weights=[0.5, 0.5, -1.0], normalize=True)
    result = fasttda.score(qs, stores, k=12, chunk_rows=50, **kw)
    scores, bound = oracle(qs, stores, **kw)
    assert_topk_tie_aware(result.values, result.indices, scores, 12, bound)
    assert_same_ranking((result.values, result.indices), one_call(qs, stores, 12, **kw), bound)
    assert result.ids.tolist() == [[ids[i] for i in row] for row in result.indices.tolist()]


def test_integer_ids_ties_and_k_beyond_n(gen, tmp_path):
    x = torch.randint(-2, 3, (90, 8), generator=gen).float()
    x[45:] = x[:45]  # every row tied with another one 45 rows later
    store = make_store(tmp_path / "s", x, "fp32", 32, ids=list(range(1000, 1090)))
    q = torch.randint(-2, 3, (2, 8), generator=gen).float()
    result = fasttda.score(q, store, k=500, chunk_rows=20)
    ref_values, ref_indices = torch.sort(q.double() @ x.double().T, dim=1, descending=True, stable=True)
    assert torch.equal(result.values.double(), ref_values) and torch.equal(result.indices, ref_indices)
    assert np.array_equal(result.ids, ref_indices.numpy() + 1000)


def test_preconditioner_applies_to_queries(gen, tmp_path):
    x = torch.randn(120, 10, generator=gen)
    store = make_store(tmp_path / "s", x, "fp32")
    q = torch.randn(3, 10, generator=gen)
    h = torch.rand(10, generator=gen) + 0.5
    result = fasttda.score(q, store, k=5, preconditioner=diagonal(h))
    scores, bound = oracle(q * h, store)
    bound = bound + fp32_dot_bound(q * h, x, extra=0)  # q·h rounded to float32 once per entry (any pairing)
    assert_topk_tie_aware(result.values, result.indices, q.double() * h.double() @ x.double().T, 5, bound)
    full = torch.diag(h.double())
    by_matrix = fasttda.score(q, store, k=5, preconditioner=full)
    assert_topk_tie_aware(by_matrix.values, by_matrix.indices, q.double() * h.double() @ x.double().T, 5, bound)


def test_bad_arguments(gen, tmp_path):
    store = make_store(tmp_path / "a", torch.randn(10, 6, generator=gen), "fp32")
    q = torch.randn(2, 6, generator=gen)
    with pytest.raises(ValueError, match=r"must be \[Q, 6\]"):
        fasttda.score(torch.randn(2, 5), store, k=3)
    with pytest.raises(TypeError, match="both be single or both be lists"):
        fasttda.score([q], store, k=3)
    with pytest.raises(ValueError, match="row count differs"):
        fasttda.score([q, q], [store, make_store(tmp_path / "b", torch.randn(11, 6), "fp32")], k=3)
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
    from fasttda import topk as topk_mod

    monkeypatch.setattr(topk_mod, "SCORE_BUFFER_BYTES", 1 << 20)
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
