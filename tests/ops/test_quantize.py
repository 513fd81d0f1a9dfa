"""quantize / dequantize: error bounds vs float64, score fidelity, Triton == reference bitwise, bad input."""
import math

import pytest
import torch
from helpers import cpp_or_skip, needs_triton, triton_device

from fasttda.ops.quantize import FORMATS, SCALED_QMAX, dequantize, quantize, stored_width

FP8 = torch.float8_e4m3fn


def gaussian_rows(gen, n, d):
    spread = torch.rand(n, 1, generator=gen, dtype=torch.float64).add(0.05) * 10
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * spread


def student_t_rows(gen, n, d, dof=2.0):
    """Heavy-tailed rows (Student-t, 2 degrees of freedom: infinite variance)."""
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    chi2 = torch.randn(n, d, int(dof), generator=gen, dtype=torch.float64).pow(2).sum(-1)
    return z / (chi2 / dof).sqrt()


def bound(fmt, x64, scale):
    """Worst-case |dequantize(quantize(x)) - x| per element, in float64."""
    a = x64.abs()
    eps32 = 2.0**-23  # float32 rounding of the input, the division and the dequantizing product
    if fmt == "fp32":
        return a * 2.0**-24
    if fmt == "bf16":
        return a * (2.0**-8 + eps32)
    if fmt == "fp16":
        return a * (2.0**-11 + eps32) + 2.0**-25
    s = scale.double()[:, None]
    if fmt == "int8":
        return s * 0.5 * (1 + 1e-5) + a * 3 * eps32
    if fmt == "int4":
        return s * 0.5 * (1 + 1e-5) + a * 3 * eps32
    return a * (2.0**-4 + 3 * eps32) + s * 2.0**-10  # fp8 e4m3: 3 mantissa bits, subnormal step 2**-9


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [gaussian_rows, student_t_rows])
def test_roundtrip_within_bounds(gen, fmt, rows):
    x64 = rows(gen, 33, 517)
    x = x64.float()
    data, scale = quantize(x, fmt)
    assert data.shape == (33, stored_width(fmt, 517))
    assert (scale is None) == (fmt not in SCALED_QMAX)
    back = dequantize(data, scale, fmt, dim=517)
    assert back.dtype == torch.float32 and back.shape == x.shape
    err = (back.double() - x64).abs()
    excess = err - bound(fmt, x64, scale)
    assert excess.max() <= 0, f"{fmt}: error exceeds bound by {excess.max().item():.3g}"
    if scale is not None:  # the absmax element round-trips to itself within float32 rounding
        top = x64.abs().argmax(dim=1)
        torch.testing.assert_close(back.abs().gather(1, top[:, None]).double(), x64.abs().gather(1, top[:, None]),
                                   rtol=1e-6, atol=0)


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3", "int4"])
def test_zero_tiny_and_huge_rows(fmt):
    x = torch.stack([torch.zeros(9), torch.full((9,), 1e-38) * torch.arange(-4, 5), torch.full((9,), 3e38),
                     torch.full((9,), 1.4e-45)])
    data, scale = quantize(x, fmt)
    back = dequantize(data, scale, fmt, dim=9)
    assert bool(back.isfinite().all()) and torch.equal(back[0], torch.zeros(9)) and scale[0] == 0
    torch.testing.assert_close(back[1], x[1], rtol=0.25 if fmt == "int4" else 0.07, atol=0)  # subnormal scale
    torch.testing.assert_close(back[2], x[2], rtol=1e-6, atol=0)
    assert scale[3] == 0 and torch.equal(back[3], torch.zeros(9))  # scale underflows: stored as zeros


def spearman(a, b):
    ra = a.argsort(dim=-1).argsort(dim=-1).double()
    rb = b.argsort(dim=-1).argsort(dim=-1).double()
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


def score_fidelity(gen, fmt, n=2000, d=4096, q=6):
    rows = torch.randn(n, d, generator=gen) * torch.rand(n, 1, generator=gen).add(0.5)
    queries = torch.randn(q, d, generator=gen)
    exact = queries.double() @ rows.double().T
    data, scale = quantize(rows, fmt)
    approx = queries @ dequantize(data, scale, fmt, dim=d).T
    return spearman(approx, exact)


@pytest.mark.parametrize("fmt,floor", [("int8", 0.999), ("fp8_e4m3", 0.998), ("int4", 0.97), ("bf16", 0.9999)])
def test_score_fidelity_spearman_dim_4096(gen, fmt, floor):
    rho = score_fidelity(gen, fmt)
    assert rho.min() >= floor, f"{fmt}: Spearman {rho.min().item():.6f} < {floor}"


