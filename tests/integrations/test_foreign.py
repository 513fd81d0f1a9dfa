"""ForeignIndex: TRAK, Bergson and dattri-llm indexes scored in place equal import-then-score;
crafted metadata is refused with a one-line error naming the file."""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from numpy.lib.format import open_memmap
from helpers import assert_same_ranking, fp32_dot_bound
from test_importers import write_bergson, write_dattri_llm

import fasttda
from fasttda.cli import main
from fasttda.integrations.foreign import ForeignIndex
from fasttda.integrations.importers import import_index


def ints(gen, *shape):
    """Small integers: exact in fp16/bf16 and in every fp32 sum here, so scores are bitwise equal in any order."""
    return torch.randint(-8, 9, shape, generator=gen).float()


def same_as_imported(index, store, queries, k):
    for normalize in (False, True):
        got = fasttda.score(queries, index, k=k, chunk_rows=7, normalize=normalize)
        want = fasttda.score(queries, store, k=k, chunk_rows=7, normalize=normalize)
        if normalize:  # the same fp32 norms; cosine's scaling may round apart inside the sum: fp32 bound
            rows = index.read()
            unit = lambda t: t / t.norm(dim=1, keepdim=True).clamp_min(1e-30)  # noqa: E731
            assert_same_ranking((got.values, got.indices), (want.values, want.indices),
                                fp32_dot_bound(unit(queries), unit(rows), extra=4))
        else:
            assert torch.equal(got.values, want.values) and torch.equal(got.indices, want.indices)
            assert got.ids.tolist() == want.ids.tolist()


def test_trak_memmap_in_place_equals_import(tmp_path, gen):
    rows = ints(gen, 45, 19).half()
    (tmp_path / "t" / "0").mkdir(parents=True)
    open_memmap(tmp_path / "t" / "0" / "features.mmap", mode="w+", dtype=np.float16, shape=(45, 19))[:] = rows.numpy()
    index = ForeignIndex.open(f"trak:{tmp_path / 't'}")
    assert (len(index), index.dim, index.fmt) == (45, 19, "fp16")
    first, second, *_ = index.iter_chunks(7)  # views of one map: the second chunk starts where the first ends
    assert second.data.data_ptr() - first.data.data_ptr() == 7 * 19 * 2
    store = import_index("trak", tmp_path / "t", tmp_path / "s", fmt="fp16")
    same_as_imported(index, store, ints(gen, 3, 19), k=6)
    assert torch.equal(index.read(), rows.float())


def test_bergson_shards_in_place_equal_import(tmp_path, gen):
    rows = ints(gen, 30, 11)
    write_bergson(tmp_path / "idx" / "a", rows[:13].numpy())
    write_bergson(tmp_path / "idx" / "b", rows[13:].numpy())
    index = ForeignIndex.open(f"bergson:{tmp_path / 'idx'}")
    first, second, *_ = index.iter_chunks(5)
    assert second.data.data_ptr() - first.data.data_ptr() == 5 * 11 * 4  # views of shard a's map
    same_as_imported(index, import_index("bergson", tmp_path / "idx", tmp_path / "s", fmt="fp32"),
                     ints(gen, 4, 11), k=30)
    bf = tmp_path / "bf"
    write_bergson(bf, rows.to(torch.bfloat16).view(torch.uint16).numpy(), {"m": 11})
    (bf / "info.json").write_text((bf / "info.json").read_text().replace('"uint16"', '"bfloat16"'))
    same_as_imported(ForeignIndex.open(f"bergson:{bf}"), import_index("bergson", bf, tmp_path / "s2", fmt="bf16"),
                     ints(gen, 2, 11), k=4)


def test_dattri_llm_per_rank_in_place_equals_import(tmp_path, gen):
    r0 = [{"l1": ints(gen, 5, 2, 2), "l2": ints(gen, 5, 3)} for _ in range(2)]  # two layers: rows assembled
    write_dattri_llm(tmp_path / "d", r0, rank=0)
    write_dattri_llm(tmp_path / "d", [{"l1": ints(gen, 4, 2, 2), "l2": ints(gen, 4, 3)}], rank=1)
    index = ForeignIndex.open(f"dattri-llm:{tmp_path / 'd'}")
    store = import_index("dattri-llm", tmp_path / "d", tmp_path / "s", fmt="fp32")
    same_as_imported(index, store, ints(gen, 3, 7), k=9)
    assert index.ids_at([0, 13]) == ["h0-0-0", "h1-0-3"]
    write_dattri_llm(tmp_path / "one", [{"l": ints(gen, 6, 4).half()}])  # one layer: a view
    one = ForeignIndex.open(f"dattri-llm:{tmp_path / 'one'}")
    same_as_imported(one, import_index("dattri-llm", tmp_path / "one", tmp_path / "s1", fmt="fp16"),
                     ints(gen, 2, 4), k=3)


