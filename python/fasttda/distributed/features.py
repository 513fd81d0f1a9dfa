"""Query features under ``torchrun``: each rank featurizes a batch-aligned slice of the
queries and the slices are gathered, so every rank holds all of them, equal bit for bit to
a single process's (same batches, same padding)."""
from __future__ import annotations

from typing import Sequence

import torch

from fasttda.distributed import comm
from fasttda.distributed.indexing import slices


def query_features(checkpoint, queries: Sequence, config, *, contrast: bool = False, progress: bool = False,
                   group=None) -> torch.Tensor:
    """`fasttda.pipeline.query_features` with the queries split over the ranks of ``group``."""
    from fasttda import pipeline

    rank, world = comm.rank_world(group)
    if world == 1 or not len(queries):
        return pipeline.query_features(checkpoint, queries, config, contrast=contrast, progress=progress)
    comm.check_same([len(queries), config.batch_size], "the number of queries and the batch size", group)
    cuts = slices(len(queries), config.batch_size, world)
    lo, hi = cuts[rank]
    ok, message, mine = True, "", None
    try:
        mine = pipeline.query_features(checkpoint, queries[lo:hi], config, contrast=contrast,
                                       progress=progress and rank == 0) \
            if hi > lo else None
    except Exception as exc:  # every rank must hear of it, or the others hang in all_gather
        ok, message = False, f"{type(exc).__name__}: {exc}"
    comm.agree(ok, message, group)
    dims = torch.tensor([-1 if mine is None else mine.shape[1]])
    dim = int(comm.all_gather(dims, group).max())
    longest = max(h - l for l, h in cuts)
    padded = torch.zeros(longest, dim)
    if mine is not None:
        padded[: hi - lo] = mine
    gathered = comm.all_gather(padded, group)
    return torch.cat([gathered[r, : h - l] for r, (l, h) in enumerate(cuts)])
