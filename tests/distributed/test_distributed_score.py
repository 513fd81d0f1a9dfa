"""`fasttda.score` under a gloo process group (2 and 3 spawned ranks) equals one process."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fasttda
from fasttda import FeatureStore
from fasttda.distributed.score import choose_split, chunk_starts, row_ranges

from dist_workers import load, spawn

N, D, Q = 97, 24, 5


def _store(path, rows, fmt, ids=None, shard_rows=13):
    store = FeatureStore.create(path, rows.shape[1], fmt, shard_rows=shard_rows)
    store.append(rows, ids=ids)
    store.commit()
    store.close()
    return FeatureStore.open(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    gen = torch.Generator().manual_seed(1234)
    # integer-valued rows and queries: every dot product is exact, so equal rows tie exactly
    base = torch.randint(-4, 5, (N, D), generator=gen).float()
    base[50:60] = base[10]          # ten exact ties across shard and rank boundaries
    base[base.abs().sum(1) == 0, 0] = 1.0
    second = torch.randint(-4, 5, (N, D), generator=gen).float() + 0.5
    ids = [f"ex{i}" for i in range(N)]
    s1 = _store(tmp / "s1", base, "fp32", ids)
    s2 = _store(tmp / "s2", second, "int8", ids)
    queries = torch.randint(-3, 4, (Q, D), generator=gen).float()
    queries[0] = base[10]
    qpaths = []
    for i, q in enumerate((queries, queries.flip(0) + 0.25)):
        np.save(tmp / f"q{i}.npy", q.numpy())
        qpaths.append(str(tmp / f"q{i}.npy"))
    calls = {
        "rows": {"kw": {"k": 15, "chunk_rows": 8, "split": "rows"}},
        "rows_big_k": {"kw": {"k": 500, "chunk_rows": 5, "split": "rows"}},
        "queries": {"kw": {"k": 15, "chunk_rows": 8, "split": "queries"}},
        "auto": {"kw": {"k": 7, "chunk_rows": 8}},
        "dda": {"multi": True, "kw": {"k": 12, "chunk_rows": 8, "split": "rows", "weights": [0.75, -0.5],
                                      "normalize": True}},
    }
    single = {}
    stores = [s1, s2]
    for name, c in calls.items():
        kw = dict(c["kw"], distributed=False)
        kw.pop("split", None)
        q0 = [torch.from_numpy(np.load(p)) for p in qpaths]
        single[name] = fasttda.score(q0 if c.get("multi") else q0[0], stores if c.get("multi") else s1, **kw)
    return tmp, [str(tmp / "s1"), str(tmp / "s2")], qpaths, calls, single


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_score_equals_single_process(setup, world):
    tmp, stores, qpaths, calls, single = setup
    out = tmp / f"out{world}"
    spawn(world, "score", {"out": str(out), "stores": stores, "queries": qpaths, "calls": calls}, tmp)
    for name in calls:
        want = single[name]
        for rank in range(world):
            values, indices, ids, split = load(out, rank, name)
            expected_split = calls[name]["kw"].get("split", split)
            assert split == expected_split
            if split == "rows":   # identical, ties included
                np.testing.assert_array_equal(indices, want.indices.numpy(), err_msg=f"{name} rank {rank}")
                np.testing.assert_array_equal(values, want.values.numpy(), err_msg=f"{name} rank {rank}")
            else:                 # the same rows; integer data keeps every score exact here too
                np.testing.assert_array_equal(indices, want.indices.numpy(), err_msg=f"{name} rank {rank}")
                np.testing.assert_allclose(values, want.values.numpy(), rtol=1e-6, atol=1e-5)
            np.testing.assert_array_equal(ids, np.asarray(want.ids).astype(str))
        msg = (out / "rank0" / "mismatch.txt").read_text()
        assert "disagree" in msg and "every rank must make the same call" in msg


def test_row_ranges_cut_at_chunk_starts(tmp_path):
    rows = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    store = _store(tmp_path / "s", rows, "fp32", shard_rows=12)
    starts = chunk_starts(store, 5)
    assert starts == [0, 5, 10, 12, 17, 22, 24, 29, 34, 36, 41, 46, 48]
    for world in (1, 2, 3, 4, 7, 20):
        ranges = row_ranges(starts, 50, world)
        assert len(ranges) == world and ranges[0][0] == 0 and ranges[-1][1] == 50
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(lo in starts or lo == 50 for lo, _ in ranges)
    assert row_ranges(starts, 50, 2) == [(0, 24), (24, 50)]


def test_choose_split_from_shapes():
    assert choose_split(n_queries=4, n_chunks=100, store_bytes=1 << 34, world=4) == "rows"
    assert choose_split(n_queries=10_000, n_chunks=100, store_bytes=1 << 20, world=4) == "queries"
    assert choose_split(n_queries=10_000, n_chunks=100, store_bytes=1 << 34, world=4) == "rows"
    assert choose_split(n_queries=8, n_chunks=1, store_bytes=1 << 20, world=4) == "queries"
