"""The one launch point of every Triton kernel in `fasttda.kernels` (a torch-only leaf).

Launchers call ``launch(kernel, grid, *args, **kwargs)`` instead of ``kernel[grid](...)``
and ask ``multiprocessor_count(device)`` instead of the CUDA runtime. That gives the
compile check (`fasttda.kernels_check`) one seam: it installs a recorder, calls the real
launchers with ``meta`` tensors (real dtypes, shapes, strides and byte offsets, no memory),
and compiles each launch for a chosen GPU target instead of running it.

Device kinds a launcher sees:
* ``cpu``: the Triton interpreter (``TRITON_INTERPRET=1``); small tiles, few programs.
* ``cuda``: a GPU.
* ``meta``: the compile check, which stands for a GPU with ``recorder.sm_count`` SMs.
"""
from __future__ import annotations

import os

import torch

# Set by the compile check while it records launches; None otherwise.
recorder = None

# The CUDA limits on a launch grid: x < 2**31, y and z <= 65535.
MAX_GRID = (2**31 - 1, 65535, 65535)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreted(device: torch.device) -> bool:
    """True where kernels run under the interpreter (CPU tensors)."""
    return device.type == "cpu"


def multiprocessor_count(device: torch.device) -> int:
    """SMs of the GPU behind ``device``; 0 under the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "meta" and recorder is not None:
        return recorder.sm_count
    return 0


def check_grid(grid) -> None:
    for axis, (n, limit) in enumerate(zip(grid, MAX_GRID)):
        if n > limit:
            raise ValueError(f"launch grid {tuple(grid)} exceeds the CUDA limit {limit} on axis {axis}")


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, or hand it to the compile check's recorder."""
    grid = tuple(int(g) for g in grid)
    if recorder is not None:
        return recorder(kernel, grid, args, kwargs)
    check_grid(grid)
    return kernel[grid](*args, **kwargs)


def as_i32(key: int) -> int:
    """A 32-bit hash key as a signed int32 with the same bits.

    Keys and offsets are launch arguments marked ``do_not_specialize``; passing every key as
    int32 (rather than int32 below 2**31 and int64 above) also keeps its type fixed, so a new
    seed never compiles a new kernel. Kernels read the bits back with ``.to(tl.uint32)``.
    """
    key &= 0xFFFFFFFF
    return key - (1 << 32) if key >= (1 << 31) else key
