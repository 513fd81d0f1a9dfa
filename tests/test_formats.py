"""One row-format table (`fasttda.formats`) for ops, store, Triton kernels and the C++ kernels."""
import re
from pathlib import Path

import torch

from fasttda import formats
from fasttda.ops import quantize as quantize_op  # noqa: F401 (the function shadows the module)

ROOT = Path(__file__).resolve().parents[1]


def test_codes_are_unique_and_dense():
    assert sorted(formats.FMT_CODE.values()) == list(range(len(formats.FORMATS)))
    for f in formats.TABLE.values():
        assert (f.scale is None) == (f.qmax is None)
        assert f.raw_dtype.itemsize == f.dtype.itemsize  # the kernels' bits are viewed back as dtype
        assert f.bytes_per_value == (0.5 if f.name == "int4" else f.dtype.itemsize)


def test_ops_store_and_kernels_use_the_table():
    import importlib

    oq = importlib.import_module("fasttda.ops.quantize")
    shards = importlib.import_module("fasttda.store.shards")
    assert oq.FORMATS == formats.FORMATS and oq.SCALED_QMAX == formats.SCALED_QMAX
    assert shards.TORCH_DTYPE == formats.TORCH_DTYPE
    for name in formats.FORMATS:
        assert oq.storage_dtype(name) == formats.TORCH_DTYPE[name]
        data, _ = oq.quantize(torch.randn(3, 5), name, backend="reference")
        assert data.dtype == formats.storage_dtype(name) and data.shape[1] == formats.stored_width(name, 5)
    source = (ROOT / "kernels" / "score.py").read_text() + (ROOT / "kernels" / "quantize.py").read_text()
    assert "from fasttda.formats import" in source
    assert not re.search(r"FMT_CODES?\s*=\s*\{", source)  # no second table in the kernels


def test_cpp_format_enum_agrees():
    """csrc/cpu: ``enum class Fmt`` (score_rows.h) order is the code; ``parse_fmt`` (score_rows.h)
    maps names to it. Exactly one enum exists in the C++ sources."""
    cpu = ROOT / "csrc" / "cpu"
    enums = [m for f in sorted(cpu.glob("*.[ch]*")) for m in re.findall(r"enum class Fmt\s*\{([^}]*)\}", f.read_text())]
    assert len(enums) == 1, f"expected one `enum class Fmt` in csrc/cpu, found {len(enums)}"
    enum = enums[0]
    src = (cpu / "score_rows.h").read_text()
    members = [m.split("=")[0].strip() for m in enum.split(",") if m.strip()]
    explicit = [int(m.split("=")[1]) for m in enum.split(",") if "=" in m]
    codes = explicit if explicit else list(range(len(members)))
    code_of_member = dict(zip(members, codes))
    parsed = dict(re.findall(r'if \(f == "(\w+)"\) return \*out = Fmt::(\w+), true;', src))
    assert set(parsed) == set(formats.FORMATS)
    assert {name: code_of_member[m] for name, m in parsed.items()} == formats.FMT_CODE
