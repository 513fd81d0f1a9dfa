"""Just-in-time builds of the compiled kernels in ``csrc/``, cached and locked.

Nothing here runs at import time. The first op that asks for the CUDA (or the C++ CPU)
backend calls `load()`; `prepare()` does the same up front (the demo and the benchmarks
call it before anything is timed). It compiles with ninja through
``torch.utils.cpp_extension`` into a cache folder keyed by a hash of the sources, the
flags, the CPU features or GPU architecture and the torch version (not the ninja
version: a completed build is imported directly, without running ninja), under an
``fcntl`` lock that the OS releases if the builder dies, so concurrent processes build
once and a killed build never blocks the next. A first build says on one line what it
builds and how long that usually takes. A failed build raises `BackendUnavailable`
carrying the compiler's reason, and is remembered for the life of the process so a
fallback does not rebuild on every call.

Cache: ``$FASTTDA_CACHE_DIR`` or ``~/.cache/fasttda/extensions``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from fasttda._dispatch import BackendUnavailable
from fasttda._flock import FileLock

logger = logging.getLogger("fasttda")

# `fasttda.csrc` is the top-level csrc/ in a source tree and ships inside the package in
# wheels; fasttda/__init__.py makes the one resolve like the other.
CSRC = Path(importlib.util.find_spec("fasttda.csrc").submodule_search_locations[0]).resolve()

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
    """The headers a build stages beside its sources (flat, so a source includes them by
    name): its own (csrc/*.cuh, csrc/cpu/*.h) and the host/device ones both kernels
    include (csrc/*.h, e.g. the counter hash)."""
    own = sorted(CSRC.glob("*.cuh")) if kind == "cuda" else sorted((CSRC / "cpu").glob("*.h"))
    return own + sorted(CSRC.glob("*.h"))


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


def prepare(kinds=None, *, log=None) -> dict:
    """Build, or load the cached build of, the compiled kernels now, before anything is timed.

    ``kinds``: ``"cpu"``, ``"cuda"`` or a list of them; default: the C++ CPU kernels, plus
    the CUDA ones when a CUDA device is visible. A first build says on one line what it
    builds and how long that usually takes; a cached build loads without running ninja.
    Never raises for a missing compiler or device: returns ``{kind: "ready" | reason}``.
    """
    if kinds is None:
        kinds = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif isinstance(kinds, str):
        kinds = [kinds]
    out = {}
    for kind in kinds:
        try:
            load(kind)
            out[kind] = "ready"
        except BackendUnavailable as exc:
            out[kind] = str(exc)
            if log is not None:
                log(f"fasttda: the {kind} kernels are unavailable ({str(exc).splitlines()[0]})")
    return out


def _build(kind: str):
    if kind == "cuda":
        if torch.version.cuda is None:
            raise BackendUnavailable("the CUDA extension needs a CUDA build of torch; this torch is CPU-only")
        if not torch.cuda.is_available():
            raise BackendUnavailable("the CUDA extension needs a visible CUDA device")
    sources = _sources(kind)
    if not sources or not all(s.is_file() for s in sources):
        raise BackendUnavailable(f"the fasttda {kind} extension sources are missing under {CSRC}")

    flags = CUDA_FLAGS if kind == "cuda" else CPU_FLAGS
    arch = _cuda_arch() if kind == "cuda" else _cpu_features()
    key = build_key(kind, sources + _headers(kind), flags, arch)
    name = f"fasttda_{kind}_{key}"
    build_dir = cache_root() / f"{kind}-{key}"

    def compile_():
        from torch.utils import cpp_extension

        if kind == "cuda":
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        staged = _stage_sources(build_dir, sources + _headers(kind))[: len(sources)]
        return cpp_extension.load(
            name=name,
            sources=[str(s) for s in staged],
            extra_cflags=CPU_FLAGS if kind == "cpu" else ["-O3"],
            extra_cuda_cflags=CUDA_FLAGS if kind == "cuda" else None,
            extra_ldflags=["-fopenmp"] if kind == "cpu" else None,
            build_directory=str(build_dir),
            verbose=bool(os.environ.get("FASTTDA_VERBOSE_BUILD")),
        )

    what = f"the {DESCRIPTION[kind]} ({len(sources)} files in {sources[0].parent})"
    return cached_build(kind, name, build_dir, compile_, what)


DESCRIPTION = {"cpu": "C++ CPU kernels", "cuda": "CUDA kernels"}
TYPICAL_SECONDS = {"cpu": 150, "cuda": 240}  # a first build on a 2-core machine, when none was timed here
DONE = "build.json"


def cached_build(kind: str, name: str, build_dir: Path, compile_, what: str, library: str | None = None):
    """Import the build ``<build_dir>/<library>`` (``<name>.so``), compiling it first (once, under a real lock) if it is not complete.

    A build is complete when ``build.json`` names its library: then it is imported directly,
    without running ninja, so neither a ninja upgrade nor its logs can trigger a rebuild.
    The lock is ``fcntl.flock`` on ``<build_dir>.lock``, released by the OS if the builder
    dies; under it, any lock file a killed ``torch.utils.cpp_extension`` build left in
    ``build_dir`` is stale and is removed (it would make the build wait forever).
    """
    library = library or f"{name}.so"
    module = _load_complete(name, build_dir)
    if module is not None:
        return module
    build_dir.mkdir(parents=True, exist_ok=True)
    waiting = lambda path: logger.warning("fasttda: waiting for another process building %s (lock %s)", what, path)
    with FileLock(str(build_dir) + ".lock", on_wait=waiting):
        module = _load_complete(name, build_dir)  # built by the process we waited for
        if module is not None:
            return module
        stale = build_dir / "lock"
        if stale.exists() or stale.is_symlink():
            logger.warning("fasttda: removing a stale build lock %s left by a killed build", stale)
            stale.unlink()
        logger.warning("fasttda: building %s once per machine into %s; this usually takes %s", what, build_dir,
                       _usual(kind))
        start = time.monotonic()
        module = compile_()
        seconds = time.monotonic() - start
        record = {"library": library, "seconds": round(seconds, 1), "torch": torch.__version__,
                  "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(build_dir / DONE, record)
        _remember_time(kind, seconds)
        logger.warning("fasttda: built the %s in %.0f s", DESCRIPTION.get(kind, kind), seconds)
    return module


def _load_complete(name: str, build_dir: Path):
    try:
        record = json.loads((build_dir / DONE).read_text())
        library = build_dir / record["library"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not library.is_file() or library.parent != build_dir:
        return None
    return _import_library(name, library)


def _import_library(name: str, library: Path):
    """Import a built extension module from its file (what cpp_extension does once it has built)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise BackendUnavailable(f"cannot import the built extension {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _usual(kind: str) -> str:
    times = _read_times().get(kind) or []
    if times:
        return f"about {_minutes(sorted(times)[len(times) // 2])} (measured on this machine)"
    return f"about {_minutes(TYPICAL_SECONDS.get(kind, 120))} on a 2-core machine"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _read_times() -> dict:
    try:
        times = json.loads((cache_root() / "build_times.json").read_text())
        return times if isinstance(times, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember_time(kind: str, seconds: float) -> None:
    times = _read_times()
    times[kind] = (list(times.get(kind) or []) + [round(seconds, 1)])[-5:]
    try:
        _write_json(cache_root() / "build_times.json", times)
    except OSError:
        pass


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
