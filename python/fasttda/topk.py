"""The running top-k over packed keys, and how many rows one scoring chunk holds.

A torch-only leaf module shared by the scoring reference (`fasttda.ops.score`), the Triton
launcher (`fasttda.kernels.score`, whose kernel packs the same keys in registers) and the
store-streaming scorer (`fasttda.scoring`).

A key is one int64 per (score, row): the float32 score's bits mapped to a signed order in
the high 32 bits, ``2**32 - 1 - row`` in the low 32 bits. So a larger key is a higher score,
and between equal scores the lower row index; ``torch.topk`` over keys is the whole top-k
with ties broken the same way on every backend. Rows are limited to ``MAX_ROWS`` per call.
"""
from __future__ import annotations

import torch

SCORE_BUFFER_BYTES = 32 << 20  # one chunk of scores, Q × chunk float32
BLOCK_BYTES = 1 << 20  # one block of rows converted to float32 (about an L2 cache)
MAX_ROWS = (1 << 32) - 1  # row indices are packed into 32 bits of the sort key


def pack_keys(scores: torch.Tensor, first_row: int) -> torch.Tensor:
    """int64 keys of float32 ``scores [Q, n]`` for rows ``first_row + j``: larger key = better."""
    index = torch.arange(first_row, first_row + scores.shape[1], device=scores.device, dtype=torch.int64)
    return pack_keys_at(scores, index)


def pack_keys_at(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int64 keys of float32 ``scores`` for row indices ``rows`` (broadcastable, < 2**32)."""
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    return (ordered << 32) | (0xFFFFFFFF - rows)


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores float32, rows int64)`` of packed keys."""
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return bits.view(torch.float32), 0xFFFFFFFF - (keys & 0xFFFFFFFF)


def merge_topk_indexed(best: torch.Tensor | None, keys: torch.Tensor, k: int):
    """The k best of ``best`` and ``keys`` ``[Q, *]``, sorted, and where each came from:
    ``(keys [Q, k'], index [Q, k'])`` with ``index`` into ``cat(best, keys, dim=1)``."""
    if best is not None:
        keys = torch.cat((best, keys), dim=1)
    top = torch.topk(keys, min(k, keys.shape[1]), dim=1)
    return top.values, top.indices


def merge_topk(best: torch.Tensor | None, keys: torch.Tensor, k: int) -> torch.Tensor:
    """Running top-k over packed keys: the k best of ``best`` and ``keys`` ``[Q, *]``, sorted."""
    return merge_topk_indexed(best, keys, k)[0]


def chunk_topk_keys(scores: torch.Tensor, first_row: int, k: int) -> torch.Tensor:
    """Keys of the k best entries of float32 ``scores [Q, n]`` (rows ``first_row + j``).

    A float topk finds the candidates; only the k winners are packed into keys, unless a
    query has ties at its k-th value, whose whole row is then packed (ties must go to the
    lower index, which torch.topk does not promise).
    """
    k = min(k, scores.shape[1])
    top = torch.topk(scores, k, dim=1)
    at_least_kth = (scores >= top.values[:, -1:]).sum(dim=1)
    keys = pack_keys_at(top.values, top.indices + first_row)
    tied = (at_least_kth > k).nonzero().flatten()
    if tied.numel():
        keys[tied] = torch.topk(pack_keys(scores[tied], first_row), k, dim=1).values
    return torch.sort(keys, dim=1, descending=True).values


def block_rows(dim: int) -> int:
    """Rows converted to float32 at a time: about ``BLOCK_BYTES``."""
    return max(16, BLOCK_BYTES // (4 * max(dim, 1)))


def chunk_rows(n_queries: int, dim: int) -> int:
    """Rows scored per chunk: a ``[Q, chunk]`` float32 buffer of about ``SCORE_BUFFER_BYTES``."""
    step = block_rows(dim)
    return max(step, SCORE_BUFFER_BYTES // (4 * n_queries) // step * step)
