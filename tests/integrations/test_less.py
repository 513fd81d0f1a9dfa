"""LESS shards into a FeatureStore: order, resume, and refusing pickled objects."""
import json

import pytest
import torch

from fasttda import FeatureStore
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


def test_a_damaged_file_is_named_and_the_record_keeps_what_was_read(tmp_path, gen):
    write_less_dir(tmp_path / "dim33", gen)
    second = tmp_path / "dim33" / "grads-2.pt"
    good = second.read_bytes()
    second.write_bytes(good[: len(good) // 2])  # the import stops at a damaged second file
    with pytest.raises(ValueError, match="grads-2.pt: not a readable torch file"):
        import_less_grads(tmp_path / "dim33", tmp_path / "store", fmt="fp32")
    second.write_bytes(good)
    with pytest.raises(ValueError, match="other LESS files.*the same name with other contents"):
        import_less_grads(tmp_path / "dim33", tmp_path / "store", fmt="fp32")  # the record still names the damage


def test_import_resumes_without_duplicates_only_from_the_same_files(tmp_path, gen):
    want = write_less_dir(tmp_path / "dim33", gen)
    store_path = tmp_path / "store"
    import_less_grads(tmp_path / "dim33", store_path, fmt="fp32")
    # an interruption after the first file: a store holding its first commit only
    m = json.loads((store_path / "manifest.json").read_text())
    assert [f["file"] for f in m["meta"]["files"]] == ["grads-1.pt", "grads-2.pt", "grads-10.pt"]
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["meta"]["files"])
    partial = tmp_path / "partial"
    with FeatureStore.create(partial, 33, "fp32", meta=m["meta"]) as s:
        s.append(want[:5], ids=list(range(5)))
    store = import_less_grads(tmp_path / "dim33", partial, fmt="fp32")
    torch.testing.assert_close(store.read(), want, rtol=0, atol=0)
    assert store.ids().tolist() == list(range(want.shape[0]))
    # other sources: refused, not skipped by row count
    other = tmp_path / "other"
    write_less_dir(other, gen)
    with pytest.raises(ValueError, match="refusing to resume"):
        import_less_grads(other, partial, fmt="fp32")
    with pytest.raises(ValueError, match="refusing to resume"):
        import_less_grads(tmp_path / "dim33" / "grads-1.pt", partial, fmt="fp32")
    assert len(FeatureStore.open(partial, verify="full")) == want.shape[0]


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
