"""`index` under ``torchrun``: each rank builds one part of the store, rank 0 joins them.

On disk, while a build runs (``out`` is the store being built)::

    out.parts/plan.json              world size, batch size, example count, data
                                     fingerprint and each rank's slice [lo, hi)
    out.parts/rank-00001-of-00004/   rank 1's part: an ordinary FeatureStore of its slice

Slices are contiguous and batch-aligned, so rank r's batches are exactly the batches a
single process forms for those rows, and its features equal the single process's bit for
bit (same padding, same kernels). When every part is complete, rank 0 copies them in
order, as stored (no re-quantization), into ``out``, a FeatureStore with the same shard
size, meta, spec and fingerprint as a single-process build, so its shard files are equal
byte for byte; then it deletes ``out.parts``.

Resuming: relaunch the same command with ``--resume``. Each rank reopens its part (the
store's commit protocol cuts what a kill left uncommitted) and goes on; a join killed
midway goes on from the rows already copied. A relaunch with another number of ranks is
refused while parts are incomplete (the slicing would change); once every part is
complete, any number of ranks may finish the join.

What a shared filesystem must provide: every rank sees ``out.parts`` (rank 0 reads the
others' manifests to show global progress and to join), ``fsync`` and atomic ``rename``
within a directory (NFS with close-to-open consistency and Lustre do; object-store FUSE
mounts usually do not).
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Sequence

from fasttda.distributed import comm
from fasttda.distributed.comm import DistributedError

PLAN = "plan.json"
PLAN_FORMAT = "fasttda.distributed_index"


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def part_name(rank: int, world: int) -> str:
    return f"rank-{rank:05d}-of-{world:05d}"


def slices(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """Contiguous, batch-aligned ``[lo, hi)`` per rank, balanced to within one batch."""
    n_batches = -(-n // batch_size)
    cuts = [min(n_batches * r // world * batch_size, n) for r in range(world + 1)]
    return [(cuts[r], cuts[r + 1]) for r in range(world)]


def index(checkpoint, examples: Sequence, out, config, *, fmt: str = "fp32", resume: bool = False,
          progress: bool = False, group=None):
    """`fasttda.pipeline.index` over the ranks of ``group``; every rank gets the store.

    Every rank must call it with the same examples, config and format. Outside a process
    group (or with one rank) it is `fasttda.pipeline.index`.
    """
    from fasttda import pipeline
    from fasttda.data import data_fingerprint
    from fasttda.store import FeatureStore

    rank, world = comm.rank_world(group)
    if world == 1:
        return pipeline.index(checkpoint, examples, out, config, fmt=fmt, resume=resume, progress=progress)
    out = Path(out)
    parts = parts_dir(out)
    n, data = len(examples), data_fingerprint(examples)
    comm.check_same([n, config.batch_size], "the number of examples and the batch size", group)

    # every rank looks at the disk before any rank writes (agree() is a synchronization point)
    state = _run(lambda: _inspect(out, parts, n, data, config.batch_size, world, resume), group)
    if state == "done":  # the finished store was found, and resume was asked for
        return _finished(out, checkpoint, config, data)
    if state == "new":
        _run(lambda: _write_plan(parts, n, data, config.batch_size, world) if rank == 0 else None, group)
    plan = _load_plan(parts)
    if plan["world"] == world:
        lo, hi = plan["slices"][rank]
        part = parts / part_name(rank, world)
        poller = _Progress(parts, plan, n, f"index @ {Path(checkpoint.path).name}") if progress and rank == 0 \
            else None
        try:
            _run(lambda: pipeline.index(checkpoint, examples[lo:hi], part, config, fmt=fmt, resume=part.exists()),
                 group)
        finally:
            if poller is not None:
                poller.stop()
    comm.barrier(group)
    _run(lambda: _join(out, parts, plan, checkpoint, examples, config, fmt) if rank == 0 else None, group)
    comm.barrier(group)
    return FeatureStore.open(out, mode="r")


def _run(fn, group):
    """Run ``fn`` on this rank; if it fails on any rank, raise on every rank."""
    ok, message, value = True, "", None
    try:
        value = fn()
    except Exception as exc:  # told to every rank below, then re-raised here with its traceback
        ok, message, error = False, f"{type(exc).__name__}: {exc}", exc
    try:
        comm.agree(ok, message, group)
    except DistributedError:
        if not ok:
            raise error from None
        raise
    return value


def _inspect(out: Path, parts: Path, n: int, data: str, batch_size: int, world: int, resume: bool) -> str:
    """``"done"`` (a finished store), ``"resume"`` (parts to finish or join) or ``"new"``; read-only."""
    if out.exists() and not parts.exists():
        if not resume:
            raise FileExistsError(f"store already exists: {out} (pass --resume to finish it, or choose another path)")
        return "done"
    if not parts.exists():
        return "new"
    if not resume:
        raise FileExistsError(f"a build of {out} was interrupted ({parts} exists); pass --resume to finish "
                              f"it, or delete {parts} to start over")
    plan = _load_plan(parts)
    if (plan["n_examples"], plan["data"], plan["batch_size"]) != (n, data, batch_size):
        raise DistributedError(f"{parts} was started for another data set or batch size "
                               f"({plan['n_examples']} examples, batch {plan['batch_size']}); delete it to start over")
    if plan["world"] != world and not _all_parts_complete(parts, plan):
        raise DistributedError(
            f"{out} is being built by {plan['world']} ranks and its parts are incomplete; relaunch with "
            f"{plan['world']} ranks in all (torchrun --nnodes x --nproc-per-node), not {world}, or delete "
            f"{parts} to start over")
    return "resume"


def _write_plan(parts: Path, n: int, data: str, batch_size: int, world: int) -> None:
    from fasttda.store.manifest import fsync_dir, write_json_atomic

    parts.mkdir(parents=True)
    plan = {"format": PLAN_FORMAT, "version": 1, "world": world, "batch_size": batch_size, "n_examples": n,
            "data": data, "slices": slices(n, batch_size, world), "parts": [part_name(r, world) for r in range(world)]}
    write_json_atomic(parts / PLAN, plan)
    fsync_dir(parts.parent)


def _load_plan(parts: Path) -> dict:
    """The plan, checked: a crafted or damaged plan.json gets a one-line error, never a path outside."""
    path = parts / PLAN
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        world = plan["world"]
        ok = (plan.get("format") == PLAN_FORMAT and isinstance(world, int) and not isinstance(world, bool)
              and world >= 1 and plan["parts"] == [part_name(r, world) for r in range(world)]
              and isinstance(plan["n_examples"], int) and isinstance(plan["batch_size"], int)
              and plan["batch_size"] >= 1
              and [list(x) for x in plan["slices"]] == [list(x) for x in
                                                       slices(plan["n_examples"], plan["batch_size"], world)])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise DistributedError(f"{path} is unreadable ({type(exc).__name__}); delete {parts} to start over") from None
    if not ok:
        raise DistributedError(f"{path} is not a fasttda build plan; delete {parts} to start over")
    return plan


def _all_parts_complete(parts: Path, plan: dict) -> bool:
    from fasttda.store.errors import StoreError
    from fasttda.store import FeatureStore

    for name, (lo, hi) in zip(plan["parts"], plan["slices"]):
        try:
            if len(FeatureStore.open(parts / name, mode="r")) != hi - lo:
                return False
        except (StoreError, OSError, ValueError):
            return False
    return True


def _join(out: Path, parts: Path, plan: dict, checkpoint, examples, config, fmt: str) -> None:
    """Copy the parts, in rank order and as stored, into ``out``; then delete the parts."""
    from fasttda import pipeline
    from fasttda.store import FeatureStore

    stores = []
    for name, (lo, hi) in zip(plan["parts"], plan["slices"]):
        part = FeatureStore.open(parts / name, mode="r", verify="full")
        if len(part) != hi - lo:
            raise DistributedError(f"part {parts / name} holds {len(part)} of its {hi - lo} rows; resume the build")
        stores.append((part, lo))
    if out.exists():
        final = FeatureStore.open(out, mode="append")
    else:
        final = pipeline.create_store(out, checkpoint, examples, config, dim=stores[0][0].dim, fmt=fmt)
    with final:
        done = len(final)
        for part, lo in stores:
            if lo + len(part) <= done:
                continue
            for chunk in part.iter_chunks(1 << 16, start=max(0, done - lo)):
                ids = None if part.id_kind in (None, "index") else chunk.ids
                final.append_quantized(chunk.data, chunk.scale, chunk.norms, ids=ids)
                final.commit()
    if len(FeatureStore.open(out, mode="r")) != plan["n_examples"]:
        raise DistributedError(f"joined store {out} does not hold {plan['n_examples']} rows")
    shutil.rmtree(parts)


def _finished(out: Path, checkpoint, config, data: str):
    from fasttda import pipeline

    store = pipeline.open_store(out)
    pipeline.check_store(store, out, checkpoint=checkpoint, config=config, data=data)
    return store


class _Progress:
    """Rank 0's bar of global progress: polls every part's committed row count."""

    def __init__(self, parts: Path, plan: dict, total: int, desc: str, every_s: float = 1.0):
        from fasttda.store import manifest as mf

        self._paths = [parts / name / mf.MANIFEST for name in plan["parts"]]
        self._stop = threading.Event()
        self._total, self._desc, self._every = total, desc, every_s
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _rows(self) -> int:
        rows = 0
        for path in self._paths:
            try:
                rows += int(json.loads(path.read_text()).get("rows", 0))
            except (OSError, ValueError):
                pass
        return rows

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=self._total, desc=self._desc, unit="ex", dynamic_ncols=True, leave=False) as bar:
            while not self._stop.wait(self._every):
                bar.n = self._rows()
                bar.refresh()
            bar.n = self._rows()
            bar.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
