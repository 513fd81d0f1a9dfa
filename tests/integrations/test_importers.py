"""`fasttda import` for TRAK, Bergson, LESS and dattri-llm indexes: values, resume, refusals."""
import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fasttda.cli import main
from fasttda.integrations import importers
from fasttda.integrations.importers import import_index
from fasttda.store import FeatureStore


def write_bergson(root, rows: np.ndarray, sizes=None):
    """bergson.data.create_index's on-disk format: info.json + raw gradients.bin."""
    root.mkdir(parents=True)
    sizes = sizes or {"layer.a": rows.shape[1] - 3, "layer.b": 3}
    (root / "info.json").write_text(json.dumps({"attribute_tokens": False, "num_items": rows.shape[0],
                                                "num_grads": rows.shape[0], "grad_sizes": sizes,
                                                "base_dtype": rows.dtype.name}, indent=2))
    mm = np.memmap(root / "gradients.bin", dtype=rows.dtype, mode="w+", shape=rows.shape)
    mm[:] = rows
    mm.flush()


def write_dattri_llm(root, batches, rank=None):
    """dattri-llm GradientStorageManager, disk_format='memmap': index.jsonl + batch_<i>.mmap.{bin,meta}."""
    d = root / f"rank_{rank}" if rank is not None else root
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for b, layers in enumerate(batches):
        handle = f"batch_{b:06d}.mmap"
        off, specs = 0, {}
        with open(d / f"{handle}.bin", "wb") as f:
            for name, t in layers.items():
                raw = t.contiguous().view(torch.uint8).flatten().numpy().tobytes()
                f.write(raw)
                specs[name] = {"kind": "dense", "parts": {"data": {"byte_off": off, "nbytes": len(raw),
                                                                    "shape": list(t.shape), "dtype": str(t.dtype)[6:]}}}
                off += len(raw)
                pad = (-off) % 8
                f.write(b"\0" * pad)
                off += pad
        n = next(iter(layers.values())).shape[0]
        rec = {"step": b, "input_hash": None, "sample_id_key": None, "representation": {}, "layer_types": {},
               "indexing": {k: "batch" for k in layers}, "layers": specs}
        torch.save({"format": 2, "records": [rec]}, d / f"{handle}.meta")
        prefix = f"rank_{rank}/" if rank is not None else ""
        lines.append(json.dumps({"file": prefix + handle, "records": [
            {"idx": 0, "step": b, "hashes": [f"h{rank}-{b}-{i}" for i in range(n)]}]}))
    (d / "index.jsonl").write_text("\n".join(lines) + "\n")


def test_bergson_import_is_exact_and_resumes(tmp_path, gen):
    rows = torch.randn(50, 29, generator=gen).numpy()
    write_bergson(tmp_path / "idx" / "shard0", rows[:20])
    write_bergson(tmp_path / "idx" / "shard1", rows[20:])
    store = import_index("bergson", tmp_path / "idx", tmp_path / "s", fmt="fp32", chunk_rows=7)
    assert torch.equal(store.read(), torch.from_numpy(rows))
    # resume: drop to a partial store by re-importing into a fresh store, stopped after 2 chunks
    source = importers.bergson_source(tmp_path / "idx")
    partial = FeatureStore.create(tmp_path / "p", 29, "fp32",
                                  meta={"imported_from": {"source": "bergson", "path": str((tmp_path / "idx").resolve()),
                                                          **source.info}})
    with partial:
        for i, (first, chunk, _) in enumerate(source.chunks(0, 7)):
            if i == 2:
                break
            partial.append(chunk, ids=list(range(first, first + chunk.shape[0])))
            partial.commit()
    resumed = import_index("bergson", tmp_path / "idx", tmp_path / "p", fmt="fp32", chunk_rows=7)
    assert torch.equal(resumed.read(), torch.from_numpy(rows)) and resumed.ids(0, 50).tolist() == list(range(50))


def test_bergson_bf16_and_bad_inputs(tmp_path, gen):
    t = torch.randn(6, 8, generator=gen).to(torch.bfloat16)
    write_bergson(tmp_path / "b", t.view(torch.uint16).numpy(), {"m": 8})
    info = json.loads((tmp_path / "b" / "info.json").read_text())
    (tmp_path / "b" / "info.json").write_text(json.dumps({**info, "base_dtype": "bfloat16"}))
    assert torch.equal(import_index("bergson", tmp_path / "b", tmp_path / "s", fmt="bf16").read(), t.float())
    write_bergson(tmp_path / "c", np.ones((4, 5), np.float32), {"m": 5})
    with open(tmp_path / "c" / "gradients.bin", "ab") as f:
        f.write(b"junk")
    with pytest.raises(ValueError, match="gradients.bin: num_grads 4 x 5 float32 needs exactly 80 bytes, the file has 84"):
        import_index("bergson", tmp_path / "c", tmp_path / "s2")
    write_bergson(tmp_path / "d", np.ones((4, 5), np.float32), {"m": 5})
    (tmp_path / "d" / "info.json").write_text("{not json")
    with pytest.raises(ValueError, match="info.json"):
        import_index("bergson", tmp_path / "d", tmp_path / "s3")
    write_bergson(tmp_path / "e", t.float().numpy(), {"m": 8})
    with pytest.raises(ValueError, match="imported from"):  # a store of another source is refused
        import_index("bergson", tmp_path / "e", tmp_path / "s")


