"""``fasttda bench --busy``: a second process that keeps every core busy while the suites run.

Shared machines are the common case (CI runners, a colleague's training job): the figures
that matter there are ratios measured under load. The load is a torch float32 matmul loop
with one thread per core, in its own process, so it competes for cores and memory bandwidth
the way another user's job would. It is stopped when the `with` block ends, whatever happens.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

_LOOP = """
import os, torch
torch.set_num_threads({threads})
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a)
"""


@contextmanager
def busy_cores(enabled: bool = True, threads: int | None = None):
    """Run a busy loop on ``threads`` cores (default: all) for the duration of the block."""
    if not enabled:
        yield None
        return
    threads = threads or os.cpu_count() or 1
    proc = subprocess.Popen([sys.executable, "-c", _LOOP.format(threads=threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let it import torch and reach the loop
    if proc.poll() is not None:
        raise RuntimeError(f"the --busy load process exited at start (code {proc.returncode})")
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
