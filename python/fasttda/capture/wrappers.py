"""Models wrapped for data parallelism: capture sees the module inside.

``DistributedDataParallel`` and ``DataParallel`` wrap the model and prefix every module
name with ``module.``; module names seed the projections, so capture unwraps them and the
features equal the plain model's. Capture needs no gradient all-reduce (weights are frozen
and each example's gradient is its own), so the forward runs on the inner module too.

FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps the module and its names; its hooks
gather the sharded weights for each forward, so capture works on it as on a plain model.
The legacy ``FullyShardedDataParallel`` wrapper flattens parameters and is refused.
"""
from __future__ import annotations

from torch import nn


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel wrappers (the model itself when not wrapped)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch built without distributed
        return model
    if isinstance(model, FullyShardedDataParallel):
        raise TypeError("capture does not support the FullyShardedDataParallel wrapper (FSDP1), which flattens "
                        "parameters; shard with FSDP2's torch.distributed.fsdp.fully_shard instead")
    return model
