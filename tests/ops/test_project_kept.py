"""`ops.project` keeps P for repeated CPU calls with few rows (TRAK's small-k case): the
same results as generating it, one generation per (seed, offset, shape), bounded memory."""
import importlib

import pytest
import torch
from test_project import assert_close_to_oracle

from fasttda import ops

project_module = importlib.import_module("fasttda.ops.project")  # the package attribute is the function


@pytest.fixture
def kept(monkeypatch):
    cache = project_module.BytesLRU(1 << 20)
    monkeypatch.setattr(project_module, "_KEPT", cache)
    return cache


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_kept_matrix_gives_the_projection(kept, gen, kind):
    rows = project_module.KEEP_MAX_ROWS[kind]
    x = torch.randn(rows, 301, generator=gen)
    first = ops.project(x, 19, kind=kind, seed=4, offset=77)
    again = ops.project(x[:, :], 19, kind=kind, seed=4, offset=77)
    assert kept.generated == 1 and len(kept) == 1 and torch.equal(first, again)
    assert_close_to_oracle(again, x, 19, kind, 4, offset=77)
    ops.project(x, 19, kind=kind, seed=5, offset=77)  # another seed: another matrix
    ops.project(x[:, 1:], 19, kind=kind, seed=4, offset=78)  # another offset and width
    assert kept.generated == 3
    # more rows than the threshold, or an explicit backend: generated on the fly, not kept
    ops.project(torch.randn(rows + 1, 301, generator=gen), 19, kind=kind, seed=4, offset=77)
    ops.project(x, 19, kind=kind, seed=4, offset=77, backend="reference")
    assert kept.generated == 3


def test_kept_matrix_sums_integers_exactly(kept, gen):
    x = torch.randint(-40, 41, (3, 517), generator=gen).float()
    got = [ops.project(x, 33, seed=9) for _ in range(2)]
    assert kept.generated == 1
    assert torch.equal(got[1], ops.project(x, 33, seed=9, backend="reference"))


def test_kept_matrices_stay_within_budget(kept, gen):
    x = torch.randn(2, 1000, generator=gen)
    for seed in range(6):  # 4 * 1000 * 100 bytes each: two fit in 1 MiB
        ops.project(x, 100, seed=seed)
    assert len(kept) == 2 and kept.bytes <= kept.budget_bytes and kept.generated == 6
    ops.project(x, 300, seed=0)  # 1.2 MB: over the whole budget, never kept
    assert kept.generated == 6 and len(kept) == 2
    project_module.clear_kept_matrices()
    assert len(project_module._KEPT) == 0


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("out_dim", [5, 32, 33])
def test_narrow_matrix_is_kept_transposed_with_the_same_entries(kept, gen, monkeypatch, kind, out_dim):
    monkeypatch.setattr(project_module, "KEEP_SLICE_ENTRIES", 7 * out_dim)  # slices of 7 rows
    x = torch.randn(2, 53, generator=gen)
    got = ops.project(x, out_dim, kind=kind, seed=11, offset=1001)
    (matrix,) = kept._items.values()
    whole = ops.projection_matrix(53, out_dim, kind=kind, seed=11, offset=1001, scaled=False)
    transposed = out_dim <= project_module.KEEP_TRANSPOSED_MAX_K
    assert matrix.shape == ((out_dim, 53) if transposed else (53, out_dim))
    assert torch.equal(matrix.T if transposed else matrix, whole)  # slices: the entries of one build
    assert_close_to_oracle(got, x, out_dim, kind, 11, offset=1001)
