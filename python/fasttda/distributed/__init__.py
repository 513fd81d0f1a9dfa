"""fasttda on ``torch.distributed``: index and score under ``torchrun``, one node or many.

fasttda builds no launcher of its own: it runs inside the process group that ``torchrun``
(c10d rendezvous) or the user's own code set up, on gloo (CPU) or NCCL (GPU).

* `index`: each rank captures a disjoint, contiguous, batch-aligned slice of the data into
  its own part of the store (the usual commit protocol, so a killed rank resumes its own
  slice); when every part is complete, rank 0 joins them into one `FeatureStore` whose
  rows, ids and shard files equal a single-process build, byte for byte.
* `score` (also reached as `fasttda.score` under an initialized process group): each rank
  scores the rows it owns and the per-rank top-k are merged with ``all_gather``, or the
  queries are split when the store is small and the queries many.
* Capture of models wrapped in DDP or sharded with FSDP2 (``fully_shard``) works through
  `fasttda.GradientCapture` as for the plain model.
"""
from fasttda.distributed.comm import DistributedError, init_from_env, is_active, join_torchrun, rank_world
from fasttda.distributed.scoring import DistTopK, score

__all__ = ["DistTopK", "DistributedError", "index", "init_from_env", "is_active", "join_torchrun", "query_features", "rank_world",
           "score"]


def __getattr__(name):  # the pipeline (and so transformers) is imported only when indexing
    if name == "index":
        from fasttda.distributed.indexing import index

        return index
    if name == "query_features":
        from fasttda.distributed.features import query_features

        return query_features
    raise AttributeError(f"module 'fasttda.distributed' has no attribute {name!r}")
