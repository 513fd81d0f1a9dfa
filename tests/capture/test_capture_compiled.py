"""GradientCapture with a torch.compile'd model (captured through its original module, eagerly:
the GradientCapture docstring says why capture itself is not compiled), and with float masks."""
import torch

import fasttda
from capture_reference import make_batch


def test_compiled_model_gives_the_eager_features(tiny_gpt2, gen):
    batch = make_batch(gen, [5, 3], 5, "right")
    with fasttda.GradientCapture(tiny_gpt2, projection=("factored", 3), seed=4) as cap:
        eager = cap.features(**batch)
    compiled = torch.compile(tiny_gpt2, backend="eager")
    with fasttda.GradientCapture(compiled, projection=("factored", 3), seed=4) as cap:
        got = cap.features(**batch)
    assert torch.equal(got, eager)
    assert not any(b.name.startswith("_orig_mod") for b in cap.layout.blocks)


def test_float_attention_mask_equals_the_integer_one(tiny_llama, gen):
    """A float 0/1 mask (a loss mask, say) is accepted by capture and by its hooks."""
    batch = make_batch(gen, [5, 3], 5, "left")
    with fasttda.GradientCapture(tiny_llama, projection=("factored", 2)) as cap:
        want = cap.features(**batch)
        got = cap.features(**{**batch, "attention_mask": batch["attention_mask"].float()})
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    hooks = fasttda.capture.CaptureHooks(tiny_llama, projection=("factored", 2))
    hooks.set_token_mask(batch["attention_mask"].float())
    assert hooks._token_mask.dtype == torch.bool
