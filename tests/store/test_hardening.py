"""Issue 11: dtypes, crafted stores (paths, links, schema) and ids, each a regression test."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from fasttda import FeatureStore
from fasttda.ops.quantize import dequantize, quantize
from fasttda.store import CorruptStoreError, StoreError


def rows(gen, n, dim):
    return torch.randn(n, dim, generator=gen, dtype=torch.float64) * 3


def _store(path, gen, n=10, dim=4, shard_rows=4, ids=True):
    x = rows(gen, n, dim).float()
    with FeatureStore.create(path, dim, "fp32", shard_rows=shard_rows) as s:
        s.append(x, ids=list(range(100, 100 + n)) if ids else None)
    return x


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, m):
    (path / "manifest.json").write_text(json.dumps(m))


def _snapshot(root):
    """Every file under ``root`` with its bytes (links as their target text)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            out[p] = ("link", os.readlink(p)) if os.path.islink(p) else open(p, "rb").read()
    return out


# -- case 1: float64, float16, bfloat16 from torch and numpy -----------------------------------------------
def _as(x64, dtype, source):
    if source == "torch":
        return x64.to(dtype)
    if dtype == torch.bfloat16:
        ml_dtypes = pytest.importorskip("ml_dtypes")  # in [dev]: numpy's bfloat16 comes from it
        return x64.numpy().astype(ml_dtypes.bfloat16)
    return x64.numpy().astype({torch.float64: np.float64, torch.float16: np.float16, torch.float32: np.float32}[dtype])