def refused(spec, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        ForeignIndex.open(spec)
    assert "\n" not in str(info.value)


def test_crafted_trak_and_bergson_metadata_is_refused(tmp_path, gen):
    (tmp_path / "t" / "0").mkdir(parents=True)
    f = tmp_path / "t" / "0" / "features.mmap"
    open_memmap(f, mode="w+", dtype=np.float32, shape=(4, 3))[:] = 1
    with open(f, "r+b") as fh:  # the header announces 9 rows; the file holds 4
        head = fh.read(128)
        assert b"(4, 3)" in head
        fh.seek(0)
        fh.write(head.replace(b"(4, 3)", b"(9, 3)"))
    refused(f"trak:{tmp_path / 't'}", r"features.mmap: the header's float32 \(9, 3\) needs exactly")
    rows = ints(gen, 4, 5).numpy()
    for name, info in {"neg": {"num_grads": -1}, "bool": {"num_grads": True}, "str": {"grad_sizes": {"m": "5"}},
                       "big": {"num_grads": 10**12}}.items():
        write_bergson(tmp_path / name, rows, {"m": 5})
        meta = json.loads((tmp_path / name / "info.json").read_text())
        (tmp_path / name / "info.json").write_text(json.dumps({**meta, **info}))
        refused(f"bergson:{tmp_path / name}", f"{name}/(info.json|gradients.bin): ")
    write_bergson(tmp_path / "link", rows, {"m": 5})
    outside = tmp_path / "secret.bin"
    outside.write_bytes(bytes(4 * 5 * 4))
    os.remove(tmp_path / "link" / "gradients.bin")
    os.symlink(outside, tmp_path / "link" / "gradients.bin")
    refused(f"bergson:{tmp_path / 'link'}", "gradients.bin: this gradients.bin leads outside the index folder")
    write_bergson(tmp_path / "f64", rows.astype(np.float64), {"m": 5})
    refused(f"bergson:{tmp_path / 'f64'}", "float64 rows are not a score format")
    (tmp_path / "less").mkdir()
    torch.save(ints(gen, 3, 5), tmp_path / "less" / "grads-0.pt")
    refused(f"less:{tmp_path / 'less'}", "cannot be scored in place: LESS's .pt shards are zip archives of pickled")
    refused("mystery:/x", "index must be KIND:PATH")


def test_crafted_dattri_llm_metadata_is_refused(tmp_path, gen):
    write_dattri_llm(tmp_path / "d", [{"l": ints(gen, 3, 4)}])
    index_file = tmp_path / "d" / "index.jsonl"
    line = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**line, "file": "../../etc/batch.mmap"}) + "\n")
    refused(f"dattri-llm:{tmp_path / 'd'}", "leads outside the index folder")
    index_file.write_text(json.dumps(line) + "\n")
    meta_path = tmp_path / "d" / "batch_000000.mmap.meta"
    meta = torch.load(meta_path, weights_only=True)
    meta["records"][0]["layers"]["l"]["parts"]["data"]["byte_off"] = 1 << 40
    torch.save(meta, meta_path)
    refused(f"dattri-llm:{tmp_path / 'd'}", r"batch_000000.mmap.meta: layer 'l' announces 48 bytes at 1099511627776")
    meta["records"][0]["layers"]["l"]["parts"]["data"].update(byte_off=0, shape=[5, 4], nbytes=80)
    torch.save(meta, meta_path)
    refused(f"dattri-llm:{tmp_path / 'd'}", "batch_000000.mmap.meta: layer 'l' announces 80 bytes")


def test_query_index_cli(tmp_path, gen):
    rows = ints(gen, 20, 6)
    write_bergson(tmp_path / "idx", rows.numpy(), {"m": 6})
    queries = ints(gen, 2, 6)
    np.save(tmp_path / "q.npy", queries.numpy())
    out = CliRunner().invoke(main, ["query-index", f"bergson:{tmp_path / 'idx'}", "--queries", str(tmp_path / "q.npy"),
                                    "--top-k", "3"])
    assert out.exit_code == 0, out.output
    got = [json.loads(line) for line in out.output.splitlines()]
    want = fasttda.score(queries, ForeignIndex.open(f"bergson:{tmp_path / 'idx'}"), k=3)
    assert [g["row"] for g in got] == want.indices.reshape(-1).tolist()
    assert [(g["query"], g["rank"]) for g in got] == [(q, r) for q in range(2) for r in range(3)]
    (tmp_path / "idx" / "info.json").write_text("{}")
    bad = CliRunner().invoke(main, ["query-index", f"bergson:{tmp_path / 'idx'}", "--queries", str(tmp_path / "q.npy")])
    assert bad.exit_code != 0 and "info.json" in bad.output and len(bad.output.strip().splitlines()) == 1
