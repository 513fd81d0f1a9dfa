"""SIGKILL a writer at random instants, many times; the store must hold exactly the committed rows.

A fork server (a ``python -c`` subprocess that imports torch and fasttda once) forks one
writer per round, so each round costs the random delay, not a 5 s torch import. The writer
resumes the store (``mode="append"``), appends batches and commits in a loop, logging each
commit's row count to an fsynced file. The test kills it (SIGKILL), reopens the store with
full checksums and checks: row count is the known count (logged, or verified in an earlier
round) or one batch more (killed between commit and log), every row's values and id match
the deterministic generator (no duplicates, no holes), and a reader opened mid-write saw a
consistent prefix.
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fasttda.ops.quantize import dequantize, quantize
from fasttda.store import FeatureStore

DIM, BATCH, SHARD_ROWS, FMT = 24, 7, 16, "int8"
ROUNDS_MIN, ROUNDS_MAX, BUDGET_S = 20, 80, 25.0

ROWS_SRC = '''
def make_rows(lo, hi, dim):
    i = np.arange(lo, hi, dtype=np.float64)[:, None]
    j = np.arange(dim, dtype=np.float64)[None, :]
    return (np.sin(i * 12.9898 + j * 78.233) * (1.0 + (i % 5))).astype(np.float32)

def make_ids(lo, hi):
    return [f"row-{i}" for i in range(lo, hi)]
'''
exec(ROWS_SRC)  # the parent's make_rows / make_ids: the very same code the writer runs

SERVER = ROWS_SRC + '''
import os, sys, traceback
import torch
torch.set_num_threads(1)
from fasttda.store import FeatureStore
path, log, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            store = FeatureStore.open(path, mode="append")
            while True:
                n = len(store)
                store.append(make_rows(n, n + batch, store.dim), ids=make_ids(n, n + batch))
                store.commit()
                with open(log, "a") as f:
                    f.write(f"{n + batch}\\n")
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(3)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
'''
SERVER = "import numpy as np\n" + SERVER


def expected(lo, hi):
    data, scale = quantize(torch.from_numpy(make_rows(lo, hi, DIM)), FMT, backend="reference")
    return dequantize(data, scale, FMT, backend="reference")


def logged_rows(log: Path) -> int:
    lines = log.read_text().split() if log.exists() else []
    return int(lines[-1]) if lines else 0


def check_prefix(store: FeatureStore, at_least: int) -> int:
    n = len(store)
    assert n >= at_least and n % BATCH == 0, f"{n} rows: not a whole number of committed batches >= {at_least}"
    if n:
        assert torch.equal(store.read(), expected(0, n)), "stored values differ from the committed rows"
        assert store.ids() == make_ids(0, n), "ids have duplicates or holes"
    return n


def tail_present(path: Path, store: FeatureStore) -> bool:
    """Whether the killed writer left bytes past the committed state (what resume must cut)."""
    committed = {m["file"]: m["bytes"] for e in store.manifest["shards"] for m in e["files"].values()}
    for p in (path / "shards").iterdir():
        if p.name not in committed or p.stat().st_size > committed[p.name]:
            return True
    return False


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_writer_leaves_exactly_the_committed_rows(tmp_path):
    path, log = tmp_path / "store", tmp_path / "commits.log"
    FeatureStore.create(path, DIM, FMT, shard_rows=SHARD_ROWS).close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(path), str(log), str(BATCH)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    rounds = tails = known = 0
    mid_write_reads = 0
    try:
        start = time.monotonic()
        while rounds < ROUNDS_MAX and (rounds < ROUNDS_MIN or time.monotonic() - start < BUDGET_S):
            before = max(logged_rows(log), known)
            server.stdin.write("go\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.3))
            if rounds % 3 == 0:  # a reader while the writer runs sees a consistent prefix
                check_prefix(FeatureStore.open(path), before)
                mid_write_reads += 1
            os.kill(pid, signal.SIGKILL)
            status = int(server.stdout.readline())
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                server.kill()
                pytest.fail(f"writer died on its own (status {status}):\n{server.stderr.read()}")
            # a commit may land just before the kill, unlogged; earlier rounds' counts are verified
            known = max(logged_rows(log), known)
            store = FeatureStore.open(path, verify="full")
            assert len(store) in (known, known + BATCH), f"{len(store)} rows, {known} known committed"
            known = check_prefix(store, known)
            tails += tail_present(path, store)
            rounds += 1
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    assert rounds >= ROUNDS_MIN and mid_write_reads >= ROUNDS_MIN // 3
    assert known >= 3 * BATCH, "the writers barely committed: the kills tested little"
    # resume once more here: no duplicates, no holes, checksums hold
    with FeatureStore.open(path, mode="append") as store:
        n = len(store)
        store.append(make_rows(n, n + BATCH, DIM), ids=make_ids(n, n + BATCH))
    final = FeatureStore.open(path, verify="full")
    check_prefix(final, n + BATCH)
    final.verify()
    shards = len(final.manifest["shards"])
    print(f"{rounds} kills, {tails} left an uncommitted tail, {len(final)} rows in {shards} shards")
