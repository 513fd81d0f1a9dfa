"""FeatureStore: round trips per format, the chunk contract, resume, guards, corruption."""
import json
import os

import numpy as np
import pytest
import torch

from fasttda import FeatureStore
from fasttda.ops.quantize import FORMATS, dequantize, quantize
from fasttda.store import (CorruptStoreError, IncompatibleStoresError, StoreError, StoreLockedError,
                           check_compatible, model_fingerprint)

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8,
                "fp8_e4m3": torch.float8_e4m3fn, "int4": torch.uint8}


def projection_spec(kind, seed, in_dim, out_dim, **extra):
    """A manifest spec as the pipeline writes one: the projection's fields plus seed and width."""
    from fasttda.capture import Dense

    return {**Dense(out_dim, kind=kind).to_dict(), "seed": seed, "in_dim": in_dim, "out_dim": out_dim, **extra}


def rows(gen, n, dim):
    return torch.randn(n, dim, generator=gen) * torch.rand(n, 1, generator=gen).add(0.1) * 3


def roundtrip(x, fmt):
    data, scale = quantize(x, fmt, backend="reference")
    return dequantize(data, scale, fmt, dim=x.shape[1], backend="reference")


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_across_shards_and_commits(tmp_path, gen, fmt):
    dim = 13  # odd: exercises int4 padding
    x = rows(gen, 41, dim)
    with FeatureStore.create(tmp_path / "s", dim, fmt, meta={"run": "t"}, shard_rows=8) as store:
        store.append(x[:5])
        store.commit()
        assert len(store) == 5
        store.append(x[5:30])
        assert len(store) == 5 and store.num_pending == 25
        store.commit()
        store.append(x[30:])
    r = FeatureStore.open(tmp_path / "s", verify="full")
    assert len(r) == 41 and r.dim == dim and r.fmt == fmt and r.meta == {"run": "t"}
    assert torch.equal(r.read(), roundtrip(x, fmt))
    assert torch.equal(r.read(7, 19), roundtrip(x, fmt)[7:19])
    torch.testing.assert_close(r.norms(), torch.linalg.vector_norm(x.double(), dim=1).float(), rtol=1e-6, atol=0)
    assert r.ids().tolist() == list(range(41)) and r.id_kind == "index"
    assert r.verify()["rows"] == 41 and len(r.manifest["shards"]) == 6


@pytest.mark.parametrize("fmt", ["bf16", "int8", "fp8_e4m3", "int4"])
def test_iter_chunks_contract(tmp_path, gen, fmt):
    dim = 10
    x = rows(gen, 23, dim)
    ids = [f"doc/{i}" for i in range(23)]
    with FeatureStore.create(tmp_path / "s", dim, fmt, shard_rows=9) as store:
        store.append(x, ids=ids)
    r = FeatureStore.open(tmp_path / "s")
    chunks = list(r.iter_chunks(4))
    assert [(c.start, len(c)) for c in chunks] == [(0, 4), (4, 4), (8, 1), (9, 4), (13, 4), (17, 1), (18, 4), (22, 1)]
    for c in chunks:
        assert c.data.dtype == TORCH_DTYPES[fmt] and c.fmt == fmt
        assert c.norms.dtype == torch.float32 and c.norms.shape == (len(c),)
        assert c.scale is None or (c.scale.dtype == torch.float32 and c.scale.shape == (len(c),))
        assert c.ids == ids[c.start:c.stop]
        torch.testing.assert_close(c.dequantize(), roundtrip(x, fmt)[c.start:c.stop], rtol=0, atol=0)
    # zero copy: two chunks of one shard are views of one mapping
    first, second = chunks[0].data, chunks[1].data
    assert second.data_ptr() - first.data_ptr() == 4 * first.stride(0) * first.element_size()
    sub = list(r.iter_chunks(100, start=5, stop=20))
    assert [(c.start, len(c)) for c in sub] == [(5, 4), (9, 9), (18, 2)]
    assert r.ids_at(torch.tensor([22, 0, 9])) == ["doc/22", "doc/0", "doc/9"]


def test_int_ids_and_id_guards(tmp_path, gen):
    store = FeatureStore.create(tmp_path / "s", 6, "fp16", shard_rows=4)
    store.append(rows(gen, 3, 6), ids=np.array([10, 20, 30]))
    store.append(rows(gen, 3, 6), ids=torch.tensor([40, 50, 60]))
    with pytest.raises(ValueError, match="pass ids="):
        store.append(rows(gen, 2, 6))
    with pytest.raises(ValueError, match="'int'; got str"):
        store.append(rows(gen, 2, 6), ids=["a", "b"])
    with pytest.raises(ValueError, match="3 entries for 2 rows"):
        store.append(rows(gen, 2, 6), ids=[1, 2, 3])
    with pytest.raises(TypeError, match="all ints or all strings"):
        store.append(rows(gen, 2, 6), ids=[1.5, 2.5])
    store.commit()
    store.close()
    r = FeatureStore.open(tmp_path / "s")
    assert r.ids().tolist() == [10, 20, 30, 40, 50, 60] and r.ids_at([4]) == [50] and r.id_kind == "int"


