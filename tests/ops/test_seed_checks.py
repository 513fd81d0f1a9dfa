"""Seeds: any integer type (numpy integers, as TRAK passes them) means the same matrix as the int."""
import numpy as np
import pytest
import torch

import fasttda
from fasttda import ops
from fasttda.capture import module_seed


@pytest.mark.parametrize("np_seed", [np.int64(123), np.uint32(123), np.uint64(123), torch.tensor(123)])
def test_integer_seeds_of_any_type_mean_the_int(np_seed, gen):
    x = torch.randn(3, 41, generator=gen)
    for kind in ("rademacher", "gaussian", "sjlt"):
        assert torch.equal(ops.project(x, 9, kind=kind, seed=np_seed), ops.project(x, 9, kind=kind, seed=123))
    assert ops.factored_seeds(np_seed) == ops.factored_seeds(123)
    assert module_seed(np_seed, "m") == module_seed(123, "m")
    assert torch.equal(ops.project_grass(x, 9, keep=0.5, seed=np_seed), ops.project_grass(x, 9, keep=0.5, seed=123))


def test_capture_layout_stores_numpy_seed_as_int():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    cap = fasttda.GradientCapture(model, seed=np.int64(5), projection=None)
    assert type(cap.layout.seed) is int and cap.layout.seed == 5


@pytest.mark.parametrize("bad, err", [(1.0, TypeError), (True, TypeError), ("1", TypeError), (np.float64(2), TypeError),
                                      (-1, ValueError), (np.int64(-1), ValueError), (2**64, ValueError)])
def test_bad_seeds_are_refused(bad, err):
    with pytest.raises(err, match="seed"):
        ops.project(torch.ones(1, 3), 2, seed=bad)
