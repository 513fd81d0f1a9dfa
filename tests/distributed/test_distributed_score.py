"""How the distributed scorer splits the work (the spawned runs are in test_distributed_index.py)."""
from __future__ import annotations

import torch

from fasttda import FeatureStore
from fasttda.distributed.scoring import choose_split, chunk_starts, row_ranges


def test_row_ranges_cut_at_chunk_starts(tmp_path):
    rows = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    store = FeatureStore.create(tmp_path / "s", 4, "fp32", shard_rows=12)
    store.append(rows)
    store.commit()
    store.close()
    store = FeatureStore.open(tmp_path / "s")
    starts = chunk_starts(store, 5)
    assert starts == [0, 5, 10, 12, 17, 22, 24, 29, 34, 36, 41, 46, 48]
    for world in (1, 2, 3, 4, 7, 20):
        ranges = row_ranges(starts, 50, world)
        assert len(ranges) == world and ranges[0][0] == 0 and ranges[-1][1] == 50
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(lo in starts or lo == 50 for lo, _ in ranges)
    assert row_ranges(starts, 50, 2) == [(0, 24), (24, 50)]


def test_choose_split_from_shapes():
    assert choose_split(n_queries=4, store_bytes=1 << 34, world=4) == "rows"
    assert choose_split(n_queries=10_000, store_bytes=1 << 20, world=4) == "queries"
    assert choose_split(n_queries=10_000, store_bytes=1 << 34, world=4) == "rows"
    assert choose_split(n_queries=8, store_bytes=1 << 20, world=4) == "rows"   # too few queries to pay


def test_a_rank_with_no_rows_contributes_nothing(tmp_path):
    import fasttda
    from fasttda.distributed.scoring import _RowView

    rows = torch.randn(9, 4, generator=torch.Generator().manual_seed(2))
    store = FeatureStore.create(tmp_path / "s", 4, "fp32")
    store.append(rows)
    store.commit()
    store.close()
    store = FeatureStore.open(tmp_path / "s")
    empty = fasttda.score(rows[:3], _RowView(store, 9, 9), k=5, distributed=False)
    assert empty.values.shape == (3, 0) and empty.indices.shape == (3, 0)
