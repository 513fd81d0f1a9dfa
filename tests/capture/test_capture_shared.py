"""Kept projection matrices and inputs shared by several modules (q/k/v, gate/up)."""
import pytest
import torch
from torch import nn

import fasttda
from capture_reference import assert_features_close, block_gradients, expected_factored, make_batch
from fasttda.capture import CaptureHooks
from fasttda.capture.matrices import MatrixCache
from fasttda.ops.project import projection_matrix


def test_matrix_cache_keeps_side_by_side_matrices_within_budget():
    cache = MatrixCache(budget_bytes=37 * 8 * 4 + 37 * 4 * 4)  # room for the first two only
    both = cache.matrix((3, 11), 37, 4, "gaussian", "cpu")
    parts = [projection_matrix(37, 4, kind="gaussian", seed=s) for s in (3, 11)]
    assert torch.equal(both, torch.cat(parts, dim=1))  # the same generator: bitwise
    assert cache.matrix((3, 11), 37, 4, "gaussian", "cpu") is both and cache.generated == 1
    one = cache.matrix((5,), 37, 4, "rademacher", "cpu")
    assert torch.equal(one, projection_matrix(37, 4, seed=5))
    assert cache.bytes <= cache.budget_bytes and len(cache) == 2
    cache.matrix((6,), 37, 4, "rademacher", "cpu")  # over budget: the least recently used goes
    assert len(cache) == 2 and cache.matrix((3, 11), 37, 4, "gaussian", "cpu") is not both
    assert cache.matrix((1, 2, 3), 37, 8, "rademacher", "cpu") is None  # larger than the whole budget
    with pytest.raises(ValueError, match="budget_bytes"):
        MatrixCache(budget_bytes=-1)


def test_shared_inputs_project_once_and_match_exact_gradients(tiny_llama, gen):
    batches = [make_batch(gen, [8, 4, 6], 8, "mixed"), make_batch(gen, [7, 7], 7, "right"),
               make_batch(gen, [5, 8, 3], 8, "left")]
    with fasttda.GradientCapture(tiny_llama, projection=("factored", 5, 3), seed=17) as cap:
        feats = [cap.features(**batch) for batch in batches]  # the 2nd and 3rd use the groups
        groups = {first: tuple(b.name.rsplit(".", 1)[1] for b in g) for first, g in cap.hooks._groups.items()}
        generated = cap.hooks.matrices.generated
        cap.features(**batches[0])
        assert cap.hooks.matrices.generated == generated  # matrices are kept between batches
    for got, batch in zip(feats, batches):
        assert_features_close(got, expected_factored(cap.layout, block_gradients(tiny_llama, cap.layout, batch), 5, 3))
    layer0 = "model.layers.0."
    assert groups[layer0 + "self_attn.q_proj"] == ("q_proj", "k_proj", "v_proj")
    assert groups[layer0 + "mlp.gate_proj"] == ("gate_proj", "up_proj")


class TwoReaders(nn.Module):
    """Modules ``a`` and ``b`` read one tensor; ``mutate`` changes it in place between them."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 3)
        self.mutate = False

    def forward(self, x):
        h = x * 2.0
        ya = self.a(h)
        if self.mutate:
            h.add_(0.5)
        return self.c(torch.tanh(ya) * self.b(h))


def _features(hooks, model, x):
    model(x).pow(2).sum().backward()
    return hooks.pop_features()


@pytest.mark.parametrize("mutate", [False, True])
def test_shared_input_is_used_only_while_unchanged(gen, mutate):
    torch.manual_seed(0)
    model = TwoReaders().requires_grad_(False)
    xs = [torch.randn(3, 4, 6, generator=gen, dtype=torch.float32) for _ in range(2)]
    learned = CaptureHooks(model, projection=("factored", 4, 2), include_bias=True, seed=3)
    with learned:
        _features(learned, model, xs[0])
        assert [b.name for b in learned._groups["a"]] == ["a", "b"]
        model.mutate = mutate  # the group was learned unchanged; now b may see another tensor
        shared = _features(learned, model, xs[1])
        assert ("a" in learned._groups) == (not mutate)  # learned again from this batch
    fresh = CaptureHooks(model, projection=("factored", 4, 2), include_bias=True, seed=3)
    with fresh:  # a first batch: nothing learned, every module projects its own input
        alone = _features(fresh, model, xs[1])
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-6 * float(alone.abs().max()))


@pytest.mark.parametrize("budget", [0, None])
def test_matrices_too_large_to_keep_give_the_same_features(gen, budget):
    """A budget too small for any matrix: every block projects with ops.project instead."""
    torch.manual_seed(1)
    model = TwoReaders().requires_grad_(False)
    xs = [torch.randn(2, 5, 6, generator=gen) for _ in range(2)]
    runs = []
    for b in (budget, 0):
        hooks = CaptureHooks(model, projection=("factored", 3, 2), include_bias=True, seed=8)
        if b is not None:
            hooks.matrices.budget_bytes = b
        with hooks:
            runs.append([_features(hooks, model, x) for x in xs])
            assert (len(hooks.matrices) == 0) == (b == 0)
    for kept, streamed in zip(*runs):
        torch.testing.assert_close(kept, streamed, rtol=1e-5, atol=1e-6 * float(streamed.abs().max()))
