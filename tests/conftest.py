import os

import pytest
import torch


@pytest.fixture
def gen():
    """A fresh, per-test random generator: inputs are random, never zeros."""
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    return g
