"""Which modules are captured, and the column layout of the features they produce.

Capturable modules are ``torch.nn.Linear`` (including the ``lora_A``/``lora_B`` adapters
of PEFT LoRA layers, which are plain Linears) and Hugging Face ``Conv1D`` (GPT-2), whose
weight is stored ``[in, out]``. Embeddings, norms and convolutions are not captured yet.
"""
from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from fasttda.ops._checks import check_seed

LAYOUT_FORMAT = "fasttda.capture.layout/1"


@dataclass(frozen=True)
class ModuleBlock:
    """One captured module and where its features sit in a feature row.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        kind: ``"linear"`` (weight ``[d_out, d_in]``) or ``"conv1d"`` (HF Conv1D, weight ``[d_in, d_out]``).
        lora: ``"A"`` or ``"B"`` for PEFT LoRA adapter matrices, else None.
        d_in, d_out: input and output widths.
        bias: whether the bias gradient is part of the block (``include_bias`` and the module has one).
        seed: the seed of the module's projection: ``module_seed(global_seed, name)`` for
            "factored" and raw (unused there); the global seed itself for "dense", whose one
            matrix spans all selected parameters.
        param_offset: index of the module's first parameter entry in the flattened
            concatenation of all selected parameters (used by "dense").
        param_numel: number of those entries (weight, plus bias when ``bias``).
        start, stop: the module's columns ``[start, stop)`` in the feature row. With
            "dense" every module shares the whole row.
        shape: the block's shape before flattening: ``[k_out, k_in]`` for "factored",
            ``[k]`` for "dense", the weight's own shape for raw gradients (the bias, when
            included, follows the flattened weight).
    """

    name: str
    kind: str
    lora: str | None
    d_in: int
    d_out: int
    bias: bool
    seed: int
    param_offset: int
    param_numel: int
    start: int
    stop: int
    shape: tuple[int, ...]

    @property
    def columns(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class CaptureLayout:
    """The description of a feature row: module name → column slice, plus how it was made."""

    blocks: tuple[ModuleBlock, ...]
    total_dim: int
    projection: dict
    seed: int

    @property
    def slices(self) -> dict[str, slice]:
        return {b.name: b.columns for b in self.blocks}

    def __getitem__(self, name: str) -> ModuleBlock:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(f"module {name!r} is not captured; captured: {[b.name for b in self.blocks]}")

    def __len__(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict:
        """JSON-ready description (stores keep it next to the features)."""
        modules = []
        for block in self.blocks:
            entry = asdict(block)
            entry["shape"] = list(block.shape)
            modules.append(entry)
        return {"format": LAYOUT_FORMAT, "total_dim": self.total_dim, "seed": self.seed,
                "projection": dict(self.projection), "modules": modules}

    @classmethod
    def from_dict(cls, data: dict) -> "CaptureLayout":
        if data.get("format") != LAYOUT_FORMAT:
            raise ValueError(f"layout format must be {LAYOUT_FORMAT!r}, got {data.get('format')!r}")
        blocks = tuple(ModuleBlock(**{**m, "shape": tuple(m["shape"])}) for m in data["modules"])
        return cls(blocks, int(data["total_dim"]), dict(data["projection"]), int(data["seed"]))


def module_seed(seed: int, name: str) -> int:
    """A module's 64-bit seed: blake2b(name, key=seed as 8 little-endian bytes), first 8 bytes, little-endian.

    Stable across machines, processes and Python versions (unlike ``hash()``).
    """
    seed = check_seed(seed)
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little")


def _is_hf_conv1d(module: nn.Module) -> bool:
    # Matched by shape of the class rather than an import, so transformers stays optional.
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2)


def _lora_roles(model: nn.Module) -> dict[int, str]:
    """id(adapter Linear) → "A"/"B" for every PEFT LoRA layer in the model."""
    roles: dict[int, str] = {}
    for module in model.modules():
        for attr, role in (("lora_A", "A"), ("lora_B", "B")):
            adapters = getattr(module, attr, None)
            if isinstance(adapters, nn.ModuleDict):
                for adapter in adapters.values():
                    roles[id(adapter)] = role
    return roles


def capturable_modules(model: nn.Module) -> list[tuple[str, nn.Module, str, str | None]]:
    """``(name, module, kind, lora_role)`` for every capturable module, in ``named_modules`` order."""
    roles = _lora_roles(model)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found.append((name, module, "linear", roles.get(id(module))))
        elif _is_hf_conv1d(module):
            found.append((name, module, "conv1d", None))
    return found


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def select_modules(model: nn.Module, modules=None, *, lora_only: bool = False):
    """The captured ``(name, module, kind, lora_role)`` list.

    Args:
        modules: None (every capturable module except the output embedding, e.g. ``lm_head``),
            or a name pattern or list of them: shell-style globs (``"*.mlp.*"``, exact names
            match themselves) or regular expressions prefixed ``"re:"`` (full match).
            Each pattern must match at least one capturable module.
        lora_only: keep only PEFT LoRA adapter Linears (``lora_A``/``lora_B``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    candidates = capturable_modules(model)
    if lora_only:
        candidates = [c for c in candidates if c[3] is not None]
        if not candidates:
            raise ValueError("lora_only=True but the model has no PEFT LoRA Linear adapters (lora_A/lora_B)")
    if not candidates:
        raise ValueError("the model has no capturable module (torch.nn.Linear or Hugging Face Conv1D)")
    if modules is None:
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        chosen = [c for c in candidates if c[1] is not output]
        if not chosen:
            raise ValueError("the only capturable module is the output embedding; name it in `modules` to capture it")
        return chosen
    patterns = [modules] if isinstance(modules, str) else list(modules)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"modules must be None, a name pattern or a non-empty list of them, got {modules!r}")
    for pattern in patterns:
        if not any(_matches(c[0], pattern) for c in candidates):
            sample = ", ".join(c[0] for c in candidates[:8])
            raise ValueError(f"modules pattern {pattern!r} matches no capturable module; some are: {sample}")
    return [c for c in candidates if any(_matches(c[0], p) for p in patterns)]


def module_dims(module: nn.Module, kind: str) -> tuple[int, int]:
    w = module.weight
    return (w.shape[1], w.shape[0]) if kind == "linear" else (w.shape[0], w.shape[1])
