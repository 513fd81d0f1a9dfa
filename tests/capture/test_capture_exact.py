"""GradientCapture vs exact per-example gradients (torch.func vmap(grad), float64), projected the same way."""
import copy

import pytest
import torch

import fasttda
from capture_reference import (assert_features_close, block_gradients, example_alone, expected_dense,
                               expected_factored, expected_raw, make_batch)
from helpers import needs_triton, triton_device

MODELS = ["tiny_gpt2", "tiny_llama"]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("padding", ["left", "right", "mixed"])
def test_raw_gradients_match_torch_func(request, gen, model_name, padding):
    model = request.getfixturevalue(model_name)
    batch = make_batch(gen, [9, 5, 7], 10, padding)
    with fasttda.GradientCapture(model, projection=None) as cap:
        feats = cap.features(**batch)
    grads = block_gradients(model, cap.layout, batch)
    assert_features_close(feats, expected_raw(cap.layout, grads))


@pytest.mark.parametrize("model_name, include_bias", [("tiny_gpt2", True), ("tiny_llama", False)])
@pytest.mark.parametrize("hold_inputs", [False, True])
def test_factored_matches_kronecker_projection(request, gen, model_name, include_bias, hold_inputs):
    model = request.getfixturevalue(model_name)
    batch = make_batch(gen, [8, 4, 6], 8, "mixed")
    with fasttda.GradientCapture(model, projection=("factored", 5, 3), seed=17, include_bias=include_bias,
                                 hold_inputs=hold_inputs) as cap:
        feats = cap.features(**batch)
    grads = block_gradients(model, cap.layout, batch)
    assert all(b.bias == include_bias for b in cap.layout.blocks)
    assert_features_close(feats, expected_factored(cap.layout, grads, 5, 3))


def test_dense_equals_projection_of_full_gradient(tiny_gpt2, gen):
    batch = make_batch(gen, [7, 5], 7, "left")
    projection = fasttda.capture.Dense(24, kind="gaussian")
    with fasttda.GradientCapture(tiny_gpt2, modules="*.h.1.*", projection=projection, seed=5,
                                 include_bias=True) as cap:
        feats = cap.features(**batch)
    assert cap.layout.total_dim == 24 and all(b.columns == slice(0, 24) for b in cap.layout.blocks)
    grads = block_gradients(tiny_gpt2, cap.layout, batch)
    assert_features_close(feats, expected_dense(cap.layout, grads, 24, kind="gaussian"))


def test_dense_small_row_chunks(tiny_llama, gen, monkeypatch):
    from fasttda.capture import projection as proj

    monkeypatch.setattr(proj, "DENSE_CHUNK_ENTRIES", 40)  # a couple of weight rows per chunk
    batch = make_batch(gen, [6, 4], 6, "right")
    with fasttda.GradientCapture(tiny_llama, modules=["*.layers.0.mlp.*"], projection=("dense", 10)) as cap:
        feats = cap.features(**batch)
    assert_features_close(feats, expected_dense(cap.layout, block_gradients(tiny_llama, cap.layout, batch), 10))


def test_lora_only_captures_adapters(lora_llama, gen):
    batch = make_batch(gen, [7, 5, 6], 7, "mixed")
    with fasttda.GradientCapture(lora_llama, projection=None, lora_only=True) as cap:
        feats = cap.features(**batch)
    names = [b.name for b in cap.layout.blocks]
    assert len(names) == 2 * 3 * 2  # {A, B} × {q, v, down} × 2 layers
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {b.lora for b in cap.layout.blocks} == {"A", "B"}
    grads = block_gradients(lora_llama, cap.layout, batch)
    assert_features_close(feats, expected_raw(cap.layout, grads))


def test_lora_factored_with_base_layers(lora_llama, gen):
    batch = make_batch(gen, [6, 4], 6, "left")
    with fasttda.GradientCapture(lora_llama, modules="*.layers.1.self_attn.*", projection=("factored", 4)) as cap:
        feats = cap.features(**batch)
    names = [b.name for b in cap.layout.blocks]
    assert any(n.endswith("q_proj.base_layer") for n in names) and any(".lora_B." in n for n in names)
    assert_features_close(feats, expected_factored(cap.layout, block_gradients(lora_llama, cap.layout, batch), 4, 4))


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_features_do_not_depend_on_batch_composition(request, gen, model_name, padding):
    model = request.getfixturevalue(model_name)
    batch = make_batch(gen, [10, 3, 6], 10, padding)
    with fasttda.GradientCapture(model, projection=("factored", 6, 4)) as cap:
        together = cap.features(**batch)
        alone = torch.cat([cap.features(**example_alone(batch, b)) for b in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6 * float(alone.abs().max()))


@needs_triton
@pytest.mark.parametrize("hold_inputs", [True, False])
def test_triton_kernels_inside_capture(tiny_llama, gen, hold_inputs):
    batch = make_batch(gen, [6, 4], 6, "mixed")
    kwargs = dict(modules="*.layers.1.*", projection=("factored", 4, 3), hold_inputs=hold_inputs)
    with fasttda.GradientCapture(tiny_llama, backend="reference", **kwargs) as cap:
        ref = cap.features(**batch)
    # Triton runs on CUDA tensors on a GPU machine, and on CPU tensors only under TRITON_INTERPRET=1.
    dev = triton_device()
    model = tiny_llama if dev == "cpu" else copy.deepcopy(tiny_llama).to(dev)
    with fasttda.GradientCapture(model, backend="triton", **kwargs) as cap:
        out = cap.features(**{name: t.to(dev) for name, t in batch.items()})
    assert out.device.type == dev
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
