"""The C++ scan's integer dot products (csrc/cpu/score_int.h) on every x86 instruction set.

The extension is built with -march=native, so CI exercises only its own machine's path
(VNNI on recent Intel and AMD Zen 4, vpmaddubsw on AVX2-only AMD EPYC, scalar elsewhere).
Here the header is compiled on its own for each set and its scores must equal the exact
integer sums rounded to float32, bit for bit: the builds run on this machine because its
CPU is a superset of each target.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import cpu_flags, cxx_or_skip

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "csrc" / "score_int_check.cpp"

# flags, the CPU flag needed to run the build, the bytes per vector step the header must pick, its int8 bias
TARGETS = [
    (["-march=x86-64"], None, 16, 0),
    (["-march=haswell"], "avx2", 32, 0),
    (["-march=haswell", "-mavxvnni"], "avx_vnni", 32, 128),
    (["-march=skylake-avx512", "-mavx512vnni"], "avx512_vnni", 64, 128),
]


@pytest.mark.parametrize("flags,needs,width,bias", TARGETS, ids=["sse2", "avx2", "avx-vnni", "avx512-vnni"])
def test_score_int_every_isa(tmp_path, flags, needs, width, bias):
    cxx = cxx_or_skip()
    have = cpu_flags()
    if "sse2" not in have:
        pytest.skip("not an x86-64 CPU")
    if needs and needs not in have:
        pytest.skip(f"this CPU cannot run {' '.join(flags)} code (no {needs})")
    exe = tmp_path / "check"
    subprocess.run([cxx, "-O2", *flags, "-std=c++17", "-I", str(ROOT / "csrc" / "cpu"), str(HARNESS), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert f"kIntBytes={width} bias={bias}\n" in result.stdout
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout[-2000:]
    assert result.stdout.count("mismatches 0") == 6 * 6 * 2 + 2
