"""The few collectives fasttda needs, on whatever process group the user launched.

fasttda builds no launcher: it runs on ``torch.distributed`` as ``torchrun`` (one node or
many, c10d rendezvous) sets it up. Everything here works on gloo (CPU) and NCCL (GPU):
tensors only, no pickled objects, so a rank never unpickles what another rank sends.
"""
from __future__ import annotations

import datetime
import os

import torch

ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A distributed run cannot go on (the message says which rank and why)."""


def is_active(group=None) -> bool:
    """True under an initialized process group with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_world(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process, ``(0, 1)`` outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def launched_by_torchrun() -> bool:
    """True when the environment names a multi-process run (``torchrun`` sets these)."""
    return all(k in os.environ for k in ENV_KEYS) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group ``torchrun`` described in the environment, once.

    The backend is NCCL when ``device`` is a CUDA device, else gloo. Returns True when this
    call initialized the group (the caller then destroys it), False when there was nothing
    to do (no torchrun environment, or a group already initialized by the user).
    """
    import torch.distributed as dist

    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        return False
    use_cuda = device is not None and torch.device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return True


def join_torchrun(device: str | None = None) -> tuple[int, int]:
    """For a command: join the process group ``torchrun`` described, if any, and leave it when
    the process exits; returns ``(rank, world)`` (``(0, 1)`` when not launched by torchrun)."""
    if init_from_env(device):
        import atexit

        import torch.distributed as dist

        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return rank_world()


def comm_device(group=None) -> torch.device:
    """Where collective tensors must live for the group's backend (CUDA for NCCL)."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(ok: bool, message: str, group=None) -> None:
    """Raise `DistributedError` on every rank when any rank is not ``ok``.

    Ranks that hit a problem say what it was; the others say which ranks failed, so that
    no rank waits forever in a later collective that a failed rank never joins.
    """
    import torch.distributed as dist

    rank, world = rank_world(group)
    flags = torch.zeros(world, dtype=torch.int32, device=comm_device(group))
    flags[rank] = 0 if ok else 1
    dist.all_reduce(flags, group=group)
    failed = flags.nonzero().flatten().tolist()
    if failed:
        if not ok:
            raise DistributedError(f"rank {rank}: {message}")
        raise DistributedError(f"rank {rank}: stopping because rank(s) {failed} failed (see their messages)")


def check_same(values: list[int], what: str, group=None) -> None:
    """Raise on every rank unless every rank passed the same integers (shapes, counts)."""
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.int64, device=comm_device(group))
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(lo, hi):
        rank, _ = rank_world(group)
        raise DistributedError(f"rank {rank}: ranks disagree on {what}: this rank has {values}, the ranks range "
                               f"from {lo.tolist()} to {hi.tolist()}; every rank must make the same call")


def all_gather(t: torch.Tensor, group=None) -> torch.Tensor:
    """``[world, *t.shape]``: ``t`` from every rank (same shape and dtype on every rank)."""
    import torch.distributed as dist

    _, world = rank_world(group)
    dev = comm_device(group)
    send = t.to(dev).contiguous()
    out = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(out, send, group=group)
    return torch.stack(out).to(t.device)


def barrier(group=None) -> None:
    import torch.distributed as dist

    if is_active(group):
        dist.barrier(group=group)