def test_guards_dim_and_non_finite_rows_named_by_id(tmp_path, gen):
    store = FeatureStore.create(tmp_path / "s", 8, "int8")
    with pytest.raises(ValueError, match="dim 7, but the store .* dim 8"):
        store.append(rows(gen, 3, 7))
    x = rows(gen, 5, 8)
    x[1, 3] = float("nan")
    x[4, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 row\(s\).*\[.b., .e.\]"):
        store.append(x, ids=list("abcde"))
    with pytest.raises(ValueError, match=r"ids: \[1, 4\]"):
        store.append(x)
    assert store.num_pending == 0
    store.append(rows(gen, 2, 8))
    store.commit()
    assert len(store) == 2 and bool(store.read().isfinite().all())
    store.close()
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore.open(tmp_path / "s").append(rows(gen, 1, 8))


def test_create_and_open_errors(tmp_path):
    with pytest.raises(ValueError, match="fmt must be one of"):
        FeatureStore.create(tmp_path / "a", 8, "int3")
    with pytest.raises(ValueError, match="dim must be"):
        FeatureStore.create(tmp_path / "a", 0, "int8")
    with pytest.raises(ValueError, match="out_dim.*does not match"):
        FeatureStore.create(tmp_path / "a", 8, "int8", spec=projection_spec("rademacher", 0, 100, 16))
    with pytest.raises(TypeError, match="JSON"):
        FeatureStore.create(tmp_path / "a", 8, "int8", meta={"x": object()})
    FeatureStore.create(tmp_path / "a", 8, "int8").close()
    with pytest.raises(FileExistsError, match="already exists"):
        FeatureStore.create(tmp_path / "a", 8, "int8")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        FeatureStore.create(tmp_path / "b", 8, "int8")
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        FeatureStore.open(tmp_path / "b")
    with pytest.raises(ValueError, match="mode must be"):
        FeatureStore.open(tmp_path / "a", mode="w")


def test_one_writer_at_a_time_readers_any_time(tmp_path, gen):
    writer = FeatureStore.create(tmp_path / "s", 4, "bf16")
    with pytest.raises(StoreLockedError, match="another writer"):
        FeatureStore.open(tmp_path / "s", mode="append")
    reader = FeatureStore.open(tmp_path / "s")
    x = rows(gen, 6, 4)
    writer.append(x)
    assert reader.refresh() == 0  # pending rows are invisible
    writer.commit()
    assert len(reader) == 0 and reader.refresh() == 6
    assert torch.equal(reader.read(), roundtrip(x, "bf16"))
    writer.close()
    FeatureStore.open(tmp_path / "s", mode="append").close()  # the lock is free again


def test_resume_cuts_uncommitted_tail(tmp_path, gen):
    x = rows(gen, 30, 5)
    store = FeatureStore.create(tmp_path / "s", 5, "int4", shard_rows=8)
    store.append(x[:10], ids=[f"r{i}" for i in range(10)])
    store.commit()
    # a writer that dies here leaves bytes past the manifest and a shard it never committed
    store.append(x[10:20], ids=[f"r{i}" for i in range(10, 20)])
    for w in store._writers:
        w.sync()
    store._lock.release()  # as the kernel does for a killed process
    shards = tmp_path / "s" / "shards"
    assert (shards / "shard-000002.data").exists()
    with FeatureStore.open(tmp_path / "s", mode="append") as resumed:
        assert len(resumed) == 10 and not (shards / "shard-000002.data").exists()
        resumed.append(x[10:30], ids=[f"r{i}" for i in range(10, 30)])
    r = FeatureStore.open(tmp_path / "s", verify="full")
    assert torch.equal(r.read(), roundtrip(x, "int4")) and r.ids() == [f"r{i}" for i in range(30)]


def test_context_manager_discards_on_exception_and_close_warns(tmp_path, gen):
    x = rows(gen, 9, 3)
    with FeatureStore.create(tmp_path / "s", 3, "fp32", shard_rows=4) as store:
        store.append(x[:4])
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureStore.open(tmp_path / "s", mode="append") as store:
            store.append(x[4:9])
            raise RuntimeError("boom")
    r = FeatureStore.open(tmp_path / "s", verify="full")
    assert len(r) == 4 and sorted(p.name for p in (tmp_path / "s" / "shards").iterdir())[0] == "shard-000000.data"
    assert len(list((tmp_path / "s" / "shards").iterdir())) == 2
    store = FeatureStore.open(tmp_path / "s", mode="append")
    store.append(x[4:6])
    with pytest.warns(UserWarning, match="2 uncommitted row"):
        store.close()
    assert len(FeatureStore.open(tmp_path / "s", verify="full")) == 4


def _store_with_rows(path, gen, fmt="int8"):
    with FeatureStore.create(path, 16, fmt, shard_rows=10) as store:
        store.append(rows(gen, 25, 16), ids=[f"id{i}" for i in range(25)])
    return path


def test_truncated_shard_reported_by_name(tmp_path, gen):
    path = _store_with_rows(tmp_path / "s", gen)
    victim = path / "shards" / "shard-000001.scale"
    os.truncate(victim, victim.stat().st_size - 4)
    for opener in (lambda: FeatureStore.open(path), lambda: FeatureStore.open(path, mode="append")):
        with pytest.raises(CorruptStoreError, match="shard-000001.scale: truncated") as err:
            opener()
        assert any("shard-000001.scale" in p for p in err.value.problems)


@pytest.mark.parametrize("victim", ["shard-000000.data", "shard-000002.norms", "shard-000002.ids"])
def test_bit_flip_reported_by_name(tmp_path, gen, victim):
    path = _store_with_rows(tmp_path / "s", gen)
    target = path / "shards" / victim
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    target.write_bytes(bytes(raw))
    store = FeatureStore.open(path)  # sizes are intact: the cheap check passes
    with pytest.raises(CorruptStoreError, match=f"{victim}: SHA-256 mismatch"):
        store.verify()
    with pytest.raises(CorruptStoreError, match=victim):
        FeatureStore.open(path, verify="full")
    if victim.startswith("shard-000002"):  # the shard a writer would append to
        with pytest.raises(CorruptStoreError, match=victim):
            FeatureStore.open(path, mode="append")


def test_corrupt_manifest(tmp_path, gen):
    path = _store_with_rows(tmp_path / "s", gen)
    m = json.loads((path / "manifest.json").read_text())
    m["rows"] += 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptStoreError, match="shards hold 25 rows but the manifest says 26"):
        FeatureStore.open(path)
    (path / "manifest.json").write_text("{ not json")
    with pytest.raises(CorruptStoreError, match="not valid JSON"):
        FeatureStore.open(path)


