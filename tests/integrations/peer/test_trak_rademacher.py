"""TRAK's tests/test_rademacher.py and test_rademacher_additional.py with FastTDAProjector.

Upstream calls ``fast_jl.project_rademacher_8(x, output_size, seed, num_sms)`` directly, which
is what TRAK's CudaProjector calls; here the same call goes through the projector that
replaces it: ``FastTDAProjector(grad_dim, output_size, seed, "rademacher").project(x, 0)``.
Inputs are float16 ones as upstream, so every output is a sum of ±1 (TRAK does not scale):
even for an even input size, odd for an odd one. Sizes cut to CPU size where marked.
"""
from itertools import product

import pytest
import torch as ch

from fasttda.integrations.trak import FastTDAProjector


def project_rademacher_8(input_data, output_size, seed, num_sms):
    proj = FastTDAProjector(grad_dim=input_data.shape[1], proj_dim=output_size, seed=seed,
                            proj_type="rademacher", device=input_data.device, max_batch_size=8)
    proj.num_sms = num_sms
    return proj.project(input_data, model_id=0)


NUM_SMS = FastTDAProjector(1, 1).num_sms

# test_rademacher.py: product([8], [1024, 2048], [512, 1024, 2048], [0, 1]);
# test_rademacher_additional.py: product([8, 16, 32, 48], [180645096], [2048, 4096, 15_360], [0]),
# input size cut to 4099 (CPU size).
PARAM = list(product([8], [1024, 2048], [512, 1024, 2048], [0, 1])) + list(product([8, 16, 32, 48], [4099], [2048], [0]))


@pytest.mark.parametrize("bs, input_size, output_size, seed ", PARAM)
def test_shape(bs: int, input_size: int, output_size: int, seed: int):
    input_data = ch.ones((bs, input_size), dtype=ch.float16)
    result = project_rademacher_8(input_data, output_size, seed, NUM_SMS)
    assert result.shape == (bs, output_size)


def test_running():
    input_data = ch.ones((8, 256), dtype=ch.float16)
    result = project_rademacher_8(input_data, 512, 17, NUM_SMS)
    assert ch.isfinite(result.sum())


def test_even():
    input_data = ch.ones((8, 10240), dtype=ch.float16)
    result = project_rademacher_8(input_data, 1024, 64, NUM_SMS)
    assert ch.all(result % 2 == 0)


def test_odd():
    input_data = ch.ones((8, 10241), dtype=ch.float16)
    result = project_rademacher_8(input_data, 2048, 78, NUM_SMS)
    assert ch.all(result % 2 == 1)
