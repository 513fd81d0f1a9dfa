"""Distil the teacher's Y into the student, block by block.

Each micro-step samples ``anchors_per_step`` anchors and ``candidates_per_step`` pool
candidates (a ``hard_fraction`` of them among those anchors' teacher top candidates, the
rest uniform), embeds the k + m texts in one forward pass, and takes `influcoder_loss` of
the ``[k, m]`` block against Y; gradients accumulate over ``accumulation`` micro-steps per
optimizer step. AdamW, linear warm-up then linear decay, gradient clipping: the paper's
defaults, all configurable.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from fasttda.methods.influcoder.loss import DEFAULT_ALPHA, DEFAULT_TAU, influcoder_loss


@dataclass
class TrainConfig:
    steps: int = 100                # optimizer steps
    anchors_per_step: int = 12
    candidates_per_step: int = 15
    accumulation: int = 4
    lr: float = 5e-5
    # the learning rate of attention pooling's query vector (None: lr). It starts at zero (plain
    # mean pooling) and enters the logits scaled by 1/sqrt(H): at the encoder's lr it barely moves
    pool_lr: float | None = None
    weight_decay: float = 0.01
    warmup: float = 0.1             # fraction of the steps
    clip: float = 1.0
    alpha: float = DEFAULT_ALPHA
    tau: float = DEFAULT_TAU
    hard_fraction: float = 0.5
    hard_top: int = 32              # hard candidates come from each anchor's teacher top-`hard_top`
    freeze_embeddings: bool = True  # keep the token embeddings fixed (most of a small encoder's weights)
    # train only the top `train_layers` transformer layers (None: all). Autograd then stops
    # below them, so a step costs a forward plus the backward of those layers only.
    train_layers: int | None = None
    # with train_layers set, run the frozen bottom layers once per training text and train
    # on their cached outputs (`frozen.FrozenPrefix`): a step runs only the top layers
    cache_frozen: bool = True
    seed: int = 0

    def check(self, n_anchors: int, n_pool: int) -> None:
        for name in ("steps", "anchors_per_step", "candidates_per_step", "accumulation", "hard_top"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name, lo, hi in (("warmup", 0, 1), ("hard_fraction", 0, 1), ("alpha", 0, 1)):
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}")
        if self.train_layers is not None and (not isinstance(self.train_layers, int) or self.train_layers < 1):
            raise ValueError(f"train_layers must be None or an int >= 1, got {self.train_layers!r}")
        if self.pool_lr is not None and not self.pool_lr > 0:
            raise ValueError(f"pool_lr must be None or > 0, got {self.pool_lr}")
        for name in ("lr", "tau", "clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if n_anchors < 1 or n_pool < 2:
            raise ValueError(f"training needs at least 1 anchor and 2 pool examples, got {n_anchors} and {n_pool}")


def linear_schedule(optimizer, total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BlockSampler:
    """Anchor rows and candidate columns of Y for one micro-step.

    ``same[a]`` is the pool column holding anchor ``a``'s own text (-1: none). Such a pair
    says nothing (both similarities are 1), so a block never has an anchor's own text among
    its candidates: with the pool texts also used as anchors, the teacher's pool × pool
    cosines become training rows without their diagonal.
    """

    def __init__(self, y: torch.Tensor, config: TrainConfig, same: torch.Tensor | None = None):
        self.y, self.config = y, config
        self.same = torch.full((y.shape[0],), -1, dtype=torch.long) if same is None else same
        self.gen = torch.Generator().manual_seed(config.seed)
        top = min(config.hard_top, y.shape[1] - 1)
        masked = y.clone()
        own = torch.nonzero(self.same >= 0).flatten()
        masked[own, self.same[own]] = float("-inf")
        self.top = torch.topk(masked, max(1, top), dim=1).indices

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, (n_a, n_p) = self.config, self.y.shape
        anchors = torch.randperm(n_a, generator=self.gen)[:c.anchors_per_step]
        m = min(c.candidates_per_step, n_p)
        n_hard = int(round(c.hard_fraction * m))
        picks = torch.randint(0, self.top.shape[1], (n_hard,), generator=self.gen)
        hard = self.top[anchors[torch.arange(n_hard) % len(anchors)], picks]
        own = {j for j in self.same[anchors].tolist() if j >= 0}
        chosen = [j for j in dict.fromkeys(hard.tolist()) if j not in own]
        m = min(m, n_p - len(own))
        for j in torch.randperm(n_p, generator=self.gen).tolist():
            if len(chosen) >= m:
                break
            if j not in chosen and j not in own:
                chosen.append(j)
        return anchors, torch.tensor(chosen[:m])


def layer_stack(encoder: torch.nn.Module) -> torch.nn.ModuleList:
    """The encoder's list of transformer layers (the ModuleList of ``num_hidden_layers`` blocks)."""
    n = getattr(encoder.config, "num_hidden_layers", None)
    for module in encoder.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer layers of {type(encoder).__name__}; use train_layers=None")


