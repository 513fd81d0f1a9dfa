"""Shared fixtures of the distributed tests: stores and queries with exact ties."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fasttda
from fasttda import FeatureStore

N, D, Q = 97, 24, 5


def _store(path, rows, fmt, ids=None, shard_rows=13):
    store = FeatureStore.create(path, rows.shape[1], fmt, shard_rows=shard_rows)
    store.append(rows, ids=ids)
    store.commit()
    store.close()
    return FeatureStore.open(path)


@pytest.fixture(scope="package")
def score_setup(tmp_path_factory):
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
        "int8_queries": {"store": 1, "kw": {"k": 9, "chunk_rows": 8, "split": "rows", "query_precision": "int8"}},
        "dda": {"multi": True, "kw": {"k": 12, "chunk_rows": 8, "split": "rows", "weights": [0.75, -0.5],
                                      "normalize": True}},
    }
    single = {}
    stores = [s1, s2]
    for name, c in calls.items():
        kw = dict(c["kw"], distributed=False)
        kw.pop("split", None)
        q0 = [torch.from_numpy(np.load(p)) for p in qpaths]
        single[name] = fasttda.score(q0 if c.get("multi") else q0[0], stores if c.get("multi") else
                                     stores[c.get("store", 0)], **kw)
    return tmp, [str(tmp / "s1"), str(tmp / "s2")], qpaths, calls, single
