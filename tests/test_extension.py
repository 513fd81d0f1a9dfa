"""The kernel-build cache: a real lock a killed builder cannot leave behind, a stale torch
lock cleared, one line saying what is built and for how long, and cached builds loaded
without running ninja (issue 11 case 7, issue 17 item 3)."""
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fasttda import _extension

HOLD = textwrap.dedent("""
    import sys, time
    from fasttda._flock import FileLock
    FileLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _holder(lock_path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _compile(build_dir, calls, value):
    def compile_():
        calls.append(sorted(p.name for p in build_dir.iterdir()))
        (build_dir / "mod.py").write_text(f"VALUE = {value!r}\n")
        return _extension._import_library("fasttda_test_mod", build_dir / "mod.py")
    return compile_


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTTDA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_killed_builder_blocks_nobody_and_its_stale_lock_is_cleared(cache, caplog):
    build_dir = cache / "cpu-abc"
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # torch's FileBaton, left by a build killed mid-way
    holder = _holder(str(build_dir) + ".lock", 600)
    holder.send_signal(signal.SIGKILL)  # killed while holding the lock
    holder.wait()
    calls = []
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fasttda"):
        module = _extension.cached_build("cpu", "fasttda_test_mod", build_dir, _compile(build_dir, calls, 1),
                                         "the test kernels (1 file)", library="mod.py")
    assert time.monotonic() - start < 30 and module.VALUE == 1
    assert calls == [[]]  # the stale lock was gone before the compiler ran
    building = [r.getMessage() for r in caplog.records if "building" in r.getMessage()]
    assert len(building) == 1 and "\n" not in building[0]
    assert "the test kernels (1 file)" in building[0] and "usually takes about" in building[0]


def test_a_live_builder_is_waited_for_with_a_message(cache, caplog):
    build_dir = cache / "cpu-def"
    build_dir.mkdir(parents=True)
    holder = _holder(str(build_dir) + ".lock", 2)
    calls = []
    with caplog.at_level(logging.WARNING, logger="fasttda"):
        _extension.cached_build("cpu", "fasttda_test_mod", build_dir, _compile(build_dir, calls, 2), "the test kernels",
                                library="mod.py")
    holder.wait()
    assert any("waiting for another process" in r.getMessage() for r in caplog.records)
    assert len(calls) == 1


def test_a_completed_build_loads_without_compiling_and_the_time_is_remembered(cache, caplog):
    build_dir = cache / "cpu-ghi"
    calls = []
    _extension.cached_build("cpu", "fasttda_test_mod", build_dir, _compile(build_dir, calls, 3), "the test kernels",
                            library="mod.py")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fasttda"):
        again = _extension.cached_build("cpu", "fasttda_test_mod", build_dir,
                                        lambda: pytest.fail("a completed build must not be rebuilt"),
                                        "the test kernels", library="mod.py")
    assert again.VALUE == 3 and not caplog.records and len(calls) == 1
    assert "(measured on this machine)" in _extension._usual("cpu")


def test_the_real_cpu_build_loads_from_cache_without_ninja(tmp_path):
    """After one build (which the cpp-backend tests need anyway), a process whose ninja is another
    version (here: one that fails when run) still loads the cached kernels: the key holds no ninja
    version and a completed build never runs ninja again."""
    state = _extension.prepare("cpu")
    if state["cpu"] != "ready":
        pytest.skip(f"no C++ toolchain to build the CPU kernels here: {state['cpu']}")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ninja").write_text("#!/bin/sh\necho ninja 9.9 must not run >&2\nexit 3\n")
    (fake / "ninja").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    code = "from fasttda import _extension as e; print(e.prepare('cpu')['cpu'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.strip() == "ready", done.stderr
    assert "must not run" not in done.stderr and "building" not in done.stderr
