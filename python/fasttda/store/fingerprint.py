"""Model fingerprints: which weights a store's features came from.

``model_fingerprint(model)`` hashes, in name order, each parameter's name, dtype, shape
and raw bytes with SHA-256, streaming them through the CPU in bounded pieces (a 7B model
never needs a second copy in memory). Two models fingerprint equal iff those all match;
device, strides and module registration order do not matter.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Mapping

import torch

STREAM_BYTES = 1 << 26  # bytes moved to the CPU per hash update


def model_fingerprint(model, name: str | None = None, *, trainable_only: bool = False,
                      include_buffers: bool = False) -> dict:
    """``{"name", "sha256", "tensors", "numel", "bytes"}`` for a module or a state dict.

    Args:
        model: a ``torch.nn.Module`` or a mapping name -> tensor (a state dict).
        name: a human label (e.g. the checkpoint path); defaults to the model's class name.
        trainable_only: hash only parameters with ``requires_grad`` (e.g. LoRA adapters).
        include_buffers: also hash buffers (batch-norm statistics and the like).
    """
    if isinstance(model, torch.nn.Module):
        items = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
        if include_buffers:
            items += list(model.named_buffers())
        label = name or type(model).__name__
    elif isinstance(model, Mapping):
        if trainable_only or include_buffers:
            raise ValueError("trainable_only and include_buffers need a torch.nn.Module, not a state dict")
        items = list(model.items())
        label = name or "state_dict"
    else:
        raise TypeError(f"model must be a torch.nn.Module or a mapping of tensors, got {type(model).__name__}")
    digest, tensors, numel, nbytes = _hash_tensors(items)
    return {"name": str(label), "sha256": digest, "tensors": tensors, "numel": numel, "bytes": nbytes}


def _hash_tensors(items: Iterable) -> tuple[str, int, int, int]:
    h = hashlib.sha256()
    tensors = numel = nbytes = 0
    seen = set()
    for key, t in sorted(items, key=lambda kv: kv[0]):
        if key in seen:
            raise ValueError(f"tensor name {key!r} appears twice")
        seen.add(key)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{key!r} is a {type(t).__name__}, not a tensor")
        if t.device.type == "meta":
            raise ValueError(f"{key!r} is on the meta device: materialize the weights before fingerprinting")
        t = t.detach()
        header = f"{key}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode()
        h.update(len(header).to_bytes(8, "little") + header)
        flat = t.reshape(-1)
        step = max(1, STREAM_BYTES // max(1, t.element_size()))
        for lo in range(0, flat.numel(), step):
            piece = flat[lo:lo + step].to("cpu").contiguous()
            h.update(memoryview(piece.view(torch.uint8).numpy()))
        tensors += 1
        numel += t.numel()
        nbytes += t.numel() * t.element_size()
    return h.hexdigest(), tensors, numel, nbytes