# -- Triton form == reference, bitwise --------------------------------------------------------
def _bits(t):
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16)
    if t.dtype == FP8:
        return t.view(torch.uint8)
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _assert_same(fmt, x):
    dev = triton_device()
    ref_data, ref_scale = quantize(x, fmt, backend="reference")
    tri_data, tri_scale = quantize(x.to(dev), fmt, backend="triton")
    assert tri_data.dtype == ref_data.dtype and tri_data.shape == ref_data.shape
    assert torch.equal(_bits(tri_data.cpu()), _bits(ref_data)), f"{fmt}: stored rows differ"
    if ref_scale is not None:
        assert torch.equal(tri_scale.cpu().view(torch.int32), ref_scale.view(torch.int32)), f"{fmt}: scales differ"
    d = x.shape[1]
    ref_back = dequantize(ref_data, ref_scale, fmt, dim=d, backend="reference")
    tri_back = dequantize(ref_data.to(dev), None if ref_scale is None else ref_scale.to(dev), fmt, dim=d,
                          backend="triton")
    assert torch.equal(tri_back.cpu().view(torch.int32), ref_back.view(torch.int32)), f"{fmt}: dequantize differs"


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 300)])
def test_triton_matches_reference_bitwise(gen, fmt, shape):
    x = student_t_rows(gen, *shape).float()
    _assert_same(fmt, x)
    _assert_same(fmt, torch.cat([x, x], 1)[:, ::2])  # non-contiguous columns
    if fmt != "fp16":
        _assert_same(fmt, (x * 1e-3).to(torch.bfloat16))
    _assert_same(fmt, x.to(torch.float16) if fmt != "bf16" else x)


@needs_triton
def test_triton_rounding_ties_and_every_fp8_code():
    ties = torch.arange(-126, 127, dtype=torch.float32) + 0.5
    _assert_same("int8", torch.cat([ties, torch.tensor([127.0])])[None])  # scale 1: exact .5 ties
    _assert_same("int4", torch.tensor([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -6.5, 3.5, -2.5]]))
    codes = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    finite = codes[codes.isfinite()].unique()
    mids = (finite[1:] + finite[:-1]) / 2  # halfway points, normal and subnormal
    row = torch.cat([finite, mids, torch.tensor([448.0])])  # absmax 448: scale 1, y = x exactly
    _assert_same("fp8_e4m3", row[None])
    bf16_ties = (torch.randint(0, 2**16, (64,), dtype=torch.int32) << 16 | 0x8000).view(torch.float32)
    _assert_same("bf16", bf16_ties[None].nan_to_num(0.0, 0.0, 0.0))
    all_codes = torch.arange(256, dtype=torch.uint8)[None]
    back = dequantize(all_codes.to(triton_device()), torch.ones(1, device=triton_device()), "fp8_e4m3",
                      backend="triton").cpu()
    ref = dequantize(all_codes, torch.ones(1), "fp8_e4m3", backend="reference")
    assert torch.equal(back.isnan(), ref.isnan()) and torch.equal(back.nan_to_num(), ref.nan_to_num())


@needs_triton
def test_kernel_format_table_matches_ops():
    import importlib

    kq = importlib.import_module("fasttda.kernels.quantize")
    oq = importlib.import_module("fasttda.ops.quantize")  # the module; fasttda.ops.quantize is the function

    assert kq.SCALED_QMAX == oq.SCALED_QMAX and set(kq.FMT_CODE) == set(oq.FORMATS)
    assert all(kq.stored_width(f, d) == oq.stored_width(f, d) for f in oq.FORMATS for d in (1, 2, 7))


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="fmt must be one of"):
        quantize(x, "int3")
    with pytest.raises(ValueError, match="2-D"):
        quantize(x[0], "int8")
    with pytest.raises(TypeError, match="floating"):
        quantize(x.to(torch.int32), "int8")
    y = x.clone()
    y[2, 1] = math.nan
    y[3, 0] = math.inf
    with pytest.raises(ValueError, match=r"rows \[2, 3\]"):
        quantize(y, "int8")
    with pytest.raises(ValueError, match="fp16 range"):
        quantize(x * 1e5, "fp16")
    with pytest.raises(ValueError, match="bf16 range"):
        quantize(torch.full((1, 2), 3.4e38), "bf16")
    data, scale = quantize(x, "int4")
    with pytest.raises(ValueError, match="scale must be a float32 tensor"):
        dequantize(data, None, "int4")
    with pytest.raises(ValueError, match="dim=9 does not match"):
        dequantize(data, scale, "int4", dim=9)
    with pytest.raises(TypeError, match="must be torch.int8"):
        dequantize(data, scale, "int8")
    with pytest.raises(ValueError, match="backend"):
        quantize(x, "int8", backend="gpu")


