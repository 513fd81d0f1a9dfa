"""TRAK's tests/test_class.py CPU cases with FastTDAProjector as the projector.

Upstream builds torchvision's resnet18 (11.7M parameters) and a BasicProjector with
proj_dim 20. torchvision is not a fasttda dependency (its wheels pin their own torch), so
a small ResNet-style classifier stands in; the projector is FastTDAProjector with the
model's parameter count. The cases that upstream runs on ``cuda:0`` without a CUDA marker
(test_class_init, test_load_ckpt, test_load_ckpt_repeat) run here on the CPU.
"""
import logging

import pytest
import torch as ch
from torch import nn

trak = pytest.importorskip("trak")
from trak import TRAKer  # noqa: E402
from trak.modelout_functions import ImageClassificationModelOutput  # noqa: E402

from fasttda.integrations.trak import FastTDAProjector  # noqa: E402


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return ch.relu(x + self.bn2(self.conv2(ch.relu(self.bn1(self.conv1(x))))))


def small_resnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def cpu_proj():
    return FastTDAProjector(grad_dim=n_params(small_resnet()), proj_dim=20, seed=0, proj_type="rademacher",
                            device="cpu")


def make_traker(tmp_path, model, projector, n, **kw):
    return TRAKer(model=model, task="image_classification", save_dir=tmp_path, projector=projector,
                  train_set_size=n, logging_level=logging.DEBUG, device="cpu", **kw)


def test_class_init_cpu(tmp_path, cpu_proj):
    make_traker(tmp_path, small_resnet(), cpu_proj, 20)


def test_load_ckpt(tmp_path, cpu_proj):
    model = small_resnet()
    make_traker(tmp_path, model, cpu_proj, 20).load_checkpoint(model.state_dict(), model_id=0)


def test_load_ckpt_repeat(tmp_path, cpu_proj):
    model = small_resnet()
    traker = make_traker(tmp_path, model, cpu_proj, 20)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    traker.load_checkpoint(model.state_dict(), model_id=1)


def test_class_featurize_cpu(tmp_path, cpu_proj):
    model = small_resnet()
    N = 5
    batch = ch.randn(N, 3, 32, 32), ch.randint(low=0, high=10, size=(N,))
    traker = make_traker(tmp_path, model, cpu_proj, N)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    traker.featurize(batch, num_samples=N)


def test_custom_model_output(tmp_path, cpu_proj):
    TRAKer(model=small_resnet(), task=ImageClassificationModelOutput(), save_dir=tmp_path, projector=cpu_proj,
           train_set_size=20, logging_level=logging.DEBUG, device="cpu")


def test_score_finalize_cpu(tmp_path, cpu_proj):
    """Upstream test_score_finalize (a cuda case) on the CPU: the whole flow through our projector."""
    model = small_resnet().eval()
    N = 5
    batch = ch.randn(N, 3, 32, 32), ch.randint(low=0, high=10, size=(N,))
    traker = make_traker(tmp_path, model, cpu_proj, N, use_half_precision=False)
    ckpt = model.state_dict()
    traker.load_checkpoint(ckpt, model_id=0)
    traker.featurize(batch, num_samples=N)
    traker.finalize_features()
    traker.start_scoring_checkpoint("test_experiment", ckpt, 0, num_targets=N)
    traker.score(batch, num_samples=N)
    scores = traker.finalize_scores(exp_name="test_experiment")
    assert scores.shape == (N, N) and ch.isfinite(ch.as_tensor(scores)).all()
