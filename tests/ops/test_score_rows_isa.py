"""The C++ scan's row conversions and dot tiles (csrc/cpu/score_rows.h) on every x86 width.

The extension is built with -march=native, so CI exercises only the vector width of the
machine it runs on; an AMD EPYC (AVX2, no AVX-512) or an old CPU takes other code paths
(W = 8 or 4 lanes, F16C or scalar half conversion, the fp8 NaN check at another width).
Here the header is compiled on its own for each width and checked against float64: the
builds run on this machine because its CPU is a superset of each target.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_isa_harness

HARNESS = Path(__file__).resolve().parents[1] / "csrc" / "score_rows_check.cpp"


# march, the flag this CPU needs to run it, the vector width the header must pick
TARGETS = [("x86-64", None, 4), ("haswell", "avx2", 8), ("skylake-avx512", "avx512f", 16)]


@pytest.mark.parametrize("march,needs,width", TARGETS)
def test_score_rows_every_width(tmp_path, march, needs, width):
    out = run_isa_harness(tmp_path, HARNESS, [f"-march={march}"], needs)
    assert f"W={width}\n" in out
    assert out.count("worst/bound") == 5 * 6 * 6
