"""project_quantized: fused Triton == project + quantize, both near the float64 oracle; bad input."""
import pytest
import torch
from helpers import fp32_dot_bound, needs_triton, triton_device

from fasttda import FeatureStore
from fasttda.ops.project import project, projection_matrix
from fasttda.ops.project_quantized import QuantizedRows, project_quantized
from fasttda.ops.quantize import dequantize, quantize

FMTS = ["fp32", "bf16", "fp16", "int8", "fp8_e4m3", "int4"]
REL = {"fp32": 0.0, "bf16": 2.0**-8, "fp16": 2.0**-11, "fp8_e4m3": 2.0**-4}


def oracle(x, k, kind, seed, offset, s):
    """float64 x @ P, and the bound on a float32 x @ P in any summation order (+ the scale)."""
    p = projection_matrix(x.shape[1], k, kind=kind, seed=seed, offset=offset, s=s, backend="reference").double()
    return x.double() @ p, fp32_dot_bound(x, p.T, extra=2)


def assert_near_oracle(out, want, fmt):
    y64, bound = want
    back = dequantize(out.data.cpu(), None if out.scale is None else out.scale.cpu(), fmt, dim=y64.shape[1]).double()
    tol = bound.clone()  # float32 projection rounding
    top = (y64.abs() + bound).amax(dim=1, keepdim=True)  # the rounded row's absmax, which sets its scale
    if fmt in ("int8", "int4"):  # half a step of the row's scale
        tol = tol + top / (254 if fmt == "int8" else 14)
    else:  # half an ulp of the format at the rounded value (fp8: plus its subnormal step)
        tol = tol + REL[fmt] * (y64.abs() + bound) + (top / 448 * 2.0**-10 if fmt == "fp8_e4m3" else 0)
    assert ((back - y64).abs() <= tol).all(), f"{fmt}: max excess {((back - y64).abs() - tol).max().item():.3g}"
    torch.testing.assert_close(out.norms.cpu().double(), y64.norm(dim=1), rtol=1e-5, atol=1e-6)


def _codes(t):
    t = t.cpu()
    if t.element_size() == 1:
        return t.view(torch.uint8).to(torch.int32) - (128 if t.dtype == torch.int8 else 0)
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32).to(torch.int64)


@pytest.mark.parametrize("fmt", FMTS)
def test_reference_near_oracle(gen, fmt):
    x = torch.randn(5, 33, generator=gen)
    out = project_quantized(x, 24, fmt, kind="gaussian", seed=9, offset=3, backend="reference")
    assert_near_oracle(out, oracle(x, 24, "gaussian", 9, 3, 1), fmt)


@needs_triton
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kind,shape,k", [("rademacher", (17, 40), 37), ("gaussian", (3, 9), 1),
                                          ("rademacher", (1, 70), 100), ("sjlt", (6, 50), 20)])
def test_triton_fused_matches_project_then_quantize(gen, fmt, kind, shape, k):
    """Fused and unfused paths sum in different tiles (their float32 rounding differs by
    CPU and GPU), so each is held to the float64 oracle; the scaled integer codes of the
    two may differ by one step at most. The bitwise case is `..._bitwise_on_exact_sums`."""
    dev = triton_device()
    x = torch.randn(*shape, generator=gen)
    if shape[0] > 2:
        x = torch.cat([x, x], 1)[:, ::2]  # non-contiguous
    seed, offset, s = int(torch.randint(0, 2**62, (1,), generator=gen)), 11, 2
    out = project_quantized(x.to(dev), k, fmt, kind=kind, seed=seed, offset=offset, s=s, backend="triton")
    y = project(x.to(dev), k, kind=kind, seed=seed, offset=offset, s=s, backend="triton").cpu()
    data, scale = quantize(y, fmt, backend="reference")
    assert out.data.dtype == data.dtype and out.data.shape == data.shape
    want = oracle(x, k, kind, seed, offset, s)
    assert_near_oracle(out, want, fmt)
    assert_near_oracle(quantize_out(y, data, scale), want, fmt)
    if fmt in ("int8", "int4"):
        assert (_codes(out.data) - _codes(data)).abs().max().item() <= 1


@needs_triton
@pytest.mark.parametrize("kind", ["rademacher", "sjlt"])
def test_triton_fused_matches_project_then_quantize_bitwise_on_exact_sums(gen, kind):
    """Integer-valued inputs and ±1 entries: every float32 sum is exact in any order, and
    the one scale is applied once on both paths, so the stored bytes are identical."""
    dev = triton_device()
    x = torch.randint(-8, 9, (9, 70), generator=gen).float()
    x = torch.cat([x, x], 1)[:, ::2]  # non-contiguous
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    y = project(x.to(dev), 37, kind=kind, seed=seed, offset=5, s=2, backend="triton").cpu()
    for fmt in FMTS:
        out = project_quantized(x.to(dev), 37, fmt, kind=kind, seed=seed, offset=5, s=2, backend="triton")
        data, scale = quantize(y, fmt, backend="reference")
        assert torch.equal(_codes(out.data), _codes(data)), fmt
        assert scale is None or torch.equal(out.scale.cpu().view(torch.int32), scale.view(torch.int32)), fmt


def quantize_out(y, data, scale):
    """project + quantize's result in project_quantized's shape (norms of the float32 rows)."""
    return QuantizedRows(data, scale, y.norm(dim=1))


@needs_triton
def test_triton_unfused_width(gen, monkeypatch):
    import fasttda.kernels.project_quantized as pq

    monkeypatch.setattr(pq, "FUSED_MAX_DIM", 16)
    x = torch.randn(4, 30, generator=gen)
    out = project_quantized(x.to(triton_device()), 40, "int8", seed=1, backend="triton")
    assert_near_oracle(out, oracle(x, 40, "rademacher", 1, 0, 1), "int8")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the interpreter's fp16 cast
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_bad_rows_are_named(gen, backend):
    dev = "cpu" if backend == "reference" else triton_device()
    x = torch.randn(6, 20, generator=gen)
    x[4, 3] = float("nan")
    with pytest.raises(ValueError, match=r"projected rows \[4\]"):
        project_quantized(x.to(dev), 16, "int8", backend=backend)
    x = torch.randn(3, 20, generator=gen)
    x[1] *= 1e6
    with pytest.raises(ValueError, match=r"projected rows \[1\] .* fmt='fp16'"):
        project_quantized(x.to(dev), 16, "fp16", backend=backend)


def test_argument_checks(gen):
    x = torch.randn(2, 5, generator=gen)
    with pytest.raises(ValueError, match="fmt must be one of"):
        project_quantized(x, 4, "int2")
    with pytest.raises(ValueError, match="out_dim"):
        project_quantized(x, 0, "int8")
    with pytest.raises(ValueError, match="kind"):
        project_quantized(x, 4, "int8", kind="dense")


def test_feeds_the_store(tmp_path, gen):
    x = torch.randn(9, 64, generator=gen)
    out = project_quantized(x, 32, "fp8_e4m3", seed=5)
    with FeatureStore.create(tmp_path / "fused", 32, "fp8_e4m3") as store:
        store.append_quantized(*out)
    with FeatureStore.create(tmp_path / "plain", 32, "fp8_e4m3") as store:
        store.append(project(x, 32, seed=5))
    a, b = FeatureStore.open(tmp_path / "fused"), FeatureStore.open(tmp_path / "plain")
    assert torch.equal(a.read(), b.read()) and torch.equal(a.norms(), b.norms())
