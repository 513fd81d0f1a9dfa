"""DDA's comparison-model form end to end (`fasttda dda --form comparison`).

Per checkpoint the mode needs (θ₀ included), every query *group* gets a ground/error pair of
short-lived fine-tuned copies (`fasttda.methods.comparison`), and every training example z
the score S_g(z) = L(z; ground_g) − L(z; error_g). The scores are standardized per
checkpoint and group (mean 0, standard deviation 1 over the training set): the loss
differences' scale varies from checkpoint to checkpoint (θ₀'s losses are high and move more),
the same failure as raw dot products in METHODS.md section 7, and standardizing is this
form's counterpart of the per-checkpoint cosine.

The ``[N, G]`` matrix of one checkpoint is written as a store (fp32, one column per group),
so the combination over checkpoints runs through the same one-pass scorer as the gradient
form: a query of group g is the unit vector e_g, and Σ_c w_c·<e_g, S_c[n]> = Σ_c w_c·S_c,g(n).

Groups: the queries of one group act as one query (one pair of fine-tunes on all of them).
``"query"`` makes each query its own group (2 fine-tunes per query and checkpoint, and 2·N
forward passes per query and checkpoint); ``"all"`` makes one group of every query.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from fasttda.data import Example, data_fingerprint
from fasttda.methods.comparison import OPTIMIZERS, comparison_scores
from fasttda.store import FeatureStore

GROUPINGS = ("query", "all")


@dataclass
class TuneConfig:
    """How the ground and error copies are fine-tuned (see `comparison.fine_tune_copy`)."""
    steps: int = 3
    lr: float = 1e-3
    lora_rank: int | None = 8  # None: every parameter
    optimizer: str = "adam"
    loss: str = "span"  # "span": the target / reference_target span where given; "response": whole outputs

    def check(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if not (self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1 or None (full fine-tuning), got {self.lora_rank}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.loss not in ("span", "response"):
            raise ValueError(f"loss must be 'span' or 'response', got {self.loss!r}")


@dataclass
class Cost:
    """Work done, counted in example passes (one example through the model once)."""
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0
    fine_tunes: int = 0
    per_checkpoint: dict = field(default_factory=dict)

    def add(self, other: "Cost") -> None:
        self.seconds += other.seconds
        self.forward += other.forward
        self.backward += other.backward
        self.fine_tunes += other.fine_tunes

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "forward": self.forward, "backward": self.backward,
                "fine_tunes": self.fine_tunes}


def make_groups(queries: Sequence[Example], grouping: str) -> list[list[int]]:
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    return [[i] for i in range(len(queries))] if grouping == "query" else [list(range(len(queries)))]


def tune_queries(queries: Sequence[Example], loss: str) -> list[Example]:
    """The queries as the fine-tunes see them: with ``loss="response"`` their spans are dropped."""
    if loss == "span":
        return list(queries)
    return [Example(q.id, q.prompt, q.response, None, q.reference, None) for q in queries]


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Each row to mean 0 and (population) standard deviation 1, in float64; a constant row
    (no information) becomes zeros."""
    s = scores.double()
    s = s - s.mean(dim=-1, keepdim=True)
    sd = s.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return torch.where(sd > 0, s / torch.where(sd > 0, sd, torch.ones_like(sd)), torch.zeros_like(s))


def checkpoint_scores(model, tokenizer, train: Sequence[Example], queries: Sequence[Example],
                      groups: Sequence[Sequence[int]], tune: TuneConfig, *, batch_size: int = 16,
                      max_length: int = 512, standardized: bool = True) -> tuple[torch.Tensor, Cost]:
    """``[G, N]`` float64 comparison scores of every group at one checkpoint, and their cost."""
    tune.check()
    qs = tune_queries(queries, tune.loss)
    t0 = time.perf_counter()
    rows, cost = [], Cost()
    for members in groups:
        group = [qs[i] for i in members]
        rows.append(comparison_scores(model, tokenizer, train, group, steps=tune.steps, lr=tune.lr,
                                      lora_rank=tune.lora_rank, optimizer=tune.optimizer, batch_size=batch_size,
                                      max_length=max_length).double())
        cost.fine_tunes += 2
        cost.forward += 2 * tune.steps * len(group) + 2 * len(train)
        cost.backward += 2 * tune.steps * len(group)
    scores = torch.stack(rows)
    cost.seconds = time.perf_counter() - t0
    return (standardize(scores) if standardized else scores), cost


def _store_meta(checkpoint, train, queries, groups, tune: TuneConfig, standardized: bool) -> dict:
    digest = hashlib.sha256(json.dumps([[queries[i].id, queries[i].prompt, queries[i].response, queries[i].target,
                                         queries[i].reference, queries[i].reference_target] for g in groups
                                        for i in g] + [list(map(len, groups))]).encode()).hexdigest()[:16]
    return {"form": "comparison", "model_sample": checkpoint.sampled_fingerprint, "model_path": str(checkpoint.path),
            "data": data_fingerprint(train), "n_examples": len(train), "queries": digest,
            "tune": vars(tune).copy(), "standardized": standardized}


