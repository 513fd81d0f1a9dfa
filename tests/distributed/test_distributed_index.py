"""Indexing under a gloo process group (2 and 3 spawned ranks) builds the single-process store,
byte for byte; a killed rank resumes; a relaunch with another rank count is refused; capture
through DDP and FSDP2 equals capture of the plain model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fasttda import FeatureStore, pipeline
from fasttda.data import load_jsonl
from fasttda.distributed.indexing import parts_dir, slices

from dist_workers import check_scores, load, spawn
from tiny_models import make_checkpoints, make_rows, write_jsonl

N_EXAMPLES, BATCH = 23, 4


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_index")
    torch.set_num_threads(1)
    model = make_checkpoints(tmp / "ckpt", n_epochs=0)[0]
    data = write_jsonl(tmp / "train.jsonl", make_rows(11, N_EXAMPLES))
    ckpt = pipeline.load_checkpoint(model)
    config = pipeline.CaptureConfig("factored:4x3", batch_size=BATCH, seed=3)
    store = pipeline.index(ckpt, load_jsonl(data), tmp / "single", config, fmt="int8")
    args = {"model": str(model), "data": str(data), "projection": "factored:4x3", "batch_size": BATCH,
            "fmt": "int8"}
    return tmp, store, args


def _shard_bytes(path: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((path / "shards").iterdir())}


def _assert_same_store(got_path: Path, want: FeatureStore):
    got = FeatureStore.open(got_path, verify="full")
    assert len(got) == len(want) == N_EXAMPLES
    assert _shard_bytes(got_path) == _shard_bytes(want.path)          # rows, scales, norms, ids: byte for byte
    for key in ("dim", "fmt", "spec", "fingerprint", "meta", "id_kind", "rows", "shard_rows"):
        assert got.manifest[key] == want.manifest[key], key
    assert not parts_dir(got_path).exists()


def _score_args(score_setup):
    _, stores, qpaths, calls, _ = score_setup
    return {"stores": stores, "queries": qpaths, "calls": calls}


def test_three_ranks_index_score_and_capture(single, score_setup):
    """One spawn of 3 ranks checks indexing, scoring and capture (spawning costs seconds)."""
    tmp, want, args = single
    world, out, path = 3, tmp / "out3", tmp / "store3"
    spawn(world, "index", dict(args, out=str(out), store=str(path), capture=True,
                               score=_score_args(score_setup)), tmp)
    _assert_same_store(path, want)
    check_scores(score_setup, out, world)
    first = load(out, 0, "index_score")
    for rank in range(1, world):
        for a, b in zip(first, load(out, rank, "index_score")):
            np.testing.assert_array_equal(a, b)
    for rank in range(world):  # DDP and FSDP2 capture
        d = out / f"rank{rank}"
        plain = np.load(d / "plain.npy")
        assert np.abs(plain).max() > 0
        for got in (*np.load(d / "ddp.npy"), np.load(d / "fsdp.npy")):
            np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())


def test_two_ranks_killed_rank_resumes_and_other_rank_counts_are_refused(single, score_setup):
    tmp, want, args = single
    path, out = tmp / "killed", tmp / "killed_out"
    with pytest.raises(AssertionError):  # rank 1 dies after two batches of its slice
        spawn(2, "index", dict(args, out=str(out / "a"), store=str(path), kill_rank=1, kill_after=2), tmp)
    parts = parts_dir(path)
    plan = json.loads((parts / "plan.json").read_text())
    assert plan["world"] == 2 and plan["slices"] == [list(s) for s in slices(N_EXAMPLES, BATCH, 2)]
    rank1 = FeatureStore.open(parts / plan["parts"][1])
    assert 0 < len(rank1) < plan["slices"][1][1] - plan["slices"][1][0]   # a partial, committed part

    spawn(3, "index", dict(args, out=str(out / "b"), store=str(path), resume=True), tmp)
    for rank in range(3):
        msg = (out / "b" / f"rank{rank}" / "index_error.txt").read_text()
        assert "being built by 2 ranks" in msg and "not 3" in msg
    assert not path.exists() and parts.exists()  # nothing touched

    spawn(2, "index", dict(args, out=str(out / "c"), store=str(path), resume=True,
                           score=_score_args(score_setup)), tmp)
    _assert_same_store(path, want)
    check_scores(score_setup, out / "c", 2)


def test_slices_are_contiguous_and_batch_aligned():
    for n in (0, 1, 5, 23, 64):
        for world in (1, 2, 3, 7):
            s = slices(n, 4, world)
            assert s[0][0] == 0 and s[-1][1] == n and all(a[1] == b[0] for a, b in zip(s, s[1:]))
            assert all(lo % 4 == 0 or lo == n for lo, _ in s)
            sizes = [hi - lo for lo, hi in s]
            assert max(sizes) - min(sizes) <= 4
