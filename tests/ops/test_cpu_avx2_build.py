"""The whole C++ CPU extension built for AVX2 (``-march=haswell``: what an AMD EPYC without
AVX-512 compiles with ``-march=native``) and checked against the reference ops.

CI's own build targets the CI machine (AVX-512 on Intel), so the AVX2 branches of
csrc/cpu (F16C casts, 8-lane conversions, the 256-bit fp8 path) would otherwise only run
on an AMD machine. This builds them here, once, and runs them: this CPU runs AVX2 code.
tests/ops/test_score_rows_isa.py covers score_rows.h alone at every width, in seconds.
"""
from __future__ import annotations


import pytest
import torch
from helpers import cpu_flags, cxx_or_skip

from fasttda.ops import _counter_hash as ch
from fasttda.ops.project import projection_matrix
from fasttda.ops.quantize import FORMATS, dequantize, quantize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def avx2(tmp_path_factory):
    cxx_or_skip()
    if not {"avx2", "fma", "f16c"} <= cpu_flags():
        pytest.skip("this CPU cannot run AVX2/FMA/F16C code")
    from torch.utils import cpp_extension

    import fasttda._extension as ext

    sources = ext._sources("cpu")
    build = tmp_path_factory.mktemp("avx2")
    # staged beside their headers as the real build does (csrc/counter_hash.h lives one level up)
    staged = ext._stage_sources(build, sources + ext._headers("cpu"))[: len(sources)]
    flags = [f for f in ext.CPU_FLAGS if not f.startswith("-march")] + ["-march=haswell"]
    return cpp_extension.load(name="fasttda_cpu_avx2_check", sources=[str(s) for s in staged],
                              build_directory=str(build), extra_cflags=flags,
                              extra_ldflags=["-fopenmp"], verbose=False)


def _bound(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 dot products of rows of a with columns of b: 1.1·n·2^-24·Σ|a||b|."""
    return 1.1 * a.shape[1] * 2.0**-24 * (a.double().abs() @ b.double().abs()) + 1e-30


@pytest.mark.parametrize("fmt", FORMATS)
def test_avx2_dequantize_and_score(avx2, gen, fmt):
    d = 131
    x = torch.randn(517, d, generator=gen) * torch.rand(517, 1, generator=gen) * 3
    data, scale = quantize(x, fmt, backend="reference")
    ref = dequantize(data, scale, fmt, dim=d, backend="reference")
    assert torch.equal(avx2.dequantize(data, scale, fmt, d).view(torch.int32), ref.view(torch.int32))
    for nq in (1, 3, 8, 21):  # tiles of 1/2/8 queries, and the sgemm path
        q = torch.randn(nq, d, generator=gen)
        dense = avx2.score_dense([q], [data], [scale], [fmt], torch.empty(nq, data.shape[0]))
        assert ((dense.double() - q.double() @ ref.double().T).abs() <= _bound(q, ref.T)).all(), (fmt, nq)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sjlt"])
def test_avx2_projection(avx2, gen, kind):
    for rows, k, offset in ((37, 20, 0), (300, 64, 12345), (5, 2048, 7), (1000, 3, 2**40)):
        k_row, k_col = ch.seed_keys(11, kind)
        ref = projection_matrix(rows, k, kind=kind, seed=11, offset=offset, scaled=False, backend="reference")
        got = avx2.projection_matrix(rows, k, kind, k_row, k_col, offset, 1, None)
        if kind == "gaussian":  # Box-Muller through libm: a few ulp
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got, ref)
        x = torch.randn(3, rows, generator=gen)
        scale = 1.0 if kind == "sjlt" else k**-0.5
        y = avx2.project(x, k, kind, k_row, k_col, offset, 1).double()
        assert ((y - (x.double() @ ref.double()) * scale).abs() <= _bound(x, ref) * scale * 1.01).all()


@pytest.mark.parametrize("fmt,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_avx2_checked_cast(avx2, gen, fmt, dtype):
    x = torch.randn(33, 131, generator=gen) * 100
    out, ok = avx2.cast_checked(x, fmt)
    assert ok and torch.equal(out.view(torch.int16), x.to(dtype).view(torch.int16))
    x[7, 130] = float("nan")  # in the scalar tail
    assert not avx2.cast_checked(x, fmt)[1]


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
def test_avx2_quantize_scaled(avx2, gen, fmt):
    x = torch.randn(301, 131, generator=gen) * torch.logspace(-20, 20, 301)[:, None]
    data, scale, ok = avx2.quantize_scaled(x, fmt)
    ref_data, ref_scale = quantize(x, fmt, backend="reference")
    assert ok and torch.equal(data.view(torch.uint8), ref_data.view(torch.uint8))
    assert torch.equal(scale.view(torch.int32), ref_scale.view(torch.int32))
    x[9, 130] = float("inf")
    assert not avx2.quantize_scaled(x, fmt)[2]


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_avx2_integer_queries(avx2, gen, fmt):
    """The vpmaddubsw path (AVX2 without VNNI): exact integer sums, bitwise."""
    d = 131
    data, scale = quantize(torch.randn(517, d, generator=gen), fmt, backend="reference")
    ints = dequantize(data, torch.ones_like(scale), fmt, dim=d, backend="reference").double()
    for nq in (1, 3, 8, 21):
        q8 = torch.randint(-127, 128, (nq, d), generator=gen, dtype=torch.int8)
        dense = avx2.score_dense([q8], [data], [scale], [fmt], torch.empty(nq, data.shape[0]))
        assert torch.equal(dense, (q8.double() @ ints.T).float() * scale), (fmt, nq)