def comparison_store(checkpoint, train: Sequence[Example], queries: Sequence[Example],
                     groups: Sequence[Sequence[int]], tune: TuneConfig, out: str | Path, *, batch_size: int = 16,
                     max_length: int = 512, standardized: bool = True,
                     resume: bool = True) -> tuple[FeatureStore, Cost]:
    """The ``[N, G]`` comparison scores of one checkpoint as an fp32 store at ``out``
    (reused when a complete one with the same model, data, queries and options is there)."""
    out = Path(out)
    meta = _store_meta(checkpoint, train, queries, groups, tune, standardized)
    if out.exists():
        if not resume:
            raise FileExistsError(f"store already exists: {out} (drop --no-resume or choose another --out)")
        store = FeatureStore.open(out, mode="r")
        if store.meta == json.loads(json.dumps(meta)) and len(store) == len(train) and store.dim == len(groups):
            return store, Cost()
        store.close()
        import shutil

        shutil.rmtree(out)  # another model, data set, query set or option: this store is stale
    scores, cost = checkpoint_scores(checkpoint.model, checkpoint.tokenizer, train, queries, groups, tune,
                                     batch_size=batch_size, max_length=max_length, standardized=standardized)
    store = FeatureStore.create(out, len(groups), "fp32", meta=meta)
    with store:
        step = 65536
        for lo in range(0, len(train), step):
            store.append(scores[:, lo: lo + step].T.float().contiguous(), ids=[ex.id for ex in train[lo: lo + step]])
        store.commit()
    return FeatureStore.open(out, mode="r"), cost


def group_queries(n_queries: int, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[Q, G]`` float32: query i is the unit vector of its group."""
    q = torch.zeros(n_queries, len(groups), dtype=torch.float32)
    for g, members in enumerate(groups):
        q[list(members), g] = 1.0
    return q


def gradient_form_cost(n_train: int, n_queries: int, n_checkpoints: int, contrast: bool = False) -> dict:
    """What the gradient form does over the same checkpoints, in example passes: every
    training example and query (and reference) once forward and backward per checkpoint."""
    per = n_train + n_queries * (2 if contrast else 1)
    return {"forward": per * n_checkpoints, "backward": per * n_checkpoints}


def attribute_comparison(base, checkpoints: Sequence, data, queries, out, *, mode: str = "dda",
                         beta: float | str = 1.0, lr: Sequence[float] | None = None, tune: TuneConfig | None = None,
                         grouping: str = "query", standardized: bool = True, k: int = 50, batch_size: int = 16,
                         max_length: int = 512, resume: bool = True, device: str = "cpu", fields: dict | None = None,
                         target_field: str | None = "target", text: bool = True):
    """`fasttda.methods.dda.attribute` with the comparison-model form: one score store per
    checkpoint the mode needs (``out/comparison/ckpt{c}``), combined with DDA's weights in
    one scorer pass. Every query needs a ``reference``. Returns the `Attribution`, with
    ``.cost`` (this form's passes and seconds), ``.beta`` and ``.diagnosis``."""
    from fasttda import pipeline
    from fasttda.methods import dda

    tune = tune or TuneConfig()
    tune.check()
    train, qs, paths, plan = dda.inputs(base, checkpoints, data, queries, mode, beta, lr, fields, target_field)
    missing = [q.id for q in qs if q.reference is None]
    if missing:
        raise ValueError(f"--form comparison needs a 'reference' (the correct output) on every query; {len(missing)} "
                         f"of {len(qs)} have none (first: id {missing[0]!r})")
    pipeline.check_same_tokenizer(paths)
    auto = beta == "auto"
    groups = make_groups(qs, grouping)
    onehot = group_queries(len(qs), groups)
    out = Path(out)
    by_ckpt, cost = {}, Cost()
    for c, _ in plan:
        ckpt = pipeline.load_checkpoint(paths[c], device=device)
        store, spent = comparison_store(ckpt, train, qs, groups, tune, out / "comparison" / f"ckpt{c}",
                                        batch_size=batch_size, max_length=max_length, standardized=standardized,
                                        resume=resume)
        cost.add(spent)
        cost.per_checkpoint[f"ckpt{c}"] = spent.as_dict()
        by_ckpt[c] = (store, onehot)
        del ckpt
    t0 = time.perf_counter()
    diagnosis = None
    if any(c == 0 for c, _ in plan) and any(c != 0 for c, _ in plan):
        diagnosis = dda.debias_diagnosis(by_ckpt, plan, normalize=False)
        if auto:
            beta = dda.auto_beta(diagnosis["top_lift"])
            plan = dda.combination(mode, len(checkpoints), beta=beta, lr=lr)
    values, indices = pipeline.score_stores([by_ckpt[c][1] for c, _ in plan], [by_ckpt[c][0] for c, _ in plan],
                                            [w for _, w in plan], k=k, normalize=False)
    result = pipeline.Attribution([q.id for q in qs], values, indices, [ex.id for ex in train], cost.seconds,
                                  time.perf_counter() - t0, queries=qs, train=train, contrast=True)
    result.beta, result.diagnosis, result.cost = beta, diagnosis, cost
    result.write_jsonl(out / "results.jsonl", text=text)
    (out / "config.json").write_text(json.dumps({
        "form": "comparison", "mode": mode, "beta": beta, "beta_auto": auto, "lr": lr, "tune": vars(tune),
        "grouping": grouping, "standardized": standardized, "k": k, "debias_diagnosis": diagnosis,
        "cost": cost.as_dict() | {"per_checkpoint": cost.per_checkpoint},
        "checkpoints": [str(p) for p in paths], "weights": {str(paths[c]): w for c, w in plan}}, indent=2))
    return result
