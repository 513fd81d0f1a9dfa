"""Tiny saved checkpoints and JSONL files for the DDA and CLI tests (loaded back through
from_pretrained on a local directory, the real path)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + " ."


def make_rows(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"ex{i}", "prompt": sentence(rng, rng.randint(3, 9)), "response": sentence(rng, rng.randint(1, 5))}
            for i in range(n)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_checkpoints(root: Path, n_epochs: int = 2, *, seed: int = 0, extra_word: str | None = None) -> list[Path]:
    """``root/base``, ``root/epoch1``…: one tiny Llama whose weights drift per checkpoint."""
    from fasttda.demo.model import ModelSize, build_model, build_tokenizer, save

    texts = [" ".join(WORDS + ["."] + ([extra_word] if extra_word else []))]
    tokenizer = build_tokenizer(texts)
    model = build_model(tokenizer, ModelSize(hidden=16, layers=1, heads=2, intermediate=24, max_positions=64), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    paths = []
    for c in range(n_epochs + 1):
        if c:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
        paths.append(Path(save(model, tokenizer, root / ("base" if c == 0 else f"epoch{c}"))))
    return paths


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add contention on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
