"""The frozen bottom of the student, computed once.

With ``train_layers`` set, the embeddings and the bottom ``L - train_layers`` transformer
layers never change during training, so their output for a given text never changes
either. `FrozenPrefix` runs them once per training text (no grad, eval mode) and keeps each
text's hidden states at its own length; a training step then pads the block's cached
states and runs only the trainable top layers and the pooling. Same embeddings as
``student.embed`` (in eval mode) up to float rounding: the encoder's own forward is reused
(its mask handling included) with the layer list cut to the top layers and the cached
states fed to the first of them. In train mode the difference is dropout: the cached
bottom is computed without it (a fixed feature extractor), the top layers keep theirs.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from fasttda.ops.encoder_epilogue import mean_pool_normalize


def _owner(encoder: nn.Module, layers: nn.ModuleList) -> tuple[nn.Module, str]:
    for module in encoder.modules():
        for name, child in module.named_children():
            if child is layers:
                return module, name
    raise ValueError("cannot find the module that holds the transformer layers")


@contextmanager
def _only_layers(encoder: nn.Module, layers: nn.ModuleList, keep: Sequence[nn.Module]):
    """The encoder's layer list replaced by ``keep`` inside (the same module objects)."""
    owner, name = _owner(encoder, layers)
    setattr(owner, name, nn.ModuleList(list(keep)))
    try:
        yield
    finally:
        setattr(owner, name, layers)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class FrozenPrefix:
    """Cached outputs of the frozen bottom ``n_frozen`` layers for a fixed list of texts."""

    def __init__(self, student, texts: Sequence[str], n_frozen: int, *, batch_size: int = 64):
        from fasttda.methods.influcoder.train import layer_stack

        self.student, self.layers = student, layer_stack(student.encoder)
        if not 1 <= n_frozen < len(self.layers):
            raise ValueError(f"n_frozen must be in [1, {len(self.layers) - 1}], got {n_frozen}")
        self.n_frozen = n_frozen
        self.states: list[torch.Tensor] = []
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                for lo in range(0, len(texts), batch_size):
                    self.states += self._bottom(texts[lo: lo + batch_size])
        finally:
            student.train(was_training)

    def _bottom(self, texts: Sequence[str]) -> list[torch.Tensor]:
        batch = self.student.tokenize(texts)
        seen = []
        hook = self.layers[self.n_frozen - 1].register_forward_hook(lambda m, i, o: seen.append(_first(o)))
        try:
            with _only_layers(self.student.encoder, self.layers, list(self.layers)[:self.n_frozen]):
                self.student.encoder(**batch)
        finally:
            hook.remove()
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [h[:n].clone() for h, n in zip(seen[-1], lengths)]

    def __len__(self) -> int:
        return len(self.states)

    def hidden_and_weights(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The top layers' last hidden states ``[B, T, H]`` and pooling weights for the
        cached texts ``rows`` (differentiable in the top layers' weights)."""
        states = [self.states[int(r)] for r in rows]
        lengths = torch.tensor([s.shape[0] for s in states])
        hidden = nn.utils.rnn.pad_sequence(states, batch_first=True)
        mask = (torch.arange(hidden.shape[1])[None, :] < lengths[:, None]).long().to(hidden.device)
        ids = torch.zeros_like(mask)

        def feed(module, args, kwargs):
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        top = list(self.layers)[self.n_frozen:]
        hook = top[0].register_forward_pre_hook(feed, with_kwargs=True)
        try:
            with _only_layers(self.student.encoder, self.layers, top):
                out = self.student.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            hook.remove()
        return self.student.pool_weights(out, mask)

    def embed(self, rows: Sequence[int]) -> torch.Tensor:
        """L2-normalized embeddings ``[B, H]`` of the cached texts ``rows``."""
        return mean_pool_normalize(*self.hidden_and_weights(rows))


def max_difference(student, prefix: FrozenPrefix, texts: Sequence[str], rows: Sequence[int]) -> float:
    """Largest absolute difference between the cached path and ``student.embed`` (eval mode)."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            return float((prefix.embed(rows) - student.embed(list(texts))).abs().max())
    finally:
        student.train(was_training)