def test_manifest_records_spec_fingerprint_and_checksums(tmp_path, gen):
    model = torch.nn.Linear(5, 3)
    fp = model_fingerprint(model, "tiny")
    spec = projection_spec("rademacher", 7, 15 * 64, 16, modules=[{"name": "fc", "offset": 0, "shape": [3, 5]}])
    with FeatureStore.create(tmp_path / "s", 16, "fp8_e4m3", spec=spec, fingerprint=fp) as store:
        store.append(rows(gen, 3, 16))
    m = FeatureStore.open(tmp_path / "s").manifest
    assert m["version"] == 1 and m["dim"] == 16 and m["fmt"] == "fp8_e4m3" and m["rows"] == 3
    assert m["spec"] == spec and m["fingerprint"]["sha256"] == fp["sha256"] and m["fingerprint"]["name"] == "tiny"
    files = m["shards"][0]["files"]
    assert set(files) == {"data", "scale", "norms"} and all(len(f["sha256"]) == 64 for f in files.values())


def test_check_compatible_names_what_differs(tmp_path, gen):
    fp_a = model_fingerprint(torch.nn.Linear(4, 4))
    fp_b = model_fingerprint(torch.nn.Linear(4, 4))
    spec = projection_spec("rademacher", 0, 100, 8)

    def make(name, dim=8, spec=spec, fp=fp_a, n=5, ids=None):
        with FeatureStore.create(tmp_path / name, dim, "int8", spec=spec, fingerprint=fp) as s:
            s.append(rows(gen, n, dim), ids=ids)
        return FeatureStore.open(tmp_path / name)

    a, a2 = make("a"), make("a2")
    check_compatible([a, a2])
    with pytest.raises(IncompatibleStoresError, match="dim differs"):
        check_compatible([a, make("d", dim=4, spec=projection_spec("rademacher", 0, 100, 4))])
    with pytest.raises(IncompatibleStoresError, match=r"spec differs: .* has seed=0, .* has seed=1"):
        check_compatible([a, make("s", spec=projection_spec("rademacher", 1, 100, 8))])
    other = make("f", fp=fp_b)
    with pytest.raises(IncompatibleStoresError, match="fingerprint differs: .*sha256="):
        check_compatible([a, other])
    check_compatible([a, other], same_fingerprint=False)  # checkpoints of one run (DDA)
    check_compatible([a, other], same_fingerprint=False, same_rows=True)
    with pytest.raises(IncompatibleStoresError, match="row count differs"):
        check_compatible([a, make("n", n=6)], same_rows=True)
    with pytest.raises(IncompatibleStoresError, match="ids differs"):
        check_compatible([a, make("i", ids=[f"x{i}" for i in range(5)])], same_rows=True)


