"""Worker bodies for the distributed tests: each runs in a spawned process on gloo.

A worker joins the group through a file rendezvous, runs its scenario, and writes what
the parent test checks as ``.npy`` files (never pickles) under ``out/rank<r>/``.
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path

import numpy as np
import torch


def run(rank: int, world: int, rdzv: str, scenario: str, args: dict) -> None:
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    out = Path(args["out"]) / f"rank{rank}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        SCENARIOS[scenario](rank, world, args, out)
        (out / "ok").write_text("ok")
    except BaseException:
        (out / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _save(out: Path, name: str, result) -> None:
    np.save(out / f"{name}.values.npy", result.values.cpu().numpy())
    np.save(out / f"{name}.indices.npy", result.indices.cpu().numpy())
    ids = result.ids
    np.save(out / f"{name}.ids.npy", ids.astype(str) if ids.dtype == object else ids)
    (out / f"{name}.split").write_text(getattr(result, "split", ""))


def score_scenario(rank, world, args, out):
    import fasttda
    from fasttda import FeatureStore

    stores = [FeatureStore.open(p) for p in args["stores"]]
    q = [torch.from_numpy(np.load(p)) for p in args["queries"]]
    for name, kw in args["calls"].items():
        single = not kw.get("multi")
        result = fasttda.score(q[0] if single else q[: len(stores)], stores[kw.get("store", 0)] if single else stores,
                               **kw["kw"])
        _save(out, name, result)
    # a mismatched call is refused on every rank instead of hanging
    try:
        fasttda.score(q[0][: 1 + rank], stores[0], k=3)
    except Exception as exc:  # noqa: BLE001 - the message is what the parent checks
        (out / "mismatch.txt").write_text(f"{type(exc).__name__}: {exc}")


def index_scenario(rank, world, args, out):
    """Index with the distributed pipeline (optionally killed or resumed), then score it."""
    from fasttda import pipeline
    from fasttda.data import load_jsonl
    from fasttda.distributed import index

    ckpt = pipeline.load_checkpoint(args["model"])
    examples = load_jsonl(args["data"])
    config = pipeline.CaptureConfig(args["projection"], batch_size=args["batch_size"], seed=3)
    if args.get("kill_rank") == rank:  # the process dies, as under SIGKILL, after a few batches
        _die_after(ckpt.model, args["kill_after"])
    try:
        store = index(ckpt, examples, args["store"], config, fmt=args["fmt"], resume=args.get("resume", False))
    except Exception as exc:  # noqa: BLE001 - the parent checks the message
        (out / "index_error.txt").write_text(f"{type(exc).__name__}: {exc}")
        return
    queries = pipeline.query_features(ckpt, load_jsonl(args["data"])[:4], config)
    _save(out, "index_score", __import__("fasttda").score(queries, store, k=9, chunk_rows=4))
    if args.get("capture"):
        capture_scenario(rank, world, args, out)
    if args.get("score"):
        score_scenario(rank, world, args["score"], out)


def _die_after(model, calls: int) -> None:
    seen = {"n": 0}

    def hook(module, inputs):
        seen["n"] += 1
        if seen["n"] > calls:
            os._exit(3)
    model.register_forward_pre_hook(hook)


def capture_scenario(rank, world, args, out):
    """Features through DDP and through FSDP2 (fully_shard) equal the plain model's."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fasttda
    from fasttda import pipeline

    model = pipeline.load_checkpoint(args["model"]).model
    gen = torch.Generator().manual_seed(7 + rank)  # each rank its own batch, as in data parallelism
    ids = torch.randint(3, model.config.vocab_size, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding on one row
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    projection = ("factored", 4, 3)
    with fasttda.GradientCapture(model, projection=projection, seed=5) as cap:
        plain = cap.features(**batch)
    ddp = DDP(copy.deepcopy(model))
    with fasttda.GradientCapture(ddp, projection=projection, seed=5) as cap:
        through_ddp = [cap.features(**batch) for _ in range(2)]
    sharded = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (world,))
    for layer in sharded.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    with fasttda.GradientCapture(sharded, projection=projection, seed=5) as cap:
        through_fsdp = cap.features(**batch)
    np.save(out / "plain.npy", plain.numpy())
    np.save(out / "ddp.npy", torch.stack(through_ddp).numpy())
    np.save(out / "fsdp.npy", through_fsdp.numpy())


SCENARIOS = {"score": score_scenario, "index": index_scenario}


def spawn(world: int, scenario: str, args: dict, tmp: Path) -> None:
    """Run ``scenario`` on ``world`` spawned ranks; raise with the ranks' tracebacks on failure."""
    import torch.multiprocessing as mp

    rdzv = tmp / f"rdzv-{scenario}-{world}"
    rdzv.unlink(missing_ok=True)
    try:
        mp.start_processes(run, args=(world, str(rdzv), scenario, args), nprocs=world, join=True,
                           start_method="spawn")
    except Exception as exc:
        errors = [p.read_text() for p in sorted(Path(args["out"]).glob("rank*/error.txt"))]
        raise AssertionError(f"distributed scenario {scenario!r} failed:\n" + "\n".join(errors)) from exc


def load(out: Path, rank: int, name: str):
    d = Path(out) / f"rank{rank}"
    ids = np.load(d / f"{name}.ids.npy")
    return (np.load(d / f"{name}.values.npy"), np.load(d / f"{name}.indices.npy"), ids,
            (d / f"{name}.split").read_text())


def check_scores(setup, out, world):
    """What `dist_workers.score_scenario` wrote equals single-process scoring (called from
    the index tests, which run it in the same spawned processes)."""
    _, _, _, calls, single = setup
    for name in calls:
        want = single[name]
        for rank in range(world):
            values, indices, ids, split = load(out, rank, name)
            assert split == calls[name]["kw"].get("split", split)
            # identical, ties included (integer data keeps every score exact for the query split too)
            np.testing.assert_array_equal(indices, want.indices.numpy(), err_msg=f"{name} rank {rank}")
            if split == "rows":
                np.testing.assert_array_equal(values, want.values.numpy(), err_msg=f"{name} rank {rank}")
            else:
                np.testing.assert_allclose(values, want.values.numpy(), rtol=1e-6, atol=1e-5)
            np.testing.assert_array_equal(ids, np.asarray(want.ids).astype(str))
    assert load(out, 0, "auto")[3] in ("rows", "queries")
    msg = (out / "rank0" / "mismatch.txt").read_text()
    assert "disagree" in msg and "every rank must make the same call" in msg