def test_trak_import_from_a_real_traker(tmp_path):
    pytest.importorskip("trak")
    from trak import TRAKer

    from fasttda.integrations.trak import FastTDAProjector

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    n = 6
    proj = FastTDAProjector(grad_dim=sum(p.numel() for p in model.parameters()), proj_dim=8, seed=1)
    traker = TRAKer(model=model, task="image_classification", save_dir=tmp_path / "trak", projector=proj,
                    train_set_size=n, logging_level=logging.ERROR, device="cpu", use_half_precision=False)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    traker.featurize((torch.randn(n, 3, 2, 2), torch.randint(0, 3, (n,))), num_samples=n)
    traker.finalize_features()
    for array in ("grads", "features"):
        want = torch.from_numpy(np.load(tmp_path / "trak" / "0" / f"{array}.mmap", allow_pickle=False).copy())
        res = CliRunner().invoke(main, ["import", "trak", str(tmp_path / "trak"), str(tmp_path / array),
                                        "--format", "fp32", "--array", array])
        assert res.exit_code == 0, res.output
        assert "verified" in res.output
        assert torch.equal(FeatureStore.open(tmp_path / array).read(), want.float())


def test_trak_unfinished_featurize_is_refused(tmp_path):
    from numpy.lib.format import open_memmap

    (tmp_path / "t" / "0").mkdir(parents=True)
    open_memmap(tmp_path / "t" / "0" / "features.mmap", mode="w+", dtype=np.float16, shape=(4, 3))[:] = 1
    flags = open_memmap(tmp_path / "t" / "0" / "_is_featurized.mmap", mode="w+", dtype=np.int32, shape=(4,))
    flags[:2] = 1
    flags.flush()
    res = CliRunner().invoke(main, ["import", "trak", str(tmp_path / "t"), str(tmp_path / "s")])
    assert res.exit_code == 1 and "2 of 4 training examples were never featurized" in res.output


def test_less_import_through_the_cli(tmp_path, gen):
    (tmp_path / "dim8").mkdir()
    a, b = torch.randn(3, 8, generator=gen), torch.randn(4, 8, generator=gen)
    torch.save(a, tmp_path / "dim8" / "grads-1.pt")
    torch.save(b, tmp_path / "dim8" / "grads-2.pt")
    res = CliRunner().invoke(main, ["import", "less", str(tmp_path / "dim8"), str(tmp_path / "s"), "--format", "fp32"])
    assert res.exit_code == 0, res.output
    assert torch.equal(FeatureStore.open(tmp_path / "s").read(), torch.cat([a, b]))


def test_dattri_llm_import_per_rank(tmp_path, gen):
    r0 = [{"l1": torch.randn(3, 2, 2, generator=gen), "l2": torch.randn(3, 5, generator=gen)} for _ in range(2)]
    r1 = [{"l1": torch.randn(2, 2, 2, generator=gen), "l2": torch.randn(2, 5, generator=gen)}]
    write_dattri_llm(tmp_path / "d", r0, rank=0)
    write_dattri_llm(tmp_path / "d", r1, rank=1)
    store = import_index("dattri-llm", tmp_path / "d", tmp_path / "s", fmt="fp32")
    want = torch.cat([torch.cat([b["l1"].reshape(b["l1"].shape[0], -1), b["l2"]], 1) for b in r0 + r1])
    assert torch.equal(store.read(), want)
    assert store.ids(0, 8) == [f"h0-0-{i}" for i in range(3)] + [f"h0-1-{i}" for i in range(3)] + ["h1-0-0", "h1-0-1"]
    # int8: verified by row norms
    assert len(import_index("dattri-llm", tmp_path / "d", tmp_path / "s8", fmt="int8")) == 8


def test_dattri_llm_pickle_groups_are_refused(tmp_path, gen):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.jsonl").write_text(json.dumps({"file": "batch_000000.pt", "records": [
        {"idx": 0, "step": 0, "hashes": ["a"]}]}) + "\n")
    with pytest.raises(ValueError, match="disk_format='pickle'"):
        import_index("dattri-llm", tmp_path / "d", tmp_path / "s")