@pytest.mark.parametrize("source", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_append_float_dtypes(tmp_path, gen, source, dtype, fmt):
    x64 = rows(gen, 7, 5)
    x = _as(x64, dtype, source)
    exact = x64.to(dtype).to(torch.float32)  # the values as given, in float32
    with FeatureStore.create(tmp_path / "s", 5, fmt) as s:
        s.append(x)
    r = FeatureStore.open(tmp_path / "s", verify="full")
    data, scale = quantize(exact, fmt, backend="reference")
    assert torch.equal(r.read(), dequantize(data, scale, fmt, dim=5, backend="reference"))
    want = torch.linalg.vector_norm(x64.to(dtype).double(), dim=1)
    torch.testing.assert_close(r.norms().double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("source", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_non_finite_rows_named_by_id_for_every_dtype(tmp_path, gen, source, dtype):
    x64 = rows(gen, 6, 3)
    x64[1, 2], x64[4, 0] = float("nan"), float("-inf")
    store = FeatureStore.create(tmp_path / "s", 3, "fp16")
    with pytest.raises(ValueError, match=r"in 2 row\(s\).*Offending ids: \['b', 'e'\]"):
        store.append(_as(x64, dtype, source), ids=list("abcdef"))
    assert store.num_pending == 0 and store.id_kind is None


def test_float64_beyond_float32_is_refused(tmp_path, gen):
    x = rows(gen, 3, 4)
    x[2, 1] = 1e39  # finite in float64, inf in float32
    store = FeatureStore.create(tmp_path / "s", 4, "fp32")
    with pytest.raises(ValueError, match=r"Offending ids: \[2\]"):
        store.append(x.numpy())
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        store.append(np.ones((2, 4), dtype=np.int64))


# -- case 2: nothing outside the store, no links -------------------------------------------------------------
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_manifest_file_names_outside_the_store_are_refused(tmp_path, gen, where):
    path = tmp_path / "deep" / "s"
    _store(path, gen, n=4, ids=False)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(64))
    m = _manifest(path)
    meta = m["shards"][0]["files"]["data"]
    meta["file"] = "../../../secret.bin" if where == "relative" else str(secret)
    meta["sha256"] = hashlib.sha256(secret.read_bytes()).hexdigest()
    _write_manifest(path, m)
    for opener in (lambda: FeatureStore.open(path), lambda: FeatureStore.open(path, verify="full"),
                   lambda: FeatureStore.open(path, verify="none"), lambda: FeatureStore.open(path, mode="append")):
        with pytest.raises(CorruptStoreError, match="shard-000000.data names file"):
            opener()


def test_symlinked_shard_file_is_refused_and_its_target_untouched(tmp_path, gen):
    path = tmp_path / "s"
    _store(path, gen, n=6, ids=False)  # shard 1 holds 2 of 4 rows: the one a writer resumes
    outside = tmp_path / "outside.data"
    victim = path / "shards" / "shard-000001.data"
    outside.write_bytes(victim.read_bytes())  # the same bytes: its hash matches the manifest
    victim.unlink()
    victim.symlink_to(outside)
    before = outside.read_bytes()
    for opener in (lambda: FeatureStore.open(path), lambda: FeatureStore.open(path, verify="full"),
                   lambda: FeatureStore.open(path, mode="append")):
        with pytest.raises(CorruptStoreError, match="shard-000001.data is a symlink"):
            opener()
    r = FeatureStore.open(path, verify="none")
    with pytest.raises(CorruptStoreError, match="symlink"):
        r.read()
    with pytest.raises(CorruptStoreError, match="symlink"):
        r.verify()
    assert outside.read_bytes() == before and outside.stat().st_size == len(before)


def test_the_reported_attack_an_empty_shard_entry_over_a_link(tmp_path, gen):
    """Issue 11's repro: a link at shards/shard-000002.data to an outside file plus a manifest entry
    for an empty shard-000002 made open(mode="append") truncate that file and write rows into it."""
    path = tmp_path / "s"
    x = _store(path, gen, n=8, ids=False)
    outside = tmp_path / "victim.bin"
    outside.write_bytes(b"do not truncate me")
    m = _manifest(path)
    empty = hashlib.sha256(b"").hexdigest()
    m["shards"].append({"name": "shard-000002", "rows": 0, "files": {
        r: {"file": f"shard-000002.{r}", "bytes": 0, "sha256": empty} for r in ("data", "norms")}})
    _write_manifest(path, m)
    (path / "shards" / "shard-000002.data").symlink_to(outside)
    (path / "shards" / "shard-000002.norms").write_bytes(b"")
    with pytest.raises(CorruptStoreError, match="shard-000002 'rows' must be an int in \\[1"):
        FeatureStore.open(path, mode="append")
    assert outside.read_bytes() == b"do not truncate me"
    m["shards"].pop()
    _write_manifest(path, m)
    with FeatureStore.open(path, mode="append") as s:  # repaired: the link at an uncommitted name is dropped
        s.append(x[:2])
    assert outside.read_bytes() == b"do not truncate me"
    assert torch.equal(FeatureStore.open(path, verify="full").read(), torch.cat([x, x[:2]]))


def test_links_at_uncommitted_names_are_removed_not_followed(tmp_path, gen):
    path = tmp_path / "s"
    x = _store(path, gen, n=8, ids=False)  # two full shards: the next append creates shard-000002
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious" * 8)
    for role in ("data", "norms"):
        (path / "shards" / f"shard-000002.{role}").symlink_to(outside)
    (path / "shards" / "shard-000003.data").symlink_to(tmp_path)  # a link to a directory too
    with FeatureStore.open(path, mode="append") as s:
        y = rows(gen, 3, 4).float()
        s.append(y)
    assert outside.read_bytes() == b"precious" * 8
    r = FeatureStore.open(path, verify="full")
    assert torch.equal(r.read(), torch.cat([x, y]))
    assert not any(p.is_symlink() for p in (path / "shards").iterdir())


def test_create_never_follows_a_shards_symlink(tmp_path, gen):
    other = tmp_path / "other"
    x = _store(other, gen, n=6, ids=False)
    before = _snapshot(other)
    new = tmp_path / "new"
    new.mkdir()
    (new / "shards").symlink_to(other / "shards")
    with pytest.raises(StoreError, match="shards is a symlink"):
        FeatureStore.create(new, 4, "fp32")
    assert _snapshot(other) == before
    assert torch.equal(FeatureStore.open(other, verify="full").read(), x)


def test_shards_directory_symlink_and_lock_symlink_are_refused(tmp_path, gen):
    path = tmp_path / "s"
    _store(path, gen, n=5, ids=False)
    elsewhere = tmp_path / "elsewhere"
    (path / "shards").rename(elsewhere)
    (path / "shards").symlink_to(elsewhere)
    before = _snapshot(elsewhere)
    for opener in (lambda: FeatureStore.open(path), lambda: FeatureStore.open(path, mode="append")):
        with pytest.raises(CorruptStoreError, match="shards is a symlink"):
            opener()
    assert _snapshot(elsewhere) == before
    (path / "shards").unlink()
    elsewhere.rename(path / "shards")
    target = tmp_path / "lock-target"
    target.write_bytes(b"keep me")
    (path / "writer.lock").unlink(missing_ok=True)
    (path / "writer.lock").symlink_to(target)
    with pytest.raises(CorruptStoreError, match="writer.lock"):
        FeatureStore.open(path, mode="append")
    assert target.read_bytes() == b"keep me"


def test_a_fifo_in_the_store_is_refused_without_hanging(tmp_path, gen):
    path = tmp_path / "s"
    _store(path, gen, n=3, ids=False)
    victim = path / "shards" / "shard-000000.norms"
    victim.unlink()
    os.mkfifo(victim)
    for opener in (lambda: FeatureStore.open(path, verify="full"), lambda: FeatureStore.open(path, mode="append")):
        with pytest.raises(CorruptStoreError, match="not a regular file"):
            opener()
    os.unlink(path / "manifest.json")
    os.mkfifo(path / "manifest.json")
    with pytest.raises(CorruptStoreError, match="manifest.json is not a regular file"):
        FeatureStore.open(path)


# -- case 4: ids are checked at append ----------------------------------------------------------------------------
@pytest.mark.parametrize("ids, error", [
    (np.array([[5, 6], [7, 8]]), "1-D"),
    ([[5, 6], [7, 8]], "1-D"),
    ([1, "a"], "not a mix of"),
    ([True, False], "not a mix of|all ints or all strings"),
    (np.array([1.5, 2.5]), "all ints or all strings"),
])
def test_bad_ids_are_refused_at_append_and_the_store_stays_usable(tmp_path, gen, ids, error):
    store = FeatureStore.create(tmp_path / "s", 3, "fp32")
    x = rows(gen, 2, 3).float()
    with pytest.raises((ValueError, TypeError), match=error):
        store.append(x, ids=ids)
    assert store.id_kind is None and store.num_pending == 0
    store.append(x, ids=[5, 6])
    store.commit()
    store.close()
    r = FeatureStore.open(tmp_path / "s", verify="full")
    assert r.ids().tolist() == [5, 6] and torch.equal(r.read(), x)


def test_a_failed_first_append_leaves_no_id_kind(tmp_path, gen):
    store = FeatureStore.create(tmp_path / "s", 3, "fp32")
    with pytest.raises(ValueError, match="lone surrogate"):
        store.append(rows(gen, 2, 3), ids=["ok", "bad\udc80"])
    assert store.id_kind is None
    store.append(rows(gen, 2, 3))  # running row indices are still allowed
    store.commit()
    assert store.id_kind == "index" and len(store) == 2


# -- case 6: the manifest's schema --------------------------------------------------------------------------------
def _mutations():
    def shard_name_differs(m):
        m["shards"][0]["name"] = "shard-000005"

    def duplicated_shard(m):
        m["shards"] = [m["shards"][0], m["shards"][0], m["shards"][1]]
        m["rows"] = sum(s["rows"] for s in m["shards"])

    def negative_rows(m):
        m["rows"] = -1

    def bool_rows(m):
        m["shards"][1]["rows"] = True

    def missing_key(m):
        del m["shard_rows"]

    def missing_file_key(m):
        del m["shards"][0]["files"]["data"]["bytes"]

    def deep_meta(m):
        deep = {}
        for _ in range(200):
            deep = {"a": deep}
        m["meta"] = deep

    def huge_dim(m):
        m["dim"] = 10 ** 30

    def float_rows(m):
        m["rows"] = 8.0

    def bad_hash(m):
        m["shards"][0]["files"]["data"]["sha256"] = "../x"

    def non_canonical_name(m):
        m["shards"][0]["name"] = "shard-0"

    return [shard_name_differs, duplicated_shard, negative_rows, bool_rows, missing_key, missing_file_key,
            deep_meta, huge_dim, float_rows, bad_hash, non_canonical_name]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_manifest_schema_refuses_before_use_and_deletes_nothing(tmp_path, gen, mutate):
    path = tmp_path / "s"
    _store(path, gen, n=6, shard_rows=4, ids=False)
    m = _manifest(path)
    mutate(m)
    _write_manifest(path, m)
    files = _snapshot(path / "shards")
    for opener in (lambda: FeatureStore.open(path), lambda: FeatureStore.open(path, verify="none"),
                   lambda: FeatureStore.open(path, mode="append")):
        with pytest.raises(CorruptStoreError, match="manifest.json"):
            opener()
    assert _snapshot(path / "shards") == files


def test_very_deep_json_and_infinity_are_corrupt_store_errors(tmp_path, gen):
    path = tmp_path / "s"
    _store(path, gen, n=2, ids=False)
    (path / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CorruptStoreError, match="nested too deeply|not a fasttda"):
        FeatureStore.open(path)
    (path / "manifest.json").write_text('{"rows": Infinity}')
    with pytest.raises(CorruptStoreError, match="not valid JSON"):
        FeatureStore.open(path)
    (path / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CorruptStoreError, match="not valid JSON"):
        FeatureStore.open(path)


def test_only_the_stores_own_uncommitted_names_are_deleted(tmp_path, gen):
    path = tmp_path / "s"
    _store(path, gen, n=6, shard_rows=4, ids=False)
    shards = path / "shards"
    keep = ["shard-1.data", "shard-0000002.data", "shard-000002.pickle", "notes.txt", "shard-000001.ids"]
    for name in keep:
        (shards / name).write_bytes(b"x")
    (shards / "shard-000002.data").write_bytes(b"a crashed writer's rows")
    FeatureStore.open(path, mode="append").close()
    names = {p.name for p in shards.iterdir()}
    assert set(keep) <= names and "shard-000002.data" not in names
    assert len(FeatureStore.open(path, verify="full")) == 6
