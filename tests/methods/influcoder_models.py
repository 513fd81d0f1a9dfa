"""A tiny BERT-style encoder saved to a local directory (loaded back through
``AutoModel.from_pretrained``, the real path), for the Influcoder tests."""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import WORDS


def make_encoder(root: Path, *, hidden: int = 24, layers: int = 1, seed: int = 0) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS + [f"ex{i}" for i in range(64)]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    return root
