"""The C++ scan's row conversions and dot tiles (csrc/cpu/score_rows.h) on every x86 width.

The extension is built with -march=native, so CI exercises only the vector width of the
machine it runs on; an AMD EPYC (AVX2, no AVX-512) or an old CPU takes other code paths
(W = 8 or 4 lanes, F16C or scalar half conversion, the fp8 NaN check at another width).
Here the header is compiled on its own for each width and checked against float64: the
builds run on this machine because its CPU is a superset of each target.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import cpu_flags, cxx_or_skip

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "csrc" / "score_rows_check.cpp"


# march, the flag this CPU needs to run it, the vector width the header must pick
TARGETS = [("x86-64", None, 4), ("haswell", "avx2", 8), ("skylake-avx512", "avx512f", 16)]


@pytest.mark.parametrize("march,needs,width", TARGETS)
def test_score_rows_every_width(tmp_path, march, needs, width):
    cxx = cxx_or_skip()
    flags = cpu_flags()
    if "sse2" not in flags:
        pytest.skip("not an x86-64 CPU")
    if needs and needs not in flags:
        pytest.skip(f"this CPU cannot run {march} code (no {needs})")
    exe = tmp_path / f"check_{march}"
    subprocess.run([cxx, "-O2", f"-march={march}", "-std=c++17", "-I", str(ROOT / "csrc" / "cpu"), str(HARNESS),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert f"W={width}\n" in result.stdout
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout[-2000:]
    assert result.stdout.count("worst/bound") == 5 * 6 * 6
