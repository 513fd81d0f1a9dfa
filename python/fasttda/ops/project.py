"""`project`: seeded random projection ``x @ P`` with P generated on the fly, never stored.

P is the ``[D, out_dim]`` matrix defined in `fasttda.ops._counter_hash` (entry (i, j) a
pure function of (seed, i, j)); ``offset`` shifts i so per-layer pieces of one gradient
can be projected separately and summed:

    project(cat([a, b], 1), k) == project(a, k) + project(b, k, offset=a.shape[1])

Dense kinds are scaled by 1/sqrt(out_dim) (Johnson–Lindenstrauss), SJLT by 1/sqrt(s).
Every backend accumulates the unscaled ±1 (or Gaussian) sums in float32 and applies the
scale once at the end, which is what makes Rademacher/SJLT results on integer-valued
inputs bitwise identical across backends.

float64 input: the reference projects it with float64 accumulation (the entries of P are
the same values, exact in float64; the scale is applied in float64) and returns float64.
The C++, CUDA and Triton kernels take float32/bf16/fp16 only: ``"auto"`` runs float64 on the
reference, and naming one of those kernels for float64 raises `BackendUnavailable`; nothing
is rounded to float32 behind the caller's back (cast first to use a kernel).

Reference memory: the matrix is generated in row blocks of at most ``BLOCK_ENTRIES``
entries (2**22, i.e. 16 MiB of float32 plus a 4 MiB byte index for Rademacher; a quarter
as many entries for Gaussian, whose temporaries are wider), whatever D is. A single row
of P larger than that (out_dim > 2**22) is generated alone.
"""
from __future__ import annotations

import math
import os

import torch

from fasttda._dispatch import ENV_VAR, Op
from fasttda.ops import _library
from fasttda.ops import _counter_hash as ch
from fasttda.ops._matrix_cache import BytesLRU
from fasttda.ops._checks import check_float_tensor

KINDS = ("rademacher", "gaussian", "sjlt")
BLOCK_ENTRIES = 1 << 22

# Row b of this table holds the 8 signs encoded by byte b (bit t set -> -1), so one
# gather turns each byte of a hash word into 8 float entries of P.
_SIGN_LUT: dict[torch.device, torch.Tensor] = {}


def project(
    x: torch.Tensor,
    out_dim: int,
    *,
    kind: str = "rademacher",
    seed: int = 0,
    offset: int = 0,
    s: int = 1,
    backend: str | None = "auto",
) -> torch.Tensor:
    """Project the rows of ``x`` ``[B, D]`` to ``[B, out_dim]`` float32 (float64 for float64 ``x``).

    Args:
        x: ``[B, D]`` float32, bfloat16 or float16, or float64 (reference only, float64
            accumulation; see the module doc); any strides.
        out_dim: the projected dimension k ≥ 1 (no multiple-of-512 rule).
        kind: ``"rademacher"`` (±1), ``"gaussian"`` or ``"sjlt"`` (sparse, s nonzeros per input coordinate).
        seed: any int in [0, 2**64).
        offset: global index of ``x``'s first column in the full input space.
        s: nonzeros per input coordinate for ``"sjlt"``.
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"`` or ``"cpp"`` (the C++ CPU
            kernel, ``csrc/cpu/project.cpp``; what ``"auto"`` picks for CPU tensors).
    """
    check_project_args(x, out_dim, kind, offset, s)
    k_row, k_col = ch.seed_keys(seed, kind)
    kept = _kept_matrix(x, out_dim, kind, k_row, k_col, offset, s, backend or "auto")
    if kept is not None:  # x @ P with the unscaled P kept, then the scale once: the same sums
        p = kept.T if kept_transposed(out_dim) else kept
        return torch.mm(x.to(torch.float32), p).mul_(_scale(kind, out_dim, s))
    return _library.call("project", x, out_dim, kind, k_row, k_col, offset, s, backend or "auto")


FLOAT64_ONLY_REFERENCE = ("takes float32/bfloat16/float16 input, got float64; float64 is projected by "
                          "backend='reference' (float64 accumulation), or cast x to float32 first")


