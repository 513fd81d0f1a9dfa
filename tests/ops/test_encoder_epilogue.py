"""encoder_epilogue: reference and Triton near a float64 oracle, store-ready output, bad input."""
import pytest
import torch
from helpers import needs_triton, triton_device

from fasttda import FeatureStore
from fasttda.ops.encoder_epilogue import encoder_epilogue, mean_pool_normalize
from fasttda.ops.quantize import dequantize

FMTS = ["fp32", "bf16", "fp16", "int8", "fp8_e4m3", "int4"]
REL = {"fp32": 0.0, "bf16": 2.0**-8, "fp16": 2.0**-11, "fp8_e4m3": 2.0**-4}


def oracle(hidden, mask):
    m = mask.double()
    pooled = (hidden.double() * m[..., None]).sum(1) / m.sum(1).clamp_min(1)[:, None]
    norm = pooled.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, pooled / torch.where(norm > 0, norm, 1.0), 0.0)


def inputs(gen, B, T, H, dtype=torch.float32, strided=False):
    h = torch.randn(B, T, 2 * H if strided else H, generator=gen) * 3 + 0.5
    if strided:
        h = h[:, :, ::2]  # non-contiguous last dim
    mask = (torch.rand(B, T, generator=gen) > 0.35).to(torch.int64)
    mask[:, 0] = 1
    return h.to(dtype), mask


def assert_near_oracle(out, e64, fmt, T):
    back = dequantize(out.data.cpu(), None if out.scale is None else out.scale.cpu(), fmt, dim=e64.shape[1]).double()
    amax = e64.abs().amax(dim=1, keepdim=True)
    tol = 4 * T * 2.0**-24 * amax + 1e-7  # float32 sums over T tokens, then two roundings
    if fmt in ("int8", "int4"):
        tol = tol + amax / (254 if fmt == "int8" else 14)
    else:
        tol = tol + REL[fmt] * e64.abs() + (amax / 448 * 2.0**-10 if fmt == "fp8_e4m3" else 0)
    assert ((back - e64).abs() <= tol).all(), f"{fmt}: max excess {((back - e64).abs() - tol).max().item():.3g}"
    torch.testing.assert_close(out.norms.cpu().double(), e64.norm(dim=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", FMTS)
def test_reference_near_oracle(gen, fmt):
    h, mask = inputs(gen, 6, 11, 29, strided=True)
    mask[3] = 0  # an empty row pools to zeros, norm 0
    out = encoder_epilogue(h, mask, fmt, backend="reference")
    e64 = oracle(h, mask)
    assert_near_oracle(out, e64, fmt, 11)
    assert out.norms[3] == 0


@needs_triton
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("B,T,H,dtype,strided", [(5, 13, 37, torch.float32, True), (1, 1, 3, torch.float32, False),
                                                 (3, 70, 130, torch.bfloat16, False),
                                                 (2, 9, 384, torch.float16, True)])
def test_triton_near_oracle_and_reference(gen, fmt, B, T, H, dtype, strided):
    dev = triton_device()
    h, mask = inputs(gen, B, T, H, dtype, strided)
    if B > 2:
        mask[1] = 0
    out = encoder_epilogue(h.to(dev), mask.to(dev), fmt, backend="triton")
    assert_near_oracle(out, oracle(h, mask), fmt, T)
    ref = encoder_epilogue(h, mask, fmt, backend="reference")
    assert out.data.dtype == ref.data.dtype and out.data.shape == ref.data.shape
    assert (out.scale is None) == (ref.scale is None)
    if ref.scale is not None:
        torch.testing.assert_close(out.scale.cpu(), ref.scale, rtol=1e-5, atol=0)


def test_float_mask_weights_and_differentiable_pooling(gen):
    h, mask = inputs(gen, 4, 7, 10)
    h.requires_grad_(True)
    e = mean_pool_normalize(h, mask.float())
    torch.testing.assert_close(e.double(), oracle(h.detach(), mask), rtol=1e-6, atol=1e-6)
    e[:, 0].sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    assert (h.grad[mask == 0] == 0).all()  # padding gets no gradient


def test_rows_append_to_a_store_and_score_as_cosine(gen, tmp_path):
    h, mask = inputs(gen, 9, 6, 33)
    out = encoder_epilogue(h, mask, "int8", backend="reference")
    with FeatureStore.create(tmp_path / "s", 33, "int8") as store:
        store.append_quantized(out.data, out.scale, out.norms, ids=[f"x{i}" for i in range(9)])
        store.commit()
    import fasttda

    store = FeatureStore.open(tmp_path / "s")
    q = oracle(h[:2], mask[:2]).float()
    top = fasttda.score(q, store, k=9, normalize=True)
    e64 = oracle(h, mask)
    dense = (e64[:2] @ e64.T)
    got = torch.empty(2, 9, dtype=torch.float64).scatter_(1, top.indices, top.values.double())
    assert (got - dense).abs().max() < 2e-2  # int8 rows: about 1/127 per coordinate
    assert list(top.ids[0][:1]) == ["x0"] and list(top.ids[1][:1]) == ["x1"]


@pytest.mark.parametrize("args,match", [
    ((torch.randn(2, 3), torch.ones(2, 3)), "3-D"),
    ((torch.randn(2, 3, 4), torch.ones(2, 4)), "mask must be"),
    ((torch.randn(2, 3, 4), -torch.ones(2, 3)), "negative"),
    ((torch.randn(2, 3, 4).int(), torch.ones(2, 3)), "float32"),
])
def test_bad_input(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        encoder_epilogue(*args, "int8")


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_nonfinite_rows_are_named(backend):
    h = torch.randn(3, 4, 8)
    h[1, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        encoder_epilogue(h.to(triton_device() if backend == "triton" else "cpu"),
                         torch.ones(3, 4, device=triton_device() if backend == "triton" else "cpu"), "int8",
                         backend=backend)
