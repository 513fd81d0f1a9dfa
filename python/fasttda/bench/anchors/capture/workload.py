"""The capture benchmark's workloads: models built from a config, batches, the plain step.

Every implementation in the `capture` suite runs the same workload: the same weights (one
model saved with ``save_pretrained`` and loaded back per case, the real loading path), the
same batches, the same block linears, the same rank. Only how the per-example projected
gradients are obtained differs.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from fasttda.bench.anchors import AnchorMissing

# The block linears LoGra-style capture targets: attention and MLP projections, never the
# embeddings, norms or the LM head. Full-match regular expressions over module names.
LLAMA_BLOCK_LINEARS = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
GPT2_BLOCK_LINEARS = r"transformer\.h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))"


@dataclass(frozen=True)
class Workload:
    """One capture workload: an architecture, its size, the batch shape and the rank."""

    name: str
    arch: str  # "llama" or "gpt2"
    layers: int
    width: int
    mlp: int
    vocab: int
    heads: int
    batch: int
    seq_len: int
    batches: int  # distinct batches the timed calls rotate over
    k_in: int = 16
    k_out: int = 16

    @property
    def module_pattern(self) -> str:
        return LLAMA_BLOCK_LINEARS if self.arch == "llama" else GPT2_BLOCK_LINEARS

    @property
    def linears_per_layer(self) -> int:
        return 7 if self.arch == "llama" else 4

    @property
    def modules(self) -> int:
        return self.layers * self.linears_per_layer

    @property
    def feature_dim(self) -> int:
        return self.modules * self.k_in * self.k_out

    def params(self) -> dict:
        """The case parameters every implementation of this workload shares."""
        return dict(model=f"{self.arch}-{self.layers}l-{self.width}w-{self.mlp}mlp-{self.vocab}v",
                    batch=self.batch, seq_len=self.seq_len, rank=f"{self.k_out}x{self.k_in}",
                    modules=self.modules, feature_dim=self.feature_dim, dtype="float32")

    def config(self):
        try:
            import transformers
        except Exception as exc:
            raise AnchorMissing(f"transformers not importable ({type(exc).__name__}: {exc})") from exc
        if self.arch == "llama":
            return transformers.LlamaConfig(
                hidden_size=self.width, intermediate_size=self.mlp, num_hidden_layers=self.layers,
                num_attention_heads=self.heads, num_key_value_heads=self.heads, vocab_size=self.vocab,
                max_position_embeddings=max(256, self.seq_len), tie_word_embeddings=False,
                bos_token_id=0, eos_token_id=0)
        if self.arch == "gpt2":
            return transformers.GPT2Config(
                n_layer=self.layers, n_embd=self.width, n_inner=self.mlp, n_head=self.heads,
                vocab_size=self.vocab, n_positions=max(256, self.seq_len), bos_token_id=0, eos_token_id=0,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {self.arch!r}")


def workloads(quick: bool) -> list[Workload]:
    """A small GPT-2 and the METHODS.md section 8 Llama (quick: a toy GPT-2, 2 batches)."""
    if quick:
        return [Workload("gpt2-tiny", "gpt2", layers=1, width=32, mlp=64, vocab=128, heads=4,
                         batch=4, seq_len=16, batches=2)]
    return [Workload("gpt2-small-2l", "gpt2", layers=2, width=128, mlp=512, vocab=2048, heads=4,
                     batch=8, seq_len=128, batches=4),
            Workload("llama-4l-512", "llama", layers=4, width=512, mlp=1024, vocab=8192, heads=8,
                     batch=8, seq_len=128, batches=4)]


@dataclass
class Batch:
    """One batch: the model inputs (with labels) and the rows it holds in the whole set."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: list[int] = field(default_factory=list)

    def inputs(self) -> dict:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask, labels=self.input_ids)


def make_batches(w: Workload, device: str, seed: int = 0) -> list[Batch]:
    """``w.batches`` full-length batches of random tokens (no padding: every token counts)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(w.batches):
        ids = torch.randint(0, w.vocab, (w.batch, w.seq_len), generator=g)
        out.append(Batch(ids.to(device), torch.ones_like(ids).to(device),
                         rows=list(range(i * w.batch, (i + 1) * w.batch))))
    return out


@contextmanager
def quiet_transformers():
    """No progress bars while the suite loads its models (restored afterwards)."""
    try:
        from transformers.utils import logging as hf_logging
    except Exception:  # no transformers: the suite reports its rows as missing
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class SavedModel:
    """The workload's model saved once to ``root``; `load` gives each case a fresh copy."""

    def __init__(self, w: Workload, root: Path, seed: int = 0):
        config = w.config()  # AnchorMissing without transformers
        import transformers

        self.workload = w
        self.path = Path(root) / w.name
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
        model.save_pretrained(self.path)
        self.parameters = sum(p.numel() for p in model.parameters())
        del model

    def load(self, device: str, *, frozen: bool = False) -> torch.nn.Module:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        model = model.to(device).eval()
        if frozen:
            freeze_except_input_embedding(model)
        return model


def freeze_except_input_embedding(model: torch.nn.Module) -> None:
    """What Bergson's CLI does before capture: no weight needs a gradient, so autograd skips
    every weight-gradient matmul; the input embedding stays trainable so the backward pass
    still reaches every block (the hooks need the activations' gradients, not the weights')."""
    model.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(True)


def target_modules(model: torch.nn.Module, pattern: str) -> list[str]:
    names = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    if not names:
        raise ValueError(f"no module of the model matches {pattern!r}")
    return names


def plain_step(model: torch.nn.Module) -> Callable[[Batch], None]:
    """Forward + backward with nothing captured: the floor every capture is measured against."""

    def step(batch: Batch) -> None:
        model(**batch.inputs()).loss.backward()
        model.zero_grad(set_to_none=True)

    return step
