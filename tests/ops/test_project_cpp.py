"""The C++ CPU kernel of `ops.project` (``csrc/cpu/project.cpp``): the same matrix as the
reference (bitwise for ±1 and SJLT, Gaussian within float32 Box–Muller rounding), exact sums
on integer inputs, odd shapes and strides, offsets past 2**32, thread-count independence."""
import math

import pytest
import torch
from test_project import KIND_IDS, KINDS, assert_close_to_oracle

from fasttda import ops


@pytest.fixture(scope="module", autouse=True)
def cpp_extension():
    from fasttda import _extension
    from fasttda._dispatch import BackendUnavailable

    try:
        _extension.load("cpu")
    except BackendUnavailable as exc:
        pytest.skip(f"C++ CPU extension unavailable: {exc}")


def assert_entries_match(got, want, kind, out_dim):
    if kind == "gaussian":
        # float32 log/sin/cos from different code: entries agree to ~1e-6 unscaled.
        assert (got - want).abs().max() <= 1e-6 / math.sqrt(out_dim)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("offset", [0, 2**32 - 40, 2**40 + 12345])
def test_matrix_entries_match_reference(kind, s, offset):
    for in_dim, out_dim in ((70, 100), (9, 1), (33, 2049)):
        ref = ops.projection_matrix(in_dim, out_dim, kind=kind, seed=5, offset=offset, s=s, backend="reference")
        got = ops.projection_matrix(in_dim, out_dim, kind=kind, seed=5, offset=offset, s=s, backend="cpp")
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert_entries_match(got, ref, kind, out_dim)


@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("B,D,out_dim", [(1, 1, 1), (3, 7, 17), (33, 1000, 70), (2, 4099, 1000),
                                         (5, 20000, 3), (4, 9000, 20)])
def test_equals_reference_bitwise_on_exact_sums(kind, s, B, D, out_dim, gen):
    # Small integers keep every partial sum exact in float32, so any summation order gives
    # the same bits: a mismatch can only come from a different matrix (or a lost block).
    x = torch.randint(-8, 9, (B, D), generator=gen).float()
    offset = 2**32 - D // 2  # rows straddle the 32-bit boundary of the row index
    want = ops.project(x, out_dim, kind=kind, seed=77, offset=offset, s=s, backend="reference")
    got = ops.project(x, out_dim, kind=kind, seed=77, offset=offset, s=s, backend="cpp")
    if kind == "gaussian":  # not exact sums: entries differ in the last bits; compare to float64
        assert_close_to_oracle(got, x, out_dim, kind, 77, offset, s)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("B,D,out_dim", [(3, 333, 65), (17, 2500, 513)])
def test_float_inputs_match_oracle(kind, s, B, D, out_dim, gen):
    x = torch.randn(B, D, generator=gen)
    got = ops.project(x, out_dim, kind=kind, seed=21, offset=2**33 + 1, s=s, backend="cpp")
    assert_close_to_oracle(got, x, out_dim, kind, 21, 2**33 + 1, s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,s", KINDS, ids=KIND_IDS)
def test_strides_and_dtypes(dtype, kind, s, gen):
    base = torch.randn(300, 40, generator=gen).to(dtype)
    for x in (base.t()[::3], base[::2, 5:37], base.t()):  # [14, 300] strided, [150, 32] sliced, transposed
        got = ops.project(x, 45, kind=kind, seed=3, s=s, backend="cpp")
        want = ops.project(x.float().contiguous(), 45, kind=kind, seed=3, s=s, backend="cpp")
        assert torch.equal(got, want)
        assert_close_to_oracle(got, x.float(), 45, kind, 3, 0, s)


@pytest.mark.parametrize("kind,s", [("sjlt", 1), ("sjlt", 3)], ids=["sjlt1", "sjlt3"])
def test_result_does_not_depend_on_thread_count(kind, s, gen):
    # SJLT sums in our own fixed order. (Dense kinds call MKL's sgemm per block, whose last
    # bits may depend on buffer alignment, so only their exact-sum equality is asserted.)
    x = torch.randn(6, 30000, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.project(x, 40, kind=kind, seed=8, s=s, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(ops.project(x, 40, kind=kind, seed=8, s=s, backend="cpp"), one)


def test_auto_picks_cpp_on_cpu(gen):
    x = torch.randn(3, 50, generator=gen)
    assert torch.equal(ops.project(x, 9), ops.project(x, 9, backend="cpp"))


def test_offset_chunk_identity(gen):
    a, b = torch.randint(-4, 5, (3, 37), generator=gen).float(), torch.randint(-4, 5, (3, 90), generator=gen).float()
    for kind, s in KINDS:
        whole = ops.project(torch.cat([a, b], 1), 50, kind=kind, seed=3, s=s, offset=2**32 - 37, backend="cpp")
        parts = (ops.project(a, 50, kind=kind, seed=3, s=s, offset=2**32 - 37, backend="cpp")
                 + ops.project(b, 50, kind=kind, seed=3, s=s, offset=2**32, backend="cpp"))
        torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)  # the scale rounds each part
