"""Just-in-time builds of the compiled kernels in ``csrc/``, cached and locked.

Nothing here runs at import time. The first op that asks for the CUDA (or the C++ CPU)
backend calls `load()`; it compiles with ninja through ``torch.utils.cpp_extension``
into a cache folder keyed by a hash of the sources, the flags, the GPU architecture and
the torch version, under a file lock so that concurrent processes build once. A failed
build raises `BackendUnavailable` carrying the compiler's reason, and is remembered for
the life of the process so a fallback does not rebuild on every call.

Cache: ``$FASTTDA_CACHE_DIR`` or ``~/.cache/fasttda/extensions``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

from fasttda._dispatch import BackendUnavailable

logger = logging.getLogger("fasttda")

CSRC = Path(__file__).resolve().parent / "csrc"
if not CSRC.is_dir():  # editable install from the source tree: csrc/ sits beside python/
    CSRC = Path(__file__).resolve().parents[2] / "csrc"

# The C++ standard is left to torch.utils.cpp_extension, which knows what its headers need.
CUDA_FLAGS = ["-O3", "-lineinfo"]
CPU_FLAGS = ["-O3", "-fopenmp", "-march=native", "-fno-math-errno"]  # errno-free sqrt vectorizes

_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}


def cache_root() -> Path:
    root = os.environ.get("FASTTDA_CACHE_DIR") or Path.home() / ".cache" / "fasttda" / "extensions"
    return Path(root)


def _sources(kind: str) -> list[Path]:
    if kind == "cuda":
        return sorted(CSRC.glob("*.cu")) + [CSRC / "cuda_bindings.cpp"]
    if kind == "cpu":
        return sorted((CSRC / "cpu").glob("*.cpp"))
    raise ValueError(f"kind={kind!r}: expected 'cuda' or 'cpu'")


def _headers(kind: str) -> list[Path]:
    folder = CSRC if kind == "cuda" else CSRC / "cpu"
    return sorted(p for pattern in ("*.h", "*.cuh") for p in folder.glob(pattern))


def _stage_sources(build_dir: Path, files: list[Path]) -> list[Path]:
    """Copy the sources into the build folder and return the copies.

    The build then names the same paths whichever checkout, venv or wheel asked for it,
    so torch's JIT (which rebuilds when its build file changes) never rebuilds a cached
    extension because another copy of fasttda, with its sources elsewhere, loaded it.
    """
    src = build_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    staged = []
    for f in files:
        dest = src / f.name
        data = f.read_bytes()
        if not dest.is_file() or dest.read_bytes() != data:
            tmp = dest.with_name(dest.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        staged.append(dest)
    return staged


def _cpu_features() -> str:
    """What -march=native compiles for: a binary cached for one CPU must not load on another."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    return platform.processor() or "cpu"


def _cuda_arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    # sm_90a unlocks wgmma/TMA; it is only valid on exactly 9.0 parts.
    return f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")


def build_key(kind: str, sources: list[Path], flags: list[str], arch: str) -> str:
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    for part in (*flags, arch, torch.__version__, str(torch.version.cuda), platform.machine(), kind):
        h.update(part.encode())
    return h.hexdigest()[:16]


def load(kind: str = "cuda"):
    """Build (once) and import the extension; raise `BackendUnavailable` saying why not."""
    if kind in _loaded:
        return _loaded[kind]
    if os.environ.get("FASTTDA_NO_BUILD"):  # a switch, checked on every call and never remembered
        raise BackendUnavailable(f"the fasttda {kind} extension is disabled by FASTTDA_NO_BUILD")
    if kind in _failed:
        raise BackendUnavailable(_failed[kind])
    try:
        module = _build(kind)
    except BackendUnavailable as exc:
        _failed[kind] = str(exc)
        raise
    except Exception as exc:  # compiler errors arrive as RuntimeError/OSError/CalledProcessError
        _failed[kind] = f"the fasttda {kind} extension failed to build: {type(exc).__name__}: {exc}"
        raise BackendUnavailable(_failed[kind]) from exc
    _loaded[kind] = module
    return module


def _build(kind: str):
    if kind == "cuda":
        if torch.version.cuda is None:
            raise BackendUnavailable("the CUDA extension needs a CUDA build of torch; this torch is CPU-only")
        if not torch.cuda.is_available():
            raise BackendUnavailable("the CUDA extension needs a visible CUDA device")
    sources = _sources(kind)
    if not sources or not all(s.is_file() for s in sources):
        raise BackendUnavailable(f"the fasttda {kind} extension sources are missing under {CSRC}")

    from filelock import FileLock
    from torch.utils import cpp_extension

    flags = CUDA_FLAGS if kind == "cuda" else CPU_FLAGS
    arch = _cuda_arch() if kind == "cuda" else _cpu_features()
    key = build_key(kind, sources + _headers(kind), flags, arch)
    build_dir = cache_root() / f"{kind}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    if kind == "cuda":
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    if not (build_dir / f"fasttda_{kind}_{key}.so").exists():
        logger.warning("fasttda: building the %s kernels once (cached in %s); this takes a minute or two",
                       kind, build_dir)
    with FileLock(str(build_dir) + ".lock"):
        staged = _stage_sources(build_dir, sources + _headers(kind))[: len(sources)]
        return cpp_extension.load(
            name=f"fasttda_{kind}_{key}",
            sources=[str(s) for s in staged],
            extra_cflags=CPU_FLAGS if kind == "cpu" else ["-O3"],
            extra_cuda_cflags=CUDA_FLAGS if kind == "cuda" else None,
            extra_ldflags=["-fopenmp"] if kind == "cpu" else None,
            build_directory=str(build_dir),
            verbose=bool(os.environ.get("FASTTDA_VERBOSE_BUILD")),
        )
