"""GradientCapture/CaptureHooks behaviour: freezing, the hook API, seeds, layout, losses, bad input."""
import json

import pytest
import torch

import fasttda
from capture_reference import make_batch
from fasttda.capture import CaptureHooks, CaptureLayout, module_seed, per_example_loss, position_ids_from_mask


def test_freezes_and_restores_model_state(tiny_llama, gen):
    model = tiny_llama
    model.train()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = {}
    hook = model.model.layers[1].mlp.register_forward_hook(
        lambda m, i, o: seen.update(grad=[p.requires_grad for p in model.parameters()], training=m.training))
    try:
        with fasttda.GradientCapture(model, projection=("factored", 4)) as cap:
            cap.features(**make_batch(gen, [5, 4], 5, "right"))
    finally:
        hook.remove()
    assert not any(seen["grad"]) and seen["training"] is False
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())  # no weight-gradient matmuls ran
    assert all(m.training for m in model.modules())
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    model.eval()


def test_hooks_in_a_user_training_loop(tiny_llama, gen):
    batch = make_batch(gen, [7, 5, 6], 7, "left")
    spec = dict(modules=["*.mlp.*", "re:.*layers\\.1\\.self_attn\\.[qk]_proj"], projection=("factored", 4, 3), seed=9)
    with fasttda.GradientCapture(tiny_llama, **spec) as cap:
        expected = cap.features(**batch)
    hooks = CaptureHooks(tiny_llama, **spec)
    assert hooks.layout == cap.layout
    with hooks:
        hooks.set_token_mask(batch["attention_mask"])
        out = tiny_llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=position_ids_from_mask(batch["attention_mask"]))
        per_example_loss(out.logits, batch["labels"], batch["attention_mask"]).sum().backward()
        feats = hooks.pop_features()
        with pytest.raises(RuntimeError, match="no batch"):
            hooks.pop_features()
    assert not hooks.attached
    # The user's parameters required grad, so their training step still gets .grad.
    assert tiny_llama.model.layers[0].mlp.up_proj.weight.grad is not None
    tiny_llama.zero_grad(set_to_none=True)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_hooks_need_a_backward_pass(tiny_gpt2, gen):
    batch = make_batch(gen, [5, 3], 5, "right")
    with CaptureHooks(tiny_gpt2, projection=None) as hooks:
        tiny_gpt2(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        with pytest.raises(RuntimeError, match="call backward"):
            hooks.pop_features()
        with torch.no_grad():  # forwards without grad are not recorded
            tiny_gpt2(input_ids=batch["input_ids"])
        with pytest.raises(RuntimeError, match="no batch"):
            hooks.pop_features()


def test_seeds_reproducible_and_module_specific(tiny_gpt2, gen):
    assert module_seed(0, "model.layers.0.mlp.up_proj") == 11869254472492987769
    assert module_seed(7, "transformer.h.1.attn.c_attn") == 8089861841995799503
    batch = make_batch(gen, [6, 4], 6, "right")
    runs = []
    for seed in (3, 3, 4):
        with fasttda.GradientCapture(tiny_gpt2, projection=("factored", 4), seed=seed) as cap:
            runs.append(cap.features(**batch))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    seeds = [b.seed for b in cap.layout.blocks]
    assert len(set(seeds)) == len(seeds)


def test_layout_order_slices_and_json(tiny_gpt2):
    cap = fasttda.GradientCapture(tiny_gpt2, projection=("factored", 4, 2), include_bias=True)
    layout = cap.layout
    order = [n for n, _ in tiny_gpt2.named_modules()]
    names = [b.name for b in layout.blocks]
    assert names == sorted(names, key=order.index) and "lm_head" not in names
    assert len(names) == 8 and layout.total_dim == 8 * 8
    assert [b.start for b in layout.blocks] == list(range(0, 64, 8))
    c_attn = layout["transformer.h.0.attn.c_attn"]
    assert (c_attn.kind, c_attn.d_in, c_attn.d_out, c_attn.bias, c_attn.shape) == ("conv1d", 16, 48, True, (2, 4))
    assert layout.slices["transformer.h.1.mlp.c_proj"] == slice(56, 64)
    data = json.loads(json.dumps(layout.to_dict()))
    assert data["projection"] == {"type": "factored", "k_in": 4, "k_out": 2, "kind": "rademacher"}
    assert CaptureLayout.from_dict(data) == layout
    raw = fasttda.GradientCapture(tiny_gpt2, modules="transformer.h.0.attn.c_attn", projection=None).layout
    assert raw.total_dim == 16 * 48 and raw.blocks[0].shape == (16, 48)  # Conv1D weight is [in, out]


def test_output_embedding_only_when_named(tiny_llama):
    cap = fasttda.GradientCapture(tiny_llama, modules=["lm_head"], projection=("factored", 2))
    assert [b.name for b in cap.layout.blocks] == ["lm_head"]


def test_user_loss_function(tiny_llama, gen):
    batch = make_batch(gen, [6, 5], 6, "left")
    with fasttda.GradientCapture(tiny_llama, projection=("factored", 3)) as cap:
        base = cap.features(**batch)
    weights = torch.tensor([2.0, -0.5], dtype=torch.float64)

    def weighted(outputs, batch):
        return weights * per_example_loss(outputs.logits, batch["labels"], batch["attention_mask"])

    with fasttda.GradientCapture(tiny_llama, projection=("factored", 3), loss_fn=weighted) as cap:
        scaled = cap.features(**batch)
    torch.testing.assert_close(scaled, base * weights[:, None].float(), rtol=1e-5, atol=1e-7)
    expected_losses = weights * per_example_loss(tiny_llama(**{k: v for k, v in batch.items() if k != "labels"},
                                                            position_ids=position_ids_from_mask(batch["attention_mask"])).logits,
                                                 batch["labels"], batch["attention_mask"])
    torch.testing.assert_close(cap.last_losses, expected_losses.detach())


def test_default_labels_count_every_real_token(tiny_llama, gen):
    batch = make_batch(gen, [6, 4], 6, "right")
    full = {**batch, "labels": torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)}
    with fasttda.GradientCapture(tiny_llama, projection=("factored", 3)) as cap:
        implicit = cap.features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        explicit = cap.features(**full)
    torch.testing.assert_close(implicit, explicit)