# -- kept matrices (CPU, few rows) --------------------------------------------------------
# Generating P costs about as much per entry as a few rows of x @ P (a Gaussian entry far
# more: a log, a sqrt and a sine per pair), so for few rows the generation dominates every
# call (TRAK's resnet18 case: 8 x 11.7M to 20 columns). Then, like TRAK's BasicProjector,
# `project` with backend "auto" keeps the unscaled P of a CPU call (this many bytes at most,
# least recently used dropped) and later calls with the same seed, offset and shape are one
# GEMM. `clear_kept_matrices()` frees them.
#
# A narrow P (k <= 32) is kept transposed, [k, D], and used as a transposed view: MKL's
# sgemm reads it at memory speed that way, while [D, k] rows of a few floats run it at about
# 70 % of that (2 cores, 8 x 11.7M to 20 columns: 70 against 86-95 ms; 100k-3M to 8-20 columns:
# within noise or faster). For wider P the natural layout is as fast or faster (32 x 262144
# to 512: 53 against 71 ms). It is built in slices of rows, so it never exists twice.
KEPT_MATRIX_BYTES = int(os.environ.get("FASTTDA_PROJECT_KEEP_BYTES", 1 << 30))
KEEP_MAX_ROWS = {"rademacher": 4, "gaussian": 64}  # x rows below which generation dominates
KEEP_TRANSPOSED_MAX_K = 32
KEEP_SLICE_ENTRIES = 1 << 24  # entries of P generated at a time for a transposed build
_KEPT = BytesLRU(KEPT_MATRIX_BYTES)


def kept_transposed(out_dim: int) -> bool:
    return out_dim <= KEEP_TRANSPOSED_MAX_K


def clear_kept_matrices() -> None:
    """Free the projection matrices `project` keeps for repeated small CPU calls."""
    _KEPT.clear()


