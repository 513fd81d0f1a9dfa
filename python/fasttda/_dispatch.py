"""The one place that decides which implementation of an op runs.

Every op is registered once as an `Op` with up to three forms:

* ``reference``: pure PyTorch. It is the CPU path and the test oracle; it also runs
  on CUDA tensors (slowly) so that a broken kernel can always be bypassed.
* ``triton``: a Triton kernel from ``fasttda.kernels``. It runs on CUDA tensors, and on
  CPU tensors when ``TRITON_INTERPRET=1`` (that is how CI checks kernels without a GPU).
* ``cuda``: a kernel from the JIT-built CUDA extension (``fasttda._extension``).
* ``cpp``: a C++ CPU kernel from the JIT-built CPU extension, for CPU tensors, where a
  fused loop beats composed torch ops (int8 dequantize inside the dot product, say).

Forms are given as import paths and imported on first use, so importing fasttda never
imports triton or builds anything.

``backend="auto"`` (or ``None``) resolves through the env ``FASTTDA_BACKEND`` first, then
picks CUDA extension → Triton → reference for CUDA tensors, and the C++ CPU kernel (when
the op has one and it builds) → reference for CPU tensors. An explicit backend that cannot run the given tensors raises
`BackendUnavailable` saying why; it never silently falls back.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

BACKENDS = ("auto", "reference", "triton", "cuda", "cpp")
ENV_VAR = "FASTTDA_BACKEND"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run these inputs (the message says why)."""


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_import_error() -> str | None:
    """None when triton imports, else the reason it does not."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def _import(path: str) -> Callable:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Op:
    """An op's forms: the reference callable plus lazily imported kernel launchers.

    ``triton`` and ``cuda`` are ``"module:function"`` strings naming Python launchers (the
    CUDA one is imported only once the CUDA extension has built, see
    `fasttda._extension.load`); ``cpp`` names a function of the compiled CPU extension.
    """

    name: str
    reference: Callable
    triton: str | None = None
    cuda: str | None = None
    cpp: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def resolve(
        self, backend: str | None, device: torch.device, unsupported: dict[str, str] | None = None
    ) -> tuple[str, Callable]:
        """Return ``(backend_name, implementation)`` for tensors on ``device``.

        ``unsupported`` maps a form that cannot serve this call's arguments (a kernel that
        covers one kind only, say) to the reason: ``auto`` passes over it, and asking for it
        by name (argument or ``FASTTDA_BACKEND``) raises `BackendUnavailable` with that reason.
        """
        requested = _requested(backend)
        unsupported = unsupported or {}
        if requested == "auto":
            return self._auto(device, unsupported)
        if requested in unsupported:
            via = f" (from {ENV_VAR})" if backend in (None, "auto") else ""
            raise BackendUnavailable(f"{self.name}: backend={requested!r}{via} {unsupported[requested]}")
        if requested == "reference":
            return "reference", self.reference
        if requested == "triton":
            return "triton", self._triton(device)
        if requested == "cpp":
            return "cpp", self._cpp(device)
        return "cuda", self._cuda(device)

    # -- the three rules --------------------------------------------------------------
    def _auto(self, device: torch.device, unsupported: dict[str, str]) -> tuple[str, Callable]:
        if device.type == "cuda":
            for name, getter in (("cuda", self._cuda), ("triton", self._triton)):
                if name in unsupported:
                    continue
                try:
                    return name, getter(device)
                except BackendUnavailable:
                    continue
        elif device.type == "cpu" and self.cpp is not None and "cpp" not in unsupported:
            try:
                return "cpp", self._cpp(device)
            except BackendUnavailable:
                pass
        return "reference", self.reference

    def _triton(self, device: torch.device) -> Callable:
        if self.triton is None:
            raise BackendUnavailable(f"{self.name}: there is no Triton kernel for this op; use backend='reference'")
        if device.type != "cuda" and not triton_interpreted():
            raise BackendUnavailable(
                f"{self.name}: backend='triton' needs CUDA tensors, got tensors on {device} "
                "(set TRITON_INTERPRET=1 to run Triton kernels on the CPU interpreter)"
            )
        reason = triton_import_error()
        if reason:
            raise BackendUnavailable(f"{self.name}: backend='triton' unavailable: {reason}")
        if "triton" not in self._cache:
            self._cache["triton"] = _import(self.triton)
        return self._cache["triton"]

    def _cuda(self, device: torch.device) -> Callable:
        if self.cuda is None:
            raise BackendUnavailable(f"{self.name}: there is no CUDA kernel for this op; use 'triton' or 'reference'")
        if device.type != "cuda":
            raise BackendUnavailable(f"{self.name}: backend='cuda' needs CUDA tensors, got tensors on {device}")
        from fasttda import _extension

        _extension.load("cuda")  # raises BackendUnavailable with the build error
        if "cuda" not in self._cache:
            self._cache["cuda"] = _import(self.cuda)
        return self._cache["cuda"]

    def _cpp(self, device: torch.device) -> Callable:
        if self.cpp is None:
            raise BackendUnavailable(f"{self.name}: there is no C++ CPU kernel for this op; use 'reference'")
        if device.type != "cpu":
            raise BackendUnavailable(f"{self.name}: backend='cpp' needs CPU tensors, got tensors on {device}")
        from fasttda import _extension

        return getattr(_extension.load("cpu"), self.cpp)


def _requested(backend: str | None) -> str:
    if backend is None or backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one of {BACKENDS}")
        return env or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not a backend; expected one of {BACKENDS}")
    return backend


def common_device(*tensors: torch.Tensor, names: tuple[str, ...] = ()) -> torch.device:
    """The device all tensors live on, or a ValueError naming the odd one out."""
    devices = [t.device for t in tensors if t is not None]
    if not devices:
        return torch.device("cpu")
    first = devices[0]
    for i, d in enumerate(devices[1:], start=1):
        if d != first:
            label = names[i] if i < len(names) else f"argument {i}"
            head = names[0] if names else "argument 0"
            raise ValueError(f"{label} is on {d} but {head} is on {first}; move them to one device")
    return first
