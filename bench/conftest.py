"""pytest-benchmark suites for the CPU ops (not part of the test run: testpaths is tests/).

    pytest bench/ --benchmark-only                     # run
    pytest bench/ --benchmark-only --benchmark-autosave # keep a run under .benchmarks/
    pytest-benchmark compare 0001 0002                 # compare two saved runs

Shapes are small enough for a laptop; the full comparisons against the anchors are
`fasttda bench` (see bench/README.md).
"""
import pytest
import torch


@pytest.fixture
def randn():
    """Seeded normal inputs (never zeros)."""
    g = torch.Generator().manual_seed(1234)
    return lambda *shape: torch.randn(*shape, generator=g)
