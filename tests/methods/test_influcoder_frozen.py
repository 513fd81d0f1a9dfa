"""The cached frozen bottom of the student (`frozen.FrozenPrefix`) gives the embeddings and
the training of the full forward."""
import pytest
import torch
from influcoder_models import make_encoder
from tiny_models import make_rows, one_thread  # noqa: F401

from fasttda.methods import influcoder as ic
from fasttda.methods.influcoder.frozen import FrozenPrefix
from fasttda.methods.influcoder.train import TrainConfig, train


def _student(tmp_path, pooling, gen, layers=3):
    student = ic.Student.load(make_encoder(tmp_path / "enc", layers=layers, seed=5), template="{prompt} {response}",
                              pooling=pooling, max_length=24)
    for module in student.modules():  # no dropout: the two paths must then agree exactly in math
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if student.pool_query is not None:
        student.pool_query.data.copy_(torch.randn(student.dim, generator=gen))
    return student


def _texts(seed, n):
    # odd, varied lengths, some cut by max_length: every block pads differently
    return [" ".join([r["prompt"]] * (1 + i % 4)) + " " + r["response"] for i, r in enumerate(make_rows(seed, n))]


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_cached_bottom_gives_the_full_forward_embeddings(tmp_path, gen, pooling):
    student = _student(tmp_path, pooling, gen)
    texts = _texts(7, 13)
    prefix = FrozenPrefix(student, texts, 2, batch_size=5)  # cached in batches of another make-up
    rows = [11, 0, 6, 3, 12, 9, 4]
    student.eval()
    got = prefix.embed(rows)
    oracle = student.double()
    with torch.no_grad():
        hidden, weights = oracle.hidden_and_weights([texts[r] for r in rows])
        want = torch.nn.functional.normalize((hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True),
                                             dim=1)
    student.float()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # distinct texts, distinct rows

    # gradients reach the top layers' weights as through the full forward
    def grads(fn):
        student.zero_grad(set_to_none=True)
        fn().pow(3).sum().backward()
        return {n: p.grad.clone() for n, p in student.named_parameters() if ".layer.2." in n and p.grad is not None}

    cached, full = grads(lambda: prefix.embed(rows)), grads(lambda: student.embed([texts[r] for r in rows]))
    assert cached and cached.keys() == full.keys()
    for name in cached:
        torch.testing.assert_close(cached[name], full[name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="n_frozen"):
        FrozenPrefix(student, texts, 3)


def test_training_on_the_cache_matches_the_full_forward(tmp_path, gen):
    at, pt = _texts(1, 6), _texts(2, 9)
    y = torch.rand(6, 9, generator=gen) * 2 - 1
    trained = []
    for cache in (True, False):
        student = _student(tmp_path / str(cache), "attention", torch.Generator().manual_seed(3))
        config = TrainConfig(steps=4, anchors_per_step=3, candidates_per_step=5, accumulation=2, lr=5e-3,
                             warmup=0.0, train_layers=1, hard_fraction=0.4, cache_frozen=cache)
        history = train(student, at, pt, y, config)
        trained.append((history["loss"], dict(student.named_parameters())))
    (loss_c, params_c), (loss_f, params_f) = trained
    torch.testing.assert_close(torch.tensor(loss_c), torch.tensor(loss_f), rtol=1e-4, atol=1e-5)
    moved = 0
    for name, p in params_c.items():
        torch.testing.assert_close(p, params_f[name], rtol=1e-4, atol=1e-5)
        moved += ".layer.2." in name
    assert moved


def test_pool_lr_moves_the_attention_query_at_its_own_rate(tmp_path, gen):
    at, pt = _texts(3, 5), _texts(4, 8)
    y = torch.rand(5, 8, generator=gen) * 2 - 1
    moved = {}
    for pool_lr in (None, 5e-2):
        student = ic.Student.load(make_encoder(tmp_path / str(pool_lr), layers=2, seed=5), pooling="attention",
                                  template="{prompt} {response}")
        encoder_before = {n: p.detach().clone() for n, p in student.encoder.named_parameters()}
        config = TrainConfig(steps=3, anchors_per_step=3, candidates_per_step=5, accumulation=1, lr=1e-4,
                             warmup=0.0, train_layers=1, hard_fraction=0.0, pool_lr=pool_lr)
        train(student, at, pt, y, config)
        moved[pool_lr] = float(student.pool_query.detach().abs().max())
        top = max(float((p.detach() - encoder_before[n]).abs().max()) for n, p in student.encoder.named_parameters())
        assert 0 < top < 1e-3  # the encoder stays at its own lr either way
    # Adam moves each entry by about lr per step (3 steps, linear decay after no warm-up)
    assert 0 < moved[None] <= 3e-4 + 1e-6 and 2e-2 <= moved[5e-2] <= 1.5e-1 + 1e-6, moved
    with pytest.raises(ValueError, match="pool_lr"):
        train(student, at, pt, y, TrainConfig(pool_lr=0.0))
