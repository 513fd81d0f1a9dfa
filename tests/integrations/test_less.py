"""LESS shards into a FeatureStore: order, resume, and refusing pickled objects."""
import pytest
import torch

from fasttda.integrations.less import import_less_grads, less_shards


class NotATensor:
    pass


def write_less_dir(root, gen, sizes=(5, 3, 7), dim=33):
    root.mkdir()
    rows = []
    for n, size in zip((2, 10, 1), sizes):  # numeric, not lexical, order: 1, 2, 10
        t = torch.randn(size, dim, generator=gen)
        torch.save(t, root / f"grads-{n}.pt")
        rows.append((n, t))
    return torch.cat([t for _, t in sorted(rows, key=lambda p: p[0])])


def test_import_keeps_numeric_shard_order_and_values(tmp_path, gen):
    want = write_less_dir(tmp_path / "dim33", gen)
    assert [p.name for p in less_shards(tmp_path / "dim33")] == ["grads-1.pt", "grads-2.pt", "grads-10.pt"]
    store = import_less_grads(tmp_path / "dim33", tmp_path / "store", fmt="fp32")
    assert len(store) == want.shape[0]
    torch.testing.assert_close(store.read(), want, rtol=0, atol=0)


def test_import_resumes_without_duplicates(tmp_path, gen):
    want = write_less_dir(tmp_path / "dim33", gen)
    import_less_grads(tmp_path / "dim33" / "grads-1.pt", tmp_path / "store", fmt="fp32")  # first shard only
    store = import_less_grads(tmp_path / "dim33", tmp_path / "store", fmt="fp32")
    torch.testing.assert_close(store.read(), want, rtol=0, atol=0)


def test_pickled_objects_are_refused(tmp_path):
    (tmp_path / "d").mkdir()
    torch.save({"payload": NotATensor()}, tmp_path / "d" / "grads-1.pt")
    with pytest.raises(ValueError, match="refused"):
        import_less_grads(tmp_path / "d", tmp_path / "store")
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_missing_and_malformed_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="path="):
        less_shards(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    torch.save(torch.arange(6), tmp_path / "d" / "grads-0.pt")
    with pytest.raises(ValueError, match="2-D floating"):
        import_less_grads(tmp_path / "d", tmp_path / "store")
