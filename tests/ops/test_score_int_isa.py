"""The C++ scan's integer dot products (csrc/cpu/score_int.h) on every x86 instruction set.

The extension is built with -march=native, so CI exercises only its own machine's path
(VNNI on recent Intel and AMD Zen 4, vpmaddubsw on AVX2-only AMD EPYC, scalar elsewhere).
Here the header is compiled on its own for each set and its scores must equal the exact
integer sums rounded to float32, bit for bit: the builds run on this machine because its
CPU is a superset of each target.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_isa_harness

HARNESS = Path(__file__).resolve().parents[1] / "csrc" / "score_int_check.cpp"

# flags, the CPU flag needed to run the build, the bytes per vector step the header must pick, its int8 bias
TARGETS = [
    (["-march=x86-64"], None, 16, 0),
    (["-march=haswell"], "avx2", 32, 0),
    (["-march=haswell", "-mavxvnni"], "avx_vnni", 32, 128),
    (["-march=skylake-avx512", "-mavx512vnni"], "avx512_vnni", 64, 128),
]


@pytest.mark.parametrize("flags,needs,width,bias", TARGETS, ids=["sse2", "avx2", "avx-vnni", "avx512-vnni"])
def test_score_int_every_isa(tmp_path, flags, needs, width, bias):
    out = run_isa_harness(tmp_path, HARNESS, flags, needs)
    assert f"kIntBytes={width} bias={bias}\n" in out
    assert out.count("mismatches 0") == 6 * 6 * 2 + 2
