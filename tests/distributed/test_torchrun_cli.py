"""The README's commands under ``torchrun``: `fasttda index` on 2 ranks, then `fasttda query`
(one process and 2 ranks), give exactly what one process gives."""
from __future__ import annotations

import os
import subprocess
import sys

from tiny_models import make_checkpoints, make_rows, write_jsonl


def _run(args, env, launcher=()):
    cmd = [sys.executable, *launcher, "-m", "fasttda", *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_torchrun_index_and_query_equal_one_process(tmp_path):
    model = make_checkpoints(tmp_path / "m", n_epochs=0, seed=4)[0]
    data = write_jsonl(tmp_path / "train.jsonl", make_rows(5, 19))
    queries = write_jsonl(tmp_path / "queries.jsonl", make_rows(6, 5))
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "0"))
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    index = ["index", "--model", model, "--data", data, "--projection", "factored:4x4", "--format", "int8",
             "--batch-size", "4", "--quiet"]
    one = _run(index + ["--out", tmp_path / "one"], env)
    two = _run(index + ["--out", tmp_path / "two"], env, torchrun)
    assert "2 ranks" in two.stdout and two.stdout.count("indexed 19 examples") == 1  # rank 0 speaks
    query = ["query", "--model", model, "--queries", queries, "--top-k", "7", "--batch-size", "2"]
    _run(query + ["--store", tmp_path / "one", "--out", tmp_path / "r_one.jsonl"], env)
    _run(query + ["--store", tmp_path / "two", "--out", tmp_path / "r_two.jsonl"], env)
    _run(query + ["--store", tmp_path / "one", "--out", tmp_path / "r_dist.jsonl"], env, torchrun)
    want = (tmp_path / "r_one.jsonl").read_text()
    assert want.count("\n") == 5 and '"rank": 7' in want
    assert (tmp_path / "r_two.jsonl").read_text() == want
    assert (tmp_path / "r_dist.jsonl").read_text() == want