# -- C++ fused cast (bf16 / fp16 of float32 CPU rows) ------------------------------------------

@pytest.mark.parametrize("fmt,dtype,limit", [("bf16", torch.bfloat16, 3.3895313892515355e38),
                                             ("fp16", torch.float16, 65504.0)])
def test_cpp_cast_bitwise_equals_torch(gen, fmt, dtype, limit):
    """Rounding ties, subnormals, ±0, the range's edge, a vector tail, strided input."""
    cpp_or_skip()
    x = torch.randn(37, 131, generator=gen) * torch.logspace(-30, 4, 131)
    x[0, :8] = torch.tensor([0.0, -0.0, limit, -limit, 1e-45, -3e-41, 1 + 2**-8, 1 + 3 * 2**-11])
    x[1, :4] = torch.tensor([6e-8, 2**-25, 65503.9, -1.00048828125])
    x = x.clamp(-limit, limit)
    for rows in (x, x[:, 3:120], x[::2]):
        data, scale = quantize(rows, fmt, backend="cpp")
        assert scale is None and data.dtype == dtype
        assert torch.equal(data.view(torch.int16), rows.to(dtype).view(torch.int16))


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_cpp_cast_rejects_what_the_reference_rejects(gen, fmt):
    cpp_or_skip()
    x = torch.randn(9, 70, generator=gen)
    for backend in ("cpp", "auto"):
        y = x.clone()
        y[4, 69] = math.nan
        y[7, 3] = -math.inf
        with pytest.raises(ValueError, match=r"rows \[4, 7\]"):
            quantize(y, fmt, backend=backend)
        y = x.clone()
        y[8, 69] = 7e4 if fmt == "fp16" else 3.4e38  # in the vector tail
        with pytest.raises(ValueError, match=f"{fmt} range"):
            quantize(y, fmt, backend=backend)
    with pytest.raises(Exception, match="C\\+\\+ CPU kernel"):
        quantize(x, "fp32", backend="cpp")  # a copy: no C++ kernel


# -- C++ dequantize (every format; a store's full read writes through `out`) ------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n,d", [(1, 1), (5, 7), (37, 33), (300, 131)])
def test_cpp_dequantize_bitwise_equals_reference(gen, fmt, n, d):
    """Fresh output and into a strided slice of a larger buffer; strided stored rows too."""
    cpp_or_skip()
    x = student_t_rows(gen, 2 * n, d).float()
    data, scale = quantize(x, fmt, backend="reference")
    for rows, s in ((data, scale), (data[::2], None if scale is None else scale[::2])):
        ref = dequantize(rows, s, fmt, dim=d, backend="reference")
        got = dequantize(rows, s, fmt, dim=d, backend="cpp")
        assert torch.equal(got.view(torch.int32), ref.view(torch.int32))
        buf = torch.full((rows.shape[0], d + 5), 7.0)
        into = dequantize(rows, s, fmt, dim=d, out=buf[:, 2:2 + d], backend="cpp")
        assert into.data_ptr() == buf[:, 2:].data_ptr()
        assert torch.equal(buf[:, 2:2 + d].view(torch.int32), ref.view(torch.int32))
        assert bool((buf[:, :2] == 7.0).all() and (buf[:, 2 + d:] == 7.0).all())  # nothing written outside


def test_cpp_dequantize_every_fp8_code_and_out_checks(gen):
    cpp_or_skip()
    codes = torch.arange(256, dtype=torch.uint8).reshape(2, 128)
    scale = torch.tensor([1.0, 0.375])
    ref = dequantize(codes, scale, "fp8_e4m3", backend="reference")
    got = dequantize(codes, scale, "fp8_e4m3", backend="cpp")
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.nan_to_num(), ref.nan_to_num())
    data, scale = quantize(torch.randn(4, 6, generator=gen), "int8")
    for bad, match in ((torch.empty(4, 5), r"out must be a float32 tensor \[4, 6\]"),
                       (torch.empty(4, 6, dtype=torch.float64), "out must be a float32"),
                       (torch.empty(6, 4).T, r"stride\(1\) == 1")):
        with pytest.raises(ValueError, match=match):
            dequantize(data, scale, "int8", out=bad)
    out = torch.empty(4, 6)
    assert dequantize(data, scale, "int8", out=out, backend="reference") is out
    assert torch.equal(out, dequantize(data, scale, "int8", backend="reference"))
