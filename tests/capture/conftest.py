"""Tiny Hugging Face models for the capture tests, saved and loaded back (the real loading path)."""
import pytest
import torch

from capture_reference import VOCAB


def _save_and_load(model, cls, path):
    model.save_pretrained(path)
    return cls.from_pretrained(path, dtype=torch.float64).eval()


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                     bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    return _save_and_load(GPT2LMHeadModel(cfg), GPT2LMHeadModel, tmp_path_factory.mktemp("gpt2"))


def _llama(tmp_path_factory, name):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    # sdpa: transformers' eager masks produce NaN for left-padded rows in float64.
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="sdpa")
    return _save_and_load(LlamaForCausalLM(cfg), LlamaForCausalLM, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return _llama(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def lora_llama(tmp_path_factory):
    peft = pytest.importorskip("peft")
    base = _llama(tmp_path_factory, "llama_lora_base")
    # init_lora_weights=False: random B, so the A adapters get non-zero gradients too.
    cfg = peft.LoraConfig(r=3, lora_alpha=6, lora_dropout=0.1, init_lora_weights=False,
                          target_modules=["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(3)
    return peft.get_peft_model(base, cfg).double().eval()
