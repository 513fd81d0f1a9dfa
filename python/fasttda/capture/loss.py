"""Per-example causal-LM loss: the mean token cross-entropy of each example's counted tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     *, allow_empty: bool = False) -> torch.Tensor:
    """``[B]`` losses: for each example, mean CE of ``logits[:, t]`` predicting ``labels[:, t + 1]``.

    Label ``t + 1`` counts when it is not -100 and (if given) ``attention_mask`` is 1 at
    both t and t + 1, so padding on either side changes nothing.
    Summing the result over the batch gives a loss whose gradient carries every example's
    own gradient, so per-example features come out of one backward pass. Cross-entropy is
    computed in float32 at least (float64 logits stay float64).

    Raises ValueError for an example without any counted token, unless ``allow_empty``
    (its loss is then 0 and its features are zeros).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be [B, T] = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise TypeError(f"labels must be integer token ids, got {labels.dtype}")
    # The targets are shifted, not the logits: position t predicts labels[:, t + 1], and the
    # last position gets no target. Slicing logits[:, :-1] instead would copy the [B, T, V]
    # logits (not contiguous once sliced) and, in backward, zero-fill and copy a gradient
    # of that size again: at a vocabulary of 8k and more, that is most of the loss's cost.
    B, T = labels.shape
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    counted = targets != IGNORE_INDEX
    if attention_mask is not None:
        if attention_mask.shape != labels.shape:
            raise ValueError(f"attention_mask must be [B, T] = {tuple(labels.shape)}, got {tuple(attention_mask.shape)}")
        # Both ends must be real tokens: with left padding the first real token would
        # otherwise be predicted from a padding position, which it never is when alone.
        real = attention_mask != 0
        counted = counted & real & F.pad(real[:, 1:], (0, 1), value=False)
    counts = counted.sum(1)
    if not allow_empty and bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"examples {empty} have no counted label token (all -100 or padding after the causal shift)")
    work = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    safe_targets = torch.where(counted, targets, torch.zeros_like(targets))
    token_loss = F.cross_entropy(work.reshape(B * T, work.shape[-1]), safe_targets.reshape(-1), reduction="none")
    token_loss = torch.where(counted.reshape(-1), token_loss, torch.zeros((), dtype=token_loss.dtype,
                                                                          device=token_loss.device))
    # Summed over the T - 1 predicting positions, as before (the last one holds 0).
    return token_loss.reshape(B, T)[:, :-1].sum(1) / counts.clamp(min=1).to(token_loss.dtype)


def default_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Labels for plain language modelling: the input ids, -100 at padding."""
    if attention_mask is None:
        return input_ids.clone()
    return torch.where(attention_mask != 0, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift an example."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
