"""The demo's tokenizer and tiny Llama-style model, both plain Hugging Face objects.

The tokenizer is word-level over the closed vocabulary of the synthetic world (built with
the `tokenizers` library, saved as ``tokenizer.json``), so it ships with every checkpoint
directory and loads offline with ``AutoTokenizer.from_pretrained``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

SPECIALS = ["<pad>", "<unk>", "</s>"]


def build_tokenizer(texts: Iterable[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.split()})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>")


def decode(tokenizer, ids) -> str:
    """Space-joined words, the corpus' own spelling (punctuation is its own word)."""
    special = set(tokenizer.all_special_ids)
    return " ".join(tokenizer.convert_ids_to_tokens([int(i) for i in ids if int(i) not in special]))


@dataclass
class ModelSize:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 176
    max_positions: int = 128


def build_model(tokenizer, size: ModelSize, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.heads, max_position_embeddings=size.max_positions,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save(model, tokenizer, path) -> str:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)
