import pytest

from bench_helpers import op_or_skip

FORMATS = ["bf16", "fp16", "int8", "fp8_e4m3", "int4"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize(benchmark, randn, fmt):
    quantize = op_or_skip("fasttda.ops", "quantize")
    x = randn(8192, 512)
    data, _ = benchmark(quantize, x, fmt)
    assert data.shape[0] == 8192


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize(benchmark, randn, fmt):
    quantize = op_or_skip("fasttda.ops", "quantize")
    dequantize = op_or_skip("fasttda.ops", "dequantize")
    data, scale = quantize(randn(8192, 512), fmt)
    out = benchmark(dequantize, data, scale, fmt, dim=512)
    assert out.shape == (8192, 512)
