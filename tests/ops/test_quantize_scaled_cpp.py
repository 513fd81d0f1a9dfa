"""The C++ quantizer of the scaled formats (csrc/cpu/quantize_scaled.cpp) against the reference, bit for bit.

Both divide, round half to even and cast in float32, so every byte and every scale must
agree; the inputs aim at the rounding edges (exact halves, fp8 subnormals, signed zeros).
"""
import importlib

import pytest
import torch
from helpers import cpp_or_skip

from fasttda.ops.quantize import SCALED_QMAX, quantize

SCALED = sorted(SCALED_QMAX)
qmod = importlib.import_module("fasttda.ops.quantize")



def assert_bitwise(x, fmt):
    data, scale = quantize(x, fmt, backend="cpp")
    ref_data, ref_scale = quantize(x, fmt, backend="reference")
    assert data.dtype == ref_data.dtype and data.shape == ref_data.shape
    assert torch.equal(data.view(torch.uint8), ref_data.view(torch.uint8))
    assert torch.equal(scale.view(torch.int32), ref_scale.view(torch.int32))


def edge_rows(gen, d, fmt):
    qmax = SCALED_QMAX[fmt]
    scale = torch.logspace(-30, 30, 13).repeat(3)[:, None]
    x = torch.randn(scale.shape[0], d, generator=gen) * scale
    half = x.clone()  # exact halves of the grid: ties must round to even
    k = torch.randint(-int(qmax), int(qmax), (x.shape[0], d), generator=gen).float()
    half[:, :] = (k + 0.5) * scale / 4
    half[:, 0] = qmax * scale[:, 0] / 4  # fixes the row's max, so the grid is scale / 4 / ... exactly
    tiny = torch.randn(5, d, generator=gen) * 1e-40  # float32 subnormals
    mixed = torch.randn(4, d, generator=gen) * torch.logspace(-12, 0, d)  # fp8 subnormals after scaling
    signed_zero = torch.zeros(2, d)
    signed_zero[1] = -0.0
    return torch.cat([x, half, tiny, mixed, signed_zero])


@pytest.mark.parametrize("fmt", SCALED)
@pytest.mark.parametrize("d", [1, 2, 7, 64, 1025])
def test_cpp_equals_reference_bitwise(gen, fmt, d):
    cpp_or_skip()
    assert_bitwise(edge_rows(gen, d, fmt), fmt)


@pytest.mark.parametrize("fmt", SCALED)
def test_strided_rows_and_many_threads(gen, fmt):
    cpp_or_skip()
    wide = torch.randn(3001, 301, generator=gen)
    assert_bitwise(wide[:, 3:260], fmt)  # not contiguous
    assert_bitwise(wide.T.contiguous()[:50], fmt)


@pytest.mark.parametrize("fmt", SCALED)
def test_non_finite_rows_are_named(gen, fmt):
    cpp_or_skip()
    x = torch.randn(40, 33, generator=gen)
    x[7, 3], x[31, 0] = float("nan"), float("-inf")
    with pytest.raises(ValueError, match=r"non-finite values in rows \[7, 31\]"):
        quantize(x, fmt, backend="cpp")


def test_auto_takes_the_fused_kernel(gen, monkeypatch):
    """On CPU float32 rows, ``auto`` goes through the one-pass kernel (one op call, no torch chain)."""
    cpp_or_skip()
    calls = []
    real = qmod.QUANTIZE_SCALED.resolve

    def spy(backend, device):
        name, impl = real(backend, device)
        calls.append(name)
        return name, impl

    monkeypatch.setattr(qmod.QUANTIZE_SCALED, "resolve", spy)
    quantize(torch.randn(5, 9, generator=gen), "int8")
    assert calls == ["cpp"]
