"""Machine facts a bench run records: versions, CPU/GPU, memory, load, git commit."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[3]
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        info["commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                        text=True, timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "unknown")


def machine_info(device: str) -> dict:
    import fasttda

    info = {
        # tells runs on one machine from runs on another without naming the host
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _total_memory(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "fasttda": fasttda.__version__,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "device": device,
        "device_name": _cpu_name(),
        "git": _git_commit(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, gpu_memory_bytes=props.total_memory,
                    gpu_sm_count=props.multi_processor_count,
                    gpu_capability=f"{props.major}.{props.minor}")
    return info


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_slug(info: dict) -> str:
    """A short file-name-safe device label: 'h100-80gb-hbm3', 'cpu-2cores-intel-xeon'."""
    if info["device"] == "cuda":
        name = info["device_name"].lower().replace("nvidia", "")
    else:
        name = f"cpu-{info['cpu_count']}cores-" + " ".join(info["cpu"].lower().split()[:3])
    slug = "".join(c if c.isalnum() else "-" for c in name)
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-") or info["device"]
