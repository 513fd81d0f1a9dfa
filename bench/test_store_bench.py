import itertools

import pytest

from bench_helpers import op_or_skip


@pytest.mark.parametrize("fmt", ["fp32", "int8", "int4"])
def test_store_write(benchmark, randn, tmp_path, fmt):
    store_cls = op_or_skip("fasttda.store", "FeatureStore")
    rows = randn(16384, 256)
    count = itertools.count()

    def write():
        with store_cls.create(tmp_path / f"s{next(count)}", dim=256, fmt=fmt) as store:
            for lo in range(0, rows.shape[0], 4096):
                store.append(rows[lo:lo + 4096])
            store.commit()

    benchmark.pedantic(write, rounds=5, iterations=1)


@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_store_read(benchmark, randn, tmp_path, fmt):
    store_cls = op_or_skip("fasttda.store", "FeatureStore")
    with store_cls.create(tmp_path / "s", dim=256, fmt=fmt) as store:
        store.append(randn(16384, 256))
        store.commit()
    opened = store_cls.open(tmp_path / "s")
    out = benchmark(opened.read)
    assert out.shape == (16384, 256)
    opened.close()
