"""Batches with unequal lengths, padding and response masks, and exact per-example gradients
from ``torch.func`` (vmap over grad) in float64, plus the same projections done the slow way."""
import torch
from torch.func import functional_call, grad, vmap

from fasttda.capture import module_seed, per_example_loss
from fasttda.ops.project import projection_matrix
from fasttda.ops.project_factored import factored_seeds

VOCAB = 53


def make_batch(gen, lengths, T, padding):
    """input_ids/attention_mask/labels with the given real lengths; padding 'left',
    'right' or 'mixed' (alternating); labels -100 on a random prompt prefix."""
    B = len(lengths)
    ids = torch.randint(1, VOCAB, (B, T), generator=gen)
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100)
    for b, n in enumerate(lengths):
        left = padding == "left" or (padding == "mixed" and b % 2 == 0)
        lo = T - n if left else 0
        mask[b, lo:lo + n] = 1
        prompt = int(torch.randint(0, n - 2, (1,), generator=gen))
        labels[b, lo + prompt:lo + n] = ids[b, lo + prompt:lo + n]
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def example_alone(batch, b):
    keep = batch["attention_mask"][b].bool()
    return {k: v[b][keep][None] for k, v in batch.items()}


def per_example_grads(model, batch, param_names):
    """dict name → [B, *shape] float64 exact per-example gradients via vmap(grad).

    Each example is moved to its unpadded form (real tokens first, then padding that the
    causal mask hides, labels -100 there), since transformers' padding masks are not
    vmappable; the capture under test sees the padded batch.
    """
    mask = batch["attention_mask"].bool()
    B, T = mask.shape
    ids = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100)
    for b in range(B):
        n = int(mask[b].sum())
        ids[b, :n] = batch["input_ids"][b][mask[b]]
        labels[b, :n] = batch["labels"][b][mask[b]]
    params = dict(model.named_parameters())
    chosen = {n: params[n].detach() for n in param_names}
    rest = {n: p.detach() for n, p in params.items() if n not in chosen}

    def loss(chosen, ids, labels):
        out = functional_call(model, {**rest, **chosen}, (), {"input_ids": ids[None], "use_cache": False})
        return per_example_loss(out.logits, labels[None], allow_empty=True)[0]

    with torch.enable_grad():
        return vmap(grad(loss), in_dims=(None, 0, 0))(chosen, ids, labels)


def block_gradients(model, layout, batch):
    """Per module: exact per-example weight gradient in the weight's layout [B, ...] and bias gradient (or None)."""
    names = []
    for block in layout.blocks:
        names.append(block.name + ".weight")
        if block.bias:
            names.append(block.name + ".bias")
    g = per_example_grads(model, batch, names)
    return {b.name: (g[b.name + ".weight"], g.get(b.name + ".bias") if b.bias else None) for b in layout.blocks}


def expected_raw(layout, grads):
    parts = []
    for block in layout.blocks:
        w, bias = grads[block.name]
        parts.append(w.reshape(w.shape[0], -1))
        if bias is not None:
            parts.append(bias)
    return torch.cat(parts, 1)


def expected_factored(layout, grads, k_in, k_out, kind="rademacher"):
    """(P_out ⊗ P_in)·vec(G) with materialized matrices; bias as an extra input column of ones."""
    parts = []
    for block in layout.blocks:
        w, bias = grads[block.name]
        G = w if block.kind == "linear" else w.transpose(1, 2)  # [B, d_out, d_in]
        if bias is not None:
            G = torch.cat([G, bias[:, :, None]], 2)
        seed_in, seed_out = factored_seeds(module_seed(layout.seed, block.name))
        p_in = projection_matrix(G.shape[2], k_in, kind=kind, seed=seed_in).double()
        p_out = projection_matrix(G.shape[1], k_out, kind=kind, seed=seed_out).double()
        parts.append(torch.einsum("oK,boi,ik->bKk", p_out, G, p_in).reshape(G.shape[0], -1))
    return torch.cat(parts, 1)


def expected_dense(layout, grads, k, kind="rademacher"):
    flat = expected_raw(layout, grads)
    return flat @ projection_matrix(flat.shape[1], k, kind=kind, seed=layout.seed).double()


def assert_features_close(actual, expected, rtol=1e-4):
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert expected.abs().max() > 0
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * float(expected.abs().max()))
