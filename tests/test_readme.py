"""The README's building-blocks snippet runs as written (on a tiny Llama), so it cannot rot."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def building_blocks_snippet() -> str:
    text = README.read_text()
    section = text.split("## The building blocks", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_building_blocks_snippet_runs(tmp_path, monkeypatch, gen):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "m")
    model = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 64, (3, 10), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    namespace = {"model": model, "batch": batch, "g_layer1": torch.randn(4, 100, generator=gen),
                 "g_layer2": torch.randn(4, 57, generator=gen)}
    monkeypatch.chdir(tmp_path)
    exec(compile(building_blocks_snippet(), "README.md", "exec"), namespace)
    top = namespace["top"]
    assert top.indices[0, 0].item() == 0 and top.ids[0][0] == "ex0"  # a row is its own best cosine match
