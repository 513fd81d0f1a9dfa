"""Shared test helpers (tests/ is on pytest's pythonpath)."""
import os

import pytest
import torch


def triton_interpreter_or_gpu() -> bool:
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


needs_triton = pytest.mark.skipif(
    not triton_interpreter_or_gpu(), reason="needs a GPU or TRITON_INTERPRET=1 with triton installed"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def triton_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
