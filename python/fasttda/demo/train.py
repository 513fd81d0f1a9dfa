"""Pre-training θ₀ on documents and fine-tuning it on summaries, one checkpoint per epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fasttda.data import IGNORE_INDEX, Example, collate, encode, pad_id_of
from fasttda.demo.model import save


def _schedule(optimizer, total_steps: int, warmup: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * (1 - progress)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train(model, rows: Sequence[tuple[list[int], list[int]]], pad: int, *, epochs: int, lr: float,
           batch_size: int, seed: int, desc: str, progress: bool, on_epoch=None) -> list[float]:
    """AdamW with warm-up and linear decay; returns each epoch's mean learning rate."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(rows) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = _schedule(optimizer, epochs * steps_per_epoch, max(1, steps_per_epoch // 4), floor=0.1)
    from fasttda.progress import bar as progress_bar

    epoch_lrs = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        lrs, bar = [], progress_bar(len(rows), f"{desc} epoch {epoch + 1}/{epochs}", enabled=progress)
        for lo in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in order[lo: lo + batch_size]], pad)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            bar.update(min(batch_size, len(rows) - lo))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        epoch_lrs.append(sum(lrs) / len(lrs))
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch + 1)
            model.train()
    model.eval()
    return epoch_lrs


def pretrain(model, tokenizer, documents: Sequence[str], *, epochs: int, lr: float, batch_size: int, seed: int,
             max_length: int, progress: bool = False) -> None:
    """Language modelling on every token of correct documents: θ₀'s prior knowledge.
    It never sees the summary format (METHODS.md section 7)."""
    pad = pad_id_of(tokenizer)
    rows = []
    for doc in documents:
        ids = list(tokenizer(doc)["input_ids"])[:max_length - 1] + [tokenizer.eos_token_id]
        rows.append((ids, list(ids)))
    _train(model, rows, pad, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, desc="pre-train θ₀",
           progress=progress)


def finetune(model, tokenizer, examples: Sequence[Example], out_dir: str | Path, *, epochs: int, lr: float,
             batch_size: int, seed: int, max_length: int, progress: bool = False) -> tuple[list[str], list[float]]:
    """Loss on the summaries only; saves ``out_dir/epoch{i}`` after each epoch."""
    rows = encode(tokenizer, examples, max_length)
    assert all(any(x != IGNORE_INDEX for x in labels) for _, labels in rows)
    paths: list[str] = []

    def save_epoch(epoch: int):
        paths.append(save(model, tokenizer, Path(out_dir) / f"epoch{epoch}"))

    lrs = _train(model, rows, pad_id_of(tokenizer), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 desc="fine-tune", progress=progress, on_epoch=save_epoch)
    return paths, lrs
