"""Shared test helpers (tests/ is on pytest's pythonpath)."""
import os

import pytest
import torch


def triton_interpreter_or_gpu() -> bool:
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


needs_triton = pytest.mark.skipif(
    not triton_interpreter_or_gpu(), reason="needs a GPU or TRITON_INTERPRET=1 with triton installed"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def triton_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# -- float32 results against a float64 oracle ---------------------------------------------
# Two float32 sums of the same terms in different orders (other tiles, chunk sizes, BLAS
# kernels picked by shape and CPU: AVX-512 vs AVX2) differ in the last bits. Bitwise equality
# is asserted only where the order is pinned by construction (integer-valued inputs,
# counter-hash matrix entries); everything else compares against float64 within a bound
# derived from the sum length.
U32 = 2.0**-24  # unit roundoff of float32


def fp32_dot_bound(a: torch.Tensor, b: torch.Tensor, extra: int = 2) -> torch.Tensor:
    """``[Qa, Qb]`` float64 bound on |fl32(a @ b.T) - a @ b.T| for ANY summation order.

    γ_n·(|a| @ |b|.T) with n = the sum length plus ``extra`` roundings outside the sum
    (a dequantizing multiply, a scale, a weight); γ_n = n·u / (1 - n·u) (Higham, Thm 3.5).
    """
    n = a.shape[-1] + extra
    gamma = n * U32 / (1 - n * U32)
    return gamma * (a.double().abs() @ b.double().abs().T)


def _row_tol(tol, scores: torch.Tensor) -> torch.Tensor:
    tol = torch.as_tensor(tol, dtype=torch.float64)
    if tol.dim() == 2 and tol.shape[1] > 1:  # per score [Q, N]
        tol = tol.amax(dim=1, keepdim=True)  # a perturbation of each score by <= tol moves each order statistic by <= its max
    return tol.reshape(-1, 1) if tol.dim() else tol


def assert_topk_tie_aware(values, indices, scores, k, tol):
    """``(values, indices)`` is a top-k of the float64 ``scores`` ``[Q, N]`` up to ``tol``.

    ``tol`` bounds the float32 error of each score (a number, ``[Q, 1]`` or ``[Q, N]``, e.g.
    `fp32_dot_bound`). Values must match the oracle's sorted top-k within tol; each returned
    id's own oracle score must match its value within tol; ids are distinct and values sorted;
    and ids may differ from the oracle's only where the oracle's scores tie within 2·tol.
    """
    q, n = scores.shape
    k = min(k, n)
    tol = _row_tol(tol, scores)
    assert values.shape == indices.shape == (q, k), (values.shape, indices.shape, (q, k))
    assert indices.dtype == torch.int64
    values, indices = values.cpu().double(), indices.cpu()
    assert not values.isnan().any(), "NaN in the top-k values"
    ref_values, ref_order = torch.sort(scores, dim=1, descending=True, stable=True)
    excess = (values - ref_values[:, :k]).abs() - tol
    assert (excess <= 0).all(), f"top-k values off the float64 oracle by {excess.max().item():.3g} past the bound"
    own = (scores.gather(1, indices) - values).abs() - tol
    assert (own <= 0).all(), f"an id's float64 score differs from its value by {own.max().item():.3g} past the bound"
    assert all(len(set(row.tolist())) == k for row in indices), "repeated ids in a top-k row"
    assert (values[:, :-1] >= values[:, 1:]).all(), "top-k values are not sorted"
    big = ref_values.abs().max().item() + 1
    padded = torch.cat([torch.full((q, 1), big * 4), ref_values, torch.full((q, 1), -big * 4)], dim=1)[:, : k + 2]
    clear = ((padded[:, :-2] - padded[:, 1:-1]) > 2 * tol) & ((padded[:, 1:-1] - padded[:, 2:]) > 2 * tol)
    assert (indices[clear] == ref_order[:, :k][clear]).all(), "ids differ where the oracle's scores do not tie"


def assert_same_ranking(a, b, tol):
    """Two ``(values, indices)`` results of one top-k agree: values within tol (the bound on
    each result's error, so 2·tol between them), ids wherever the scores have no near-tie
    (within 4·tol) at that rank. The last rank's lower neighbour is not returned, so ids
    there are free when the values agree."""
    (va, ia), (vb, ib) = a, b
    va, vb, ia, ib = va.cpu().double(), vb.cpu().double(), ia.cpu(), ib.cpu()
    tol = _row_tol(tol, va)
    assert va.shape == vb.shape and ia.shape == ib.shape
    excess = (va - vb).abs() - 2 * tol
    assert (excess <= 0).all(), f"values differ by {excess.max().item():.3g} past the bound"
    big = max(va.abs().max().item(), vb.abs().max().item()) + 1
    padded = torch.cat([torch.full_like(va[:, :1], 4 * big), va, va[:, -1:]], dim=1)
    clear = ((padded[:, :-2] - padded[:, 1:-1]) > 4 * tol) & ((padded[:, 1:-1] - padded[:, 2:]) > 4 * tol)
    assert (ia[clear] == ib[clear]).all(), "ids differ where the scores do not tie"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((l for l in f if l.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[-1].split())


def run_isa_harness(tmp_path, harness, flags: list[str], needs: str | None) -> str:
    """Build a C++ harness of csrc/cpu's headers for one instruction set and run it: its
    standard output. Skips without a compiler, off x86-64, or where this CPU lacks ``needs``."""
    import subprocess
    from pathlib import Path

    cxx = cxx_or_skip()
    have = cpu_flags()
    if "sse2" not in have:
        pytest.skip("not an x86-64 CPU")
    if needs and needs not in have:
        pytest.skip(f"this CPU cannot run {' '.join(flags)} code (no {needs})")
    exe = tmp_path / "check"
    include = Path(__file__).resolve().parents[1] / "csrc" / "cpu"
    subprocess.run([cxx, "-O2", *flags, "-std=c++17", "-I", str(include), str(harness), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout[-2000:]
    return result.stdout


def cpp_or_skip() -> None:
    """Skip unless the C++ CPU extension builds and loads here."""
    from fasttda import _extension
    from fasttda._dispatch import BackendUnavailable

    try:
        _extension.load("cpu")
    except BackendUnavailable as exc:
        pytest.skip(f"C++ CPU extension unavailable: {exc}")


def cxx_or_skip() -> str:
    """The C++ compiler's path, or skip the test."""
    import shutil

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    return cxx
