"""Checkpoints: a model and its tokenizer loaded from a local directory, and their fingerprints.

Any Hugging Face causal LM saved with ``save_pretrained`` loads here, and so does a PEFT
LoRA adapter directory (``adapter_config.json``; its base model must be loadable offline).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from fasttda.data import tokenizer_fingerprint


class CheckpointError(ValueError):
    """A model directory that cannot be used; the message is one line."""


@dataclass
class Checkpoint:
    path: str
    model: torch.nn.Module
    tokenizer: object
    is_lora: bool

    @cached_property
    def fingerprint(self) -> dict:
        """The full SHA-256 of the weights (`fasttda.store.model_fingerprint`), as a store records it."""
        from fasttda.store import model_fingerprint

        return model_fingerprint(self.model, name=str(self.path))

    @cached_property
    def sampled_fingerprint(self) -> str:
        """`sampled_fingerprint` of the model: what stores are checked against, cheaply."""
        return sampled_fingerprint(self.model)

    @property
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> Checkpoint:
    """Load the model and its tokenizer from a local directory, in eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory not found: {path}")
    is_lora = (path / "adapter_config.json").is_file()
    if not is_lora and not (path / "config.json").is_file():
        raise CheckpointError(f"{path} holds no Hugging Face model (no config.json or adapter_config.json)")
    for name in ("adapter_config.json", "config.json"):
        if (path / name).is_file():
            _read_json(path / name)  # a clear error naming the file, before transformers reads it
    try:
        with quiet_transformers():
            return _load(path, device, dtype, is_lora)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused to load its pickled weights (pytorch_model.bin): they hold objects "
                              "other than tensors, and fasttda never unpickles code; convert them to "
                              "safetensors") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None


@contextmanager
def quiet_transformers():
    """Transformers' logging at errors only and its progress bars off, restored on exit."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load(path: Path, device, dtype, is_lora: bool) -> Checkpoint:
    from transformers import AutoTokenizer

    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if is_lora:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), **kwargs)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer_dir = path if _has_tokenizer(path) else _lora_base_dir(path) if is_lora else path
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    model.to(device).eval()
    return Checkpoint(str(path), model, tokenizer, is_lora)


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def _lora_base_dir(path: Path) -> Path:
    config = _read_json(path / "adapter_config.json")
    return Path(config.get("base_model_name_or_path") or path)


def _read_json(file: Path) -> dict:
    """A model directory's JSON config, or a `CheckpointError` naming the file and what is wrong."""
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{file}: not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise CheckpointError(f"{file}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def load_tokenizer(path: str | os.PathLike):
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory not found: {path}")
    if (path / "adapter_config.json").is_file() and not _has_tokenizer(path):
        path = _lora_base_dir(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {str(exc).splitlines()[0]}") from None


def check_same_tokenizer(paths: list[str | os.PathLike]) -> None:
    """All checkpoints must tokenize alike, or their gradients are not comparable."""
    first = tokenizer_fingerprint(load_tokenizer(paths[0]))
    for other in paths[1:]:
        if tokenizer_fingerprint(load_tokenizer(other)) != first:
            raise CheckpointError(
                f"the tokenizer in {other} differs from the one in {paths[0]}; "
                "all checkpoints must share one tokenizer")


def sampled_fingerprint(model: torch.nn.Module) -> str:
    """A cheap 16-hex-digit hash that tells checkpoints apart, NOT a content hash: every
    parameter's name, shape, dtype and a strided sample of at most 4096 of its values
    (fine-tuning moves them all). `fasttda.store.model_fingerprint` is the full SHA-256."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to("cpu", torch.float32).contiguous()
            h.update(f"{name}|{tuple(param.shape)}|{param.dtype}|".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