def _kept_matrix(x, out_dim, kind, k_row, k_col, offset, s, backend):
    B, D = x.shape
    # only a plain "auto": a backend named by argument or by FASTTDA_BACKEND runs that backend
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if (backend != "auto" or env not in ("", "auto") or x.device.type != "cpu" or x.dtype == torch.float64
            or B > KEEP_MAX_ROWS.get(kind, -1) or not _KEPT.fits(4 * D * out_dim) or torch.compiler.is_compiling()):
        return None
    matrix = MATRIX.resolve("auto", x.device)[1]

    def build():
        if not kept_transposed(out_dim):
            return matrix(D, out_dim, kind, k_row, k_col, offset, s, x.device)
        pt = torch.empty(out_dim, D, dtype=torch.float32, device=x.device)
        rows = max(1, KEEP_SLICE_ENTRIES // out_dim)
        for lo in range(0, D, rows):  # rows [lo, hi) of P: the same entries as one build
            hi = min(D, lo + rows)
            pt[:, lo:hi] = matrix(hi - lo, out_dim, kind, k_row, k_col, offset + lo, s, x.device).T
        return pt
    return _KEPT.get((kind, k_row, k_col, offset, D, out_dim), build)


def choose_backend(backend: str, kind: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """The implementation the op ``project`` runs (see `fasttda.ops._library`); an explicit
    backend that cannot run ``kind`` or ``dtype`` raises `BackendUnavailable`, never falls back."""
    unsupported = {} if kind == "rademacher" else {"cuda": f"covers kind='rademacher' only, got kind={kind!r}"}
    if dtype == torch.float64:
        unsupported = {name: FLOAT64_ONLY_REFERENCE for name in ("cpp", "cuda", "triton")}
    _, impl = PROJECT.resolve(backend, device, unsupported)
    return impl


def projection_matrix(
    in_dim: int,
    out_dim: int,
    *,
    kind: str = "rademacher",
    seed: int = 0,
    offset: int = 0,
    s: int = 1,
    scaled: bool = True,
    device=None,
    backend: str | None = "auto",
) -> torch.Tensor:
    """Materialize rows ``[offset, offset + in_dim)`` of P as ``[in_dim, out_dim]`` float32.

    For tests, small layers and interop; `project` never builds this.
    """
    for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    _check_kind_offset_s(kind, offset, s)
    k_row, k_col = ch.seed_keys(seed, kind)
    device = torch.device(device or "cpu")
    _, impl = MATRIX.resolve(backend, device)
    block = impl(in_dim, out_dim, kind, k_row, k_col, offset, s, device)
    return block * _scale(kind, out_dim, s) if scaled else block


# -- argument checks ----------------------------------------------------------------------
def check_project_args(x, out_dim, kind, offset, s) -> None:
    check_float_tensor(x, "x", "B, D", float64=True)
    if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim < 1:
        raise ValueError(f"out_dim must be an int >= 1, got {out_dim!r}")
    _check_kind_offset_s(kind, offset, s)


def _check_kind_offset_s(kind, offset, s) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    if offset >= 2**62:
        raise ValueError(f"offset must be < 2**62, got {offset}")
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
        raise ValueError(f"s must be an int >= 1, got {s!r}")


def _scale(kind: str, out_dim: int, s: int) -> float:
    return 1.0 / math.sqrt(s if kind == "sjlt" else out_dim)


# -- reference ------------------------------------------------------------------------------
def _sign_lut(device: torch.device) -> torch.Tensor:
    if device not in _SIGN_LUT:
        byte = torch.arange(256, device=device)[:, None]
        bits = (byte >> torch.arange(8, device=device)[None, :]) & 1
        _SIGN_LUT[device] = 1.0 - 2.0 * bits.to(torch.float32)
    return _SIGN_LUT[device]


def dense_block(start: int, rows: int, out_dim: int, kind: str, k_row: int, k_col: int, device) -> torch.Tensor:
    """Unscaled rows ``[start, start + rows)`` of a dense P, ``[rows, out_dim]`` float32."""
    keys = ch.row_keys(start, rows, k_row, device)
    if kind == "rademacher":
        n_words = -(-out_dim // 32)
        w = ch.words(keys, ch.col_keys(n_words, k_col, device))
        shifts = torch.tensor([0, 8, 16, 24], device=device)
        byte_idx = (w[:, :, None] >> shifts) & 0xFF
        # embedding() is the fastest CPU gather of small rows (4x plain indexing here).
        signs = torch.nn.functional.embedding(byte_idx, _sign_lut(device))
        return signs.reshape(rows, n_words * 32)[:, :out_dim]
    n_pairs = -(-out_dim // 2)
    w = ch.words(keys, ch.col_keys(2 * n_pairs, k_col, device))
    cos, sin = ch.gaussian_from_words(w[:, 0::2], w[:, 1::2])
    return torch.stack((cos, sin), dim=2).reshape(rows, 2 * n_pairs)[:, :out_dim]


def sjlt_targets(start: int, rows: int, out_dim: int, s: int, k_row: int, k_col: int, device):
    """Buckets and signs ``[rows, s]`` of SJLT input coordinates ``[start, start + rows)``."""
    h = ch.words(ch.row_keys(start, rows, k_row, device), ch.col_keys(s, k_col, device))
    sign = 1.0 - 2.0 * (h & 1).to(torch.float32)
    return (h >> 1) % out_dim, sign


def _block_rows(out_dim: int, kind: str) -> int:
    budget = BLOCK_ENTRIES // 4 if kind == "gaussian" else BLOCK_ENTRIES
    return max(1, budget // out_dim)


def project_reference(x, out_dim, kind, k_row, k_col, offset, s):
    B, D = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # P's entries are exact in both
    out = torch.zeros(B, out_dim, dtype=acc, device=x.device)
    if kind == "sjlt":
        step = max(1, BLOCK_ENTRIES // (B * s))
        for lo in range(0, D, step):
            hi = min(D, lo + step)
            bucket, sign = sjlt_targets(offset + lo, hi - lo, out_dim, s, k_row, k_col, x.device)
            contrib = x[:, lo:hi].to(acc)[:, :, None] * sign.to(acc)  # [B, rows, s]
            out.index_add_(1, bucket.reshape(-1), contrib.reshape(B, -1))
    else:
        step = _block_rows(out_dim, kind)
        for lo in range(0, D, step):
            hi = min(D, lo + step)
            block = dense_block(offset + lo, hi - lo, out_dim, kind, k_row, k_col, x.device)
            out.addmm_(x[:, lo:hi].to(acc), block.to(acc))
    return out.mul_(_scale(kind, out_dim, s))


def matrix_reference(in_dim, out_dim, kind, k_row, k_col, offset, s, device):
    if kind != "sjlt":
        return dense_block(offset, in_dim, out_dim, kind, k_row, k_col, device).contiguous()
    bucket, sign = sjlt_targets(offset, in_dim, out_dim, s, k_row, k_col, device)
    block = torch.zeros(in_dim, out_dim, dtype=torch.float32, device=device)
    rows = torch.arange(in_dim, device=device)[:, None].expand(-1, s)
    return block.index_put_((rows.reshape(-1), bucket.reshape(-1)), sign.reshape(-1), accumulate=True)


PROJECT = Op("project", reference=project_reference, triton="fasttda.kernels.project:launch_project",
             cuda="fasttda.ops._cuda_launchers:project", cpp="project")
MATRIX = Op("projection_matrix", reference=matrix_reference, triton="fasttda.kernels.project:launch_matrix",
            cpp="projection_matrix")