def test_append_quantized_matches_append(tmp_path, gen):
    x = rows(gen, 7, 9)
    data, scale = quantize(x, "int4")
    norms = torch.linalg.vector_norm(x, dim=1)
    with FeatureStore.create(tmp_path / "q", 9, "int4") as store:
        store.append_quantized(data, scale, norms)
        with pytest.raises(TypeError, match="scale must be a float32"):
            store.append_quantized(data, None, norms)
        with pytest.raises(ValueError, match="stored columns"):
            store.append_quantized(data[:, :3], scale, norms)
        bad = norms.clone()
        bad[2] = float("nan")
        with pytest.raises(ValueError, match=r"norms is non-finite .* \[9\]"):
            store.append_quantized(data, scale, bad)
    with FeatureStore.create(tmp_path / "p", 9, "int4") as store:
        store.append(x)
    q, p = FeatureStore.open(tmp_path / "q"), FeatureStore.open(tmp_path / "p")
    assert torch.equal(q.read(), p.read()) and torch.equal(q.norms(), p.norms())


def test_fingerprint(gen):
    a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 2)).to(torch.bfloat16)
    b = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 2)).to(torch.bfloat16)
    b.load_state_dict(a.state_dict())
    fa, fb = model_fingerprint(a, "m"), model_fingerprint(b, "m")
    assert fa == fb and fa["tensors"] == 4 and fa["numel"] == 6 * 5 + 5 + 5 * 2 + 2 and fa["bytes"] == 2 * fa["numel"]
    assert model_fingerprint(dict(reversed(list(a.state_dict().items()))))["sha256"] == fa["sha256"]
    with torch.no_grad():
        b[1].bias[0] += 0.0078125
    assert model_fingerprint(b)["sha256"] != fa["sha256"]
    assert model_fingerprint(a.float())["sha256"] != fa["sha256"]  # dtype is part of the identity
    a[0].weight.requires_grad_(False)
    assert model_fingerprint(a, trainable_only=True)["tensors"] == 3
    with pytest.raises(TypeError, match="torch.nn.Module or a mapping"):
        model_fingerprint([1, 2])
    with pytest.raises(ValueError, match="meta device"):
        model_fingerprint(torch.nn.Linear(2, 2, device="meta"))


def test_cli_info_and_verify(tmp_path, gen):
    from click.testing import CliRunner

    from fasttda.cli.store import store as cli

    good = _store_with_rows(tmp_path / "good", gen)
    bad = _store_with_rows(tmp_path / "bad", gen)
    target = bad / "shards" / "shard-000001.data"
    raw = bytearray(target.read_bytes())
    raw[3] ^= 1
    target.write_bytes(bytes(raw))
    runner = CliRunner()
    out = runner.invoke(cli, ["info", str(good)])
    assert out.exit_code == 0 and "25 rows x 16 int8, 3 shard(s)" in out.output
    assert json.loads(runner.invoke(cli, ["info", "--json", str(good)]).output)[str(good)]["rows"] == 25
    out = runner.invoke(cli, ["verify", str(good), str(bad)])
    assert out.exit_code == 1 and f"ok {good}" in out.output and "shard-000001.data: SHA-256 mismatch" in out.output
    assert runner.invoke(cli, ["verify", "--compatible", str(good), str(good)]).exit_code == 0


def test_create_over_a_crashed_create(tmp_path, gen):
    root = tmp_path / "s"
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "shard-000000.data").write_bytes(b"\x01" * 40)  # never committed
    (root / "writer.lock").touch()
    (root / "manifest.json.tmp").write_text("{")
    with FeatureStore.create(root, 4, "int8") as store:
        assert not (root / "shards" / "shard-000000.data").exists()
        x = rows(gen, 3, 4)
        store.append(x)
    assert torch.equal(FeatureStore.open(root, verify="full").read(), roundtrip(x, "int8"))
