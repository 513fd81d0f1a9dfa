"""`fasttda.ops.project` on float64 input: float64 accumulation in the reference (checked
against a float64 oracle at float64's precision), float64 out; the kernels refuse it by name."""
import math

import pytest
import torch
from project_oracle import matrix64

from fasttda import ops
from fasttda._dispatch import BackendUnavailable

U64 = 2.0**-53


@pytest.mark.parametrize("kind,s", [("rademacher", 1), ("sjlt", 1), ("sjlt", 3), ("gaussian", 1)])
@pytest.mark.parametrize("B,D,out_dim", [(1, 1, 1), (3, 1001, 17), (5, 4099, 130)])
def test_float64_is_accumulated_in_float64(kind, s, B, D, out_dim, gen):
    x = torch.randn(B, 2 * D, generator=gen, dtype=torch.float64)[:, ::2] * 1e3  # strided, not unit scale
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    y = ops.project(x, out_dim, kind=kind, seed=seed, offset=11, s=s)  # auto: the reference
    assert y.dtype == torch.float64 and y.shape == (B, out_dim)
    if kind == "gaussian":  # P's entries are float32 Box-Muller values: exact in float64; take them as they are
        P = ops.projection_matrix(D, out_dim, kind=kind, seed=seed, offset=11, scaled=False, backend="reference")
        P = P.double()
        P = P / math.sqrt(out_dim)
    else:  # ±1 entries (and SJLT's scale 1/√s): the independent oracle is exact
        P = torch.from_numpy(matrix64(D, out_dim, kind, seed, 11, s))
    want = x @ P
    n = D * s + 2  # the sum's length plus the scale
    bound = n * U64 / (1 - n * U64) * (x.abs() @ P.abs()) + 1e-300
    err = (y - want).abs()
    assert (err <= bound).all(), f"error {err.max():.3g} beyond the float64 bound {bound.max():.3g}"
    # and not a float32 sum in disguise: that would be ~2**29 times less precise
    as32 = ops.project(x.float(), out_dim, kind=kind, seed=seed, offset=11, s=s, backend="reference").double()
    if D > 1:
        assert (y - want).abs().max() < (as32 - want).abs().max()


def test_kernels_refuse_float64_by_name_and_auto_uses_the_reference(gen):
    x = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    for backend in ("triton", "cpp", "cuda"):
        with pytest.raises(BackendUnavailable, match=f"backend='{backend}'.* got float64; float64 is projected by"):
            ops.project(x, 8, backend=backend)
    assert torch.equal(ops.project(x, 8, seed=4), ops.project(x, 8, seed=4, backend="reference"))
    with pytest.raises(TypeError, match="float32, bfloat16, float16 or float64, got torch.int64"):
        ops.project(x.long(), 8)