def freeze_below(encoder: torch.nn.Module, top: int) -> None:
    """Freeze every weight but those of the top ``top`` layers and what follows them."""
    layers = layer_stack(encoder)
    keep = {id(p) for layer in list(layers)[max(0, len(layers) - top):] for p in layer.parameters()}
    in_layers = {id(p) for p in layers.parameters()}
    for p in encoder.parameters():
        if id(p) in in_layers and id(p) not in keep:
            p.requires_grad_(False)
    encoder.get_input_embeddings().requires_grad_(False)
    for module in encoder.modules():  # the embeddings block (positions, token types, norm) too
        if module is not encoder and "embeddings" in type(module).__name__.lower():
            module.requires_grad_(False)


def train(student, anchor_texts: Sequence[str], pool_texts: Sequence[str], y: torch.Tensor,
          config: TrainConfig | None = None, *, progress: bool = False, log=None) -> dict:
    """Fine-tune ``student`` in place on Y ``[len(anchor_texts), len(pool_texts)]``;
    returns the history (per-step loss, seconds)."""
    config = config or TrainConfig()
    if tuple(y.shape) != (len(anchor_texts), len(pool_texts)):
        raise ValueError(f"y is {list(y.shape)} but there are {len(anchor_texts)} anchors and "
                         f"{len(pool_texts)} pool texts")
    config.check(len(anchor_texts), len(pool_texts))
    torch.manual_seed(config.seed)
    column = {t: j for j, t in enumerate(pool_texts)}
    same = torch.tensor([column.get(t, -1) for t in anchor_texts], dtype=torch.long)
    sampler = BlockSampler(y.to(torch.float32), config, same)
    if config.freeze_embeddings:
        student.encoder.get_input_embeddings().requires_grad_(False)
    if config.train_layers is not None:
        freeze_below(student.encoder, config.train_layers)
    embed_block = _block_embedder(student, anchor_texts, pool_texts, config, log)
    params = [p for p in student.parameters() if p.requires_grad]
    pool = [p for p in params if p is student.pool_query]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2 and p is not student.pool_query]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if pool:
        groups.append({"params": pool, "weight_decay": 0.0, "lr": config.pool_lr or config.lr})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = linear_schedule(optimizer, config.steps, max(1, math.ceil(config.warmup * config.steps)))
    from tqdm.auto import tqdm

    losses, t0 = [], time.perf_counter()
    student.train()
    with tqdm(total=config.steps, desc="train influcoder", unit="step", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for step in range(config.steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(config.accumulation):
                a, c = sampler.sample()
                emb = embed_block(a, c)
                s = emb[:len(a)] @ emb[len(a):].T
                loss = influcoder_loss(s, y[a][:, c], alpha=config.alpha, tau=config.tau)
                (loss / config.accumulation).backward()
                total += float(loss.detach()) / config.accumulation
            torch.nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            scheduler.step()
            losses.append(total)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}")
            if log is not None and (step + 1) % max(1, config.steps // 5) == 0:
                log(f"step {step + 1}/{config.steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    student.eval()
    return {"loss": losses, "seconds": time.perf_counter() - t0, "steps": config.steps}


def _block_embedder(student, anchor_texts, pool_texts, config: TrainConfig, log):
    """``embed(anchor rows, pool rows)``: through the cached frozen bottom when it applies
    (checked against the full forward on a few texts first), else the full forward."""
    def full(a, c):
        return student.embed([anchor_texts[i] for i in a] + [pool_texts[j] for j in c])

    n_layers = len(layer_stack(student.encoder)) if config.train_layers is not None else 0
    if not (config.cache_frozen and config.freeze_embeddings and config.train_layers is not None
            and config.train_layers < n_layers):
        return full
    from fasttda.methods.influcoder.frozen import FrozenPrefix, max_difference

    texts = list(anchor_texts) + list(pool_texts)
    prefix = FrozenPrefix(student, texts, n_layers - config.train_layers)
    probe = list(range(0, len(texts), max(1, len(texts) // 8)))[:8]
    diff = max_difference(student, prefix, [texts[i] for i in probe], probe)
    if not diff <= 1e-4:
        if log is not None:
            log(f"the cached frozen layers give embeddings {diff:.2g} away from the full forward for this "
                "encoder; training with the full forward (slower)")
        return full
    n_a = len(anchor_texts)
    return lambda a, c: prefix.embed(a.tolist() + [n_a + j for j in c.tolist()])
