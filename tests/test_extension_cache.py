"""The JIT build cache: keyed by every source and header, and shared by every checkout."""
from pathlib import Path

from fasttda import _extension


def _fake_csrc(root: Path, body: str) -> list[Path]:
    root.mkdir(parents=True)
    (root / "kern.cpp").write_text(f'#include "util.h"\n{body}\n')
    (root / "util.h").write_text("inline int one() { return 1; }\n")
    return [root / "kern.cpp", root / "util.h"]


def test_two_checkouts_build_from_the_same_staged_paths(tmp_path):
    a = _fake_csrc(tmp_path / "checkout_a" / "csrc", "int f() { return one(); }")
    b = _fake_csrc(tmp_path / "checkout_b" / "csrc", "int f() { return one(); }")
    build = tmp_path / "cache" / "cpu-key"
    staged_a = _extension._stage_sources(build, a)
    staged_b = _extension._stage_sources(build, b)
    assert staged_a == staged_b and all(p.parent == build / "src" for p in staged_a)
    assert [p.read_bytes() for p in staged_a] == [p.read_bytes() for p in a]


def test_key_covers_headers(tmp_path):
    files = _fake_csrc(tmp_path / "csrc", "int f() { return one(); }")
    before = _extension.build_key("cpu", files, ["-O3"], "x")
    files[1].write_text("inline int one() { return 2; }\n")
    assert _extension.build_key("cpu", files, ["-O3"], "x") != before
    assert _extension._headers("cuda"), "csrc/*.h headers are part of the CUDA key"
    shared = _extension.CSRC / "counter_hash.h"
    assert shared in _extension._headers("cuda") and shared in _extension._headers("cpu"), \
        "the counter hash both kernels include is part of both keys"