def test_per_example_loss_ignores_padding_and_prompt(gen):
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100, 3, 4, 1, 2], [5, 6, -100, -100, -100]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    loss = per_example_loss(logits, labels, mask)
    ce = torch.nn.functional.cross_entropy
    # Example 0: token 1 is predicted from padding, so only labels 2..4 count.
    torch.testing.assert_close(loss[0], ce(logits[0, 1:4], labels[0, 2:5]))
    torch.testing.assert_close(loss[1], ce(logits[1, 0:1], labels[1, 1:2]))
    with pytest.raises(ValueError, match=r"examples \[1\]"):
        per_example_loss(logits, torch.tensor([[1, 2, 3, 4, 5], [5, -100, -100, -100, -100]]))


def test_bad_input(tiny_llama, tiny_gpt2, gen):
    batch = make_batch(gen, [5, 4], 5, "right")
    with pytest.raises(ValueError, match="matches no capturable module"):
        fasttda.GradientCapture(tiny_llama, modules=["*.attn_nope.*"])
    with pytest.raises(ValueError, match="lora_only"):
        fasttda.GradientCapture(tiny_gpt2, lora_only=True)
    with pytest.raises(ValueError, match="projection must be"):
        fasttda.GradientCapture(tiny_llama, projection=("factored", 2, 3, 4))
    with pytest.raises(ValueError, match="Factored.k_in"):
        fasttda.GradientCapture(tiny_llama, projection=("factored", 0))
    with pytest.raises(ValueError, match="hold_inputs"):
        fasttda.GradientCapture(tiny_llama, projection=None, hold_inputs=True)
    with pytest.raises(ValueError, match="seed"):
        fasttda.GradientCapture(tiny_llama, seed=-1)
    with pytest.raises(TypeError, match="model must be"):
        fasttda.GradientCapture(object())
    cap = fasttda.GradientCapture(tiny_llama, projection=("factored", 2))
    with pytest.raises(RuntimeError, match="inside `with"):
        cap.features(**batch)
    with cap:
        with pytest.raises(ValueError, match="input_ids"):
            cap.features(attention_mask=batch["attention_mask"])
        with pytest.raises(ValueError, match="labels must be"):
            cap.features(**{**batch, "labels": batch["labels"][:, :3]})
        with pytest.raises(ValueError, match="only 0 and 1"):
            cap.features(**{**batch, "attention_mask": batch["attention_mask"] * 2})
        with pytest.raises(ValueError, match="no counted label"):
            cap.features(**{**batch, "labels": torch.full_like(batch["labels"], -100)})
        with pytest.raises(ValueError, match="loss_fn must return"):
            cap.loss_fn = lambda outputs, batch: outputs.logits.sum(-1)
            cap.features(**batch)
        cap.loss_fn = None
        assert cap.features(**batch).shape == (2, cap.layout.total_dim)  # still usable after errors
    assert all(p.requires_grad for p in tiny_llama.parameters())


def test_gradient_checkpointing(tiny_llama, gen):
    batch = make_batch(gen, [5, 4], 5, "left")
    with fasttda.GradientCapture(tiny_llama, projection=("factored", 3)) as cap:
        expected = cap.features(**batch)
    tiny_llama.gradient_checkpointing_enable()
    try:
        tiny_llama.train()
        with pytest.raises(ValueError, match="gradient checkpointing"):
            CaptureHooks(tiny_llama).attach()
        with fasttda.GradientCapture(tiny_llama, projection=("factored", 3)) as cap:  # eval mode: no recompute
            torch.testing.assert_close(cap.features(**batch), expected)
    finally:
        tiny_llama.gradient_checkpointing_disable()
        if getattr(tiny_llama, "_require_grads_hook", None) is not None:
            tiny_llama.disable_input_require_grads()  # enable() left this embedding hook behind
        tiny_llama.eval()


def test_shared_module_called_twice_and_2d_inputs(gen):
    """A plain nn.Module: one Linear applied twice per forward, inputs [B, d] without a token axis."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = torch.nn.Linear(6, 6)
            self.head = torch.nn.Linear(6, 1, bias=False)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))

    model = Tiny().double()
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    expected = []
    for b in range(4):
        model.zero_grad()
        model(x[b:b + 1]).sum().backward()
        expected.append(torch.cat([model.shared.weight.grad.flatten(), model.shared.bias.grad]))
    model.zero_grad(set_to_none=True)
    hooks = CaptureHooks(model, modules=["shared"], projection=None, include_bias=True)
    with hooks:
        model(x).sum().backward()
        feats = hooks.pop_features()
    torch.testing.assert_close(feats.double(), torch.stack(expected), rtol=1e-5, atol=1e-6)
