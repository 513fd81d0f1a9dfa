"""The embedded benchmark end to end: corpus → θ₀ → fine-tuning → hallucinations → stores →
every method → report. Every random choice comes from ``DemoConfig.seed``."""
from __future__ import annotations

import dataclasses
import json
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fasttda.data import Example, write_jsonl
from fasttda.demo import corpus as corpus_mod
from fasttda.demo import evaluate as ev
from fasttda.demo import forms
from fasttda.demo import model as model_mod
from fasttda.demo import report as report_mod
from fasttda.demo import train as train_mod
from fasttda import pipeline
from fasttda.methods import dda, dda_comparison
from fasttda.pipeline import load_checkpoint


@dataclass
class DemoConfig:
    seed: int = 0
    n_train: int = 2000
    n_pairs: int = 4
    swap_fraction: float = 0.05
    epochs: int = 3
    n_pretrain: int = 3000
    pretrain_epochs: int = 6
    pretrain_lr: float = 3e-3
    lr: float = 3e-3
    batch_size: int = 16
    # Capture batches are independent of training: each row is one example's own gradient,
    # so a larger batch only amortizes per-batch overhead.
    index_batch_size: int = 64
    heldout_per_pair: int = 12
    min_queries_per_pair: int = 3
    max_queries_per_pair: int = 8
    n_countries: int = 24
    model: model_mod.ModelSize = field(default_factory=model_mod.ModelSize)
    projection: str = "factored:16x16"
    fmt: str = "fp16"
    beta: float = 1.0
    damping: float = 1e-3
    max_length: int = 128
    # "span": a query's loss is taken on the hallucinated (swapped-in) country only, which is
    # the output the protocol attributes; "response": on the whole generated summary, whose
    # other copy errors then share the query gradient.
    query_loss: str = "span"
    # The demo's two regimes (METHODS.md section 7): False, θ₀ is pre-trained on documents
    # only; True, θ₀ also reads correct "document summary : summary" texts, so it already
    # knows the summary format before fine-tuning (and the swapped examples are then the
    # only surprising ones at θ₀).
    base_knows_format: bool = False
    # the comparison-model form's fine-tunes (fasttda dda --form comparison's defaults)
    comparison: dda_comparison.TuneConfig = field(default_factory=dda_comparison.TuneConfig)
    # A model this small gains nothing from intra-op threads, and on a busy machine their
    # spinning costs 10-30x; raise it for a larger model.
    threads: int = 1

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        base = dict(n_train=320, n_pairs=2, swap_fraction=0.08, n_pretrain=400, pretrain_epochs=2, epochs=3,
                    heldout_per_pair=6, n_countries=12, max_queries_per_pair=4,
                    model=model_mod.ModelSize(hidden=32, layers=2, heads=2, intermediate=64),
                    projection="factored:8x8", pretrain_lr=5e-3, lr=3e-3)
        base.update(overrides)
        return cls(**base)


# name -> (mode, normalize, preconditioned, beta, learning-rate weights, description)
METHODS = {
    "grad_dot": ("if", False, False, 0.0, False, "gradient dot, last checkpoint (TracIn-style)"),
    "cosine": ("if", True, False, 0.0, False, "gradient cosine, last checkpoint"),
    "trak_if": ("if", False, True, 0.0, False, "(GᵀG/N+λI)⁻¹-preconditioned IF, last checkpoint (TRAK-style)"),
    "debias": ("debias", True, False, None, False, "last − β·θ₀, per-checkpoint cosine"),
    "denoise": ("denoise", True, False, 0.0, False, "epoch mean, per-checkpoint cosine"),
    "dda": ("dda", True, False, None, False, "epoch mean − β·θ₀, per-checkpoint cosine"),
    "dda_beta0.5": ("dda", True, False, 0.5, False, "dda with β = 0.5"),
    "dda_lr": ("dda", True, False, None, True, "dda with learning-rate epoch weights"),
    "debias_dot": ("debias", False, False, None, False, "last − β·θ₀, raw dot (the paper's form)"),
    "denoise_dot": ("denoise", False, False, 0.0, False, "epoch mean, raw dot"),
    "dda_dot": ("dda", False, False, None, False, "epoch mean − β·θ₀, raw dot (the paper's form)"),
    "base_only": ("base", True, False, 0.0, False, "θ₀ cosine alone (diagnostic: high ⇒ debias hurts)"),
}


QUERY_LOSSES = ("span", "response")


def run(config: DemoConfig, out: str | Path, *, progress: bool = False, log=print) -> dict:
    """One seed end to end, as deterministic as torch allows: a fixed thread count,
    ``torch.use_deterministic_algorithms(True)`` and every random choice seeded; the
    thread count and the determinism switch are restored afterwards."""
    if config.query_loss not in QUERY_LOSSES:
        raise ValueError(f"query_loss must be one of {QUERY_LOSSES}, got {config.query_loss!r}")
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _run(config, Path(out), progress, log)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def prepare_kernels(log=print) -> dict:
    """Build (or load the cached build of) the C++ CPU kernels before anything is timed,
    so that a first build is never charged to the first method that scores."""
    from fasttda import _extension
    from fasttda._dispatch import BackendUnavailable

    t0 = time.perf_counter()
    ensure = getattr(_extension, "ensure_built", None)
    try:
        if ensure is not None:
            ensure("cpu", log=log)
        else:
            _extension.load("cpu")
    except BackendUnavailable as exc:
        log(f"C++ CPU kernels unavailable, scoring runs the PyTorch reference: {str(exc).splitlines()[0]}")
        return {"cpp": False, "seconds": time.perf_counter() - t0, "reason": str(exc).splitlines()[0]}
    seconds = time.perf_counter() - t0
    if seconds > 2:
        log(f"C++ CPU kernels ready in {seconds:.0f} s (built on first use, then cached); not counted in any timing")
    return {"cpp": True, "seconds": seconds}


def _run(config: DemoConfig, out: Path, progress: bool, log) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    kernels = prepare_kernels(log)
    t_start = time.perf_counter()
    _quiet_transformers()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    phases: dict[str, float] = {}
    corpus = corpus_mod.make_corpus(config.seed, n_train=config.n_train, n_pairs=config.n_pairs,
                                    swap_fraction=config.swap_fraction, n_countries=config.n_countries,
                                    n_pretrain=config.n_pretrain, heldout_per_pair=config.heldout_per_pair)
    train = [Example(r.id, r.prompt, r.summary) for r in corpus.train]
    write_jsonl(out / "data" / "train.jsonl", train)
    pretrain_texts = corpus.pretrain_docs + (corpus.pretrain_summaries if config.base_knows_format else [])
    texts = pretrain_texts + [r.prompt + " " + r.summary for r in corpus.train] + \
        [r.prompt + " " + r.correct_summary for r in corpus.heldout]
    tokenizer = model_mod.build_tokenizer(texts)
    model = model_mod.build_model(tokenizer, config.model, config.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"corpus: {len(train)} training examples, {sum(r.swap is not None for r in corpus.train)} swapped, "
        f"pairs {corpus.pairs}; model {n_params:,} parameters; θ₀ "
        f"{'knows the summary format' if config.base_knows_format else 'read documents only'}")

    t0 = time.perf_counter()
    models_dir = out / "models"
    base_dir, epoch_dirs, epoch_lrs, cached = _trained_models(config, model, tokenizer, pretrain_texts, train,
                                                              models_dir, progress)
    train_s = time.perf_counter() - t0
    if cached is not None:
        # the models come from an earlier run: count the time that run took to train them
        # (total_s too), so a reused seed reports what a fresh one costs
        t_start -= cached - train_s
        train_s = cached
    phases["train"] = train_s
    log(f"reused the trained θ₀ and {config.epochs} epochs in {models_dir} (same training configuration; "
        f"they took {train_s:.0f} s to train)" if cached is not None else
        f"trained θ₀ and {config.epochs} epochs in {train_s:.0f} s")

    t0 = time.perf_counter()
    last = load_checkpoint(epoch_dirs[-1])
    queries, query_counts = ev.hallucination_queries(last.model, last.tokenizer, corpus,
                                                     min_per_pair=config.min_queries_per_pair,
                                                     max_per_pair=config.max_queries_per_pair)
    if config.query_loss == "span":
        queries = [dataclasses.replace(q, example=dataclasses.replace(q.example, target=corpus.pairs[q.pair][1]))
                   for q in queries]
        inside_words = [q.example.id for q in queries if not ev.first_occurrence_is_a_word(q.example)]
        if inside_words:
            log(f"warning: in {len(inside_words)} queries the target's first occurrence is inside another word "
                f"({', '.join(inside_words[:5])}); their span is that word")
    write_jsonl(out / "data" / "queries.jsonl", [q.example for q in queries])
    phases["generate queries"] = time.perf_counter() - t0
    n_generated = sum(q.generated for q in queries)
    log(f"queries: {n_generated} greedy-decoded hallucinations, {len(queries) - n_generated} teacher-forced; "
        f"query loss on the {'hallucinated entity' if config.query_loss == 'span' else 'whole summary'}")

    # one store per checkpoint; queries' features at each
    capture = pipeline.CaptureConfig(config.projection, None, config.max_length, config.index_batch_size, config.seed)
    stores, q_feats, index_s, query_s = [], [], [], []
    fit = {p: {} for p in range(len(corpus.pairs))}
    fingerprints = {}
    for c, path in enumerate([base_dir] + epoch_dirs):
        ckpt = load_checkpoint(path)
        fingerprints["base" if c == 0 else f"epoch{c}"] = _weights_sha256(ckpt.model)
        t0 = time.perf_counter()
        for p, (_, target) in enumerate(corpus.pairs):
            fit[p][f"ckpt{c}"] = ev.swap_token_losses(ckpt.model, ckpt.tokenizer,
                                                      [corpus.train[i] for i in corpus.true_sources(p)], target,
                                                      config.max_length)
        phases["fit diagnostics"] = phases.get("fit diagnostics", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        # resume: a store left by an earlier run of these very models and data (checked
        # against their fingerprints) is reused, so new forms re-score without re-indexing
        stores.append(pipeline.index(ckpt, train, out / "stores" / f"ckpt{c}", capture, fmt=config.fmt,
                                     resume=True, progress=progress))
        index_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        q_feats.append(pipeline.query_features(ckpt, [q.example for q in queries], capture))
        query_s.append(time.perf_counter() - t0)
    phases["index"], phases["query features"] = sum(index_s), sum(query_s)
    fingerprints["last"] = fingerprints[f"epoch{config.epochs}"]
    log(f"indexed {len(stores)} checkpoints in {sum(index_s):.0f} s")
    t_score = time.perf_counter()

    methods, curves, per_pair = {}, {}, {}
    scores, bm25_index_s, bm25_score_s = ev.bm25_scores(corpus.train, queries)
    _record("bm25", "BM25 over document + summary (rank-bm25)", scores, queries, corpus,
            dict(projection="-", format="-", index_s=bm25_index_s, score_s=bm25_score_s), methods, curves, per_pair)
    preconditioners: dict[int, object] = {}
    for name, (mode, normalize, precondition, beta, use_lr, description) in METHODS.items():
        plan = dda.combination(mode, config.epochs, beta=config.beta if beta is None else beta,
                               lr=epoch_lrs if use_lr else None)
        t0 = time.perf_counter()
        pre = None
        if precondition:
            pre = [preconditioners.setdefault(c, pipeline.fit_preconditioner(stores[c], config.damping))
                   for c, _ in plan]
        values, indices = pipeline.score_stores([q_feats[c] for c, _ in plan], [stores[c] for c, _ in plan],
                                                [w for _, w in plan], k=len(train), normalize=normalize,
                                                preconditioners=pre)
        dense = torch.empty(values.shape, dtype=torch.float64).scatter_(1, indices.long(), values.double())
        elapsed = time.perf_counter() - t0
        _record(name, description, dense.numpy(), queries, corpus, dict(
            projection=str(capture.projection), format=config.fmt, mode=mode, normalize=normalize,
            preconditioned=precondition, weights={f"ckpt{c}": w for c, w in plan},
            index_s=sum(index_s[c] for c, _ in plan),
            score_s=sum(query_s[c] for c, _ in plan) + elapsed), methods, curves, per_pair)

    extra_phases, diagnoses = _other_forms(config, corpus, queries, train, [base_dir] + epoch_dirs, stores, q_feats, index_s,
                                query_s, capture, out, methods, curves, per_pair)
    phases["score and evaluate"] = time.perf_counter() - t_score - sum(extra_phases.values())
    phases.update(extra_phases)
    pairs = {}
    for p, (source, target) in enumerate(corpus.pairs):
        key = f"{source}->{target}"
        pairs[key] = {"source": source, "target": target, "true_sources": len(corpus.true_sources(p)),
                      **query_counts[p], "fit_of_swapped_examples": fit[p], "methods": per_pair.get(key, {})}
    cfg = dataclasses.asdict(config)
    cfg.update(n_swapped=sum(r.swap is not None for r in corpus.train), model_parameters=n_params,
               n_queries=len(queries), n_generated_queries=n_generated,
               n_teacher_forced_queries=len(queries) - n_generated, epoch_learning_rates=epoch_lrs,
               models_reused=cached is not None, train_s=train_s, total_s=time.perf_counter() - t_start, implementation="fasttda.pipeline",
               torch=torch.__version__, machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
               fingerprints=fingerprints, environment=environment(), kernels=kernels,
               deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
               phases_s={k: round(v, 2) for k, v in phases.items()})
    paths = report_mod.write(out, methods, pairs, cfg, curves, notes(methods, pairs, config.epochs, diagnoses),
                             debias_diagnosis=diagnoses)
    cfg["total_s"] = time.perf_counter() - t_start
    log(f"wrote {paths['md']}, {paths['json']} and {paths['png']} in {cfg['total_s']:.0f} s")
    return {"methods": methods, "pairs": pairs, "config": cfg, "debias_diagnosis": diagnoses}


def _other_forms(config, corpus, queries, train, paths, stores, q_feats, index_s, query_s, capture, out, methods,
                 curves, per_pair) -> dict:
    """Contrastive queries and comparison models (`fasttda.demo.forms`), then the label-free
    debias statistic of every form; returns the seconds each phase took."""
    phases = {}
    t0 = time.perf_counter()
    contrast = forms.contrast_examples(queries, corpus, span=config.query_loss == "span")
    c_feats = []
    for path in paths:
        c_feats.append(pipeline.query_features(load_checkpoint(path), contrast, capture, contrast=True))
    phases["contrast query features"] = time.perf_counter() - t0
    extra = dict(projection=str(capture.projection), format=config.fmt)
    for name, description, plan, normalize, scores, secs in forms.score_plans(
            forms.CONTRAST_METHODS, c_feats, stores, config.epochs, config.beta, normalize_of=lambda s: s[1]):
        _record(name, description, scores.numpy(), queries, corpus, dict(
            extra, mode=forms.CONTRAST_METHODS[name][0], normalize=normalize, contrast=True,
            weights={f"ckpt{c}": w for c, w in plan}, index_s=sum(index_s[c] for c, _ in plan),
            score_s=secs + sum(query_s[c] for c, _ in plan) + phases["contrast query features"] / len(paths) * len(plan)),
            methods, curves, per_pair)
    t0 = time.perf_counter()
    groups = forms.pair_groups(queries)
    cmp_stores, costs = forms.comparison_stores(paths, train, contrast, groups, out, config, config.comparison)
    onehot = [dda_comparison.group_queries(len(queries), groups)] * len(paths)
    phases["comparison models"] = time.perf_counter() - t0
    for name, description, plan, _, scores, secs in forms.score_plans(
            forms.COMPARISON_METHODS, onehot, cmp_stores, config.epochs, config.beta):
        used = [costs[c] for c, _ in plan]
        _record(name, description, scores.numpy(), queries, corpus, dict(
            projection="-", format="fp32", mode=forms.COMPARISON_METHODS[name][0], normalize=False,
            weights={f"ckpt{c}": w for c, w in plan}, index_s=sum(x.seconds for x in used), score_s=secs,
            forward_passes=sum(x.forward for x in used), backward_passes=sum(x.backward for x in used)),
            methods, curves, per_pair)
    t0 = time.perf_counter()
    diagnoses = {}
    for form, feats, st, normalize in (("cosine", q_feats, stores, True), ("dot", q_feats, stores, False),
                                       ("contrast", c_feats, stores, True), ("comparison", onehot, cmp_stores, False)):
        diagnoses[form] = forms.judge(forms.diagnosis(feats, st, config.epochs, normalize), methods, form)
    phases["debias statistic"] = time.perf_counter() - t0
    return phases, diagnoses


# the DemoConfig fields that decide the trained models (the corpus included)
TRAINING_FIELDS = ("seed", "n_train", "n_pairs", "swap_fraction", "epochs", "n_pretrain", "pretrain_epochs",
                   "pretrain_lr", "lr", "batch_size", "heldout_per_pair", "n_countries", "model", "max_length",
                   "base_knows_format")


def training_key(config: DemoConfig) -> dict:
    cfg = dataclasses.asdict(config)
    return {k: cfg[k] for k in TRAINING_FIELDS} | {"torch": torch.__version__}


def _trained_models(config: DemoConfig, model, tokenizer, pretrain_texts, train, models_dir: Path, progress: bool):
    """Pre-train θ₀ and fine-tune, saving ``models/base`` and ``models/epoch{i}``, or reuse
    them when ``models/training.json`` records the same training configuration (so new
    scoring forms re-run on the same models; the stores, checked against the models'
    fingerprints, are reused too). Returns (base dir, epoch dirs, epoch learning rates, reused)."""
    record = models_dir / "training.json"
    key = training_key(config)
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
        except ValueError:
            saved = {}
        dirs = [models_dir / "base"] + [models_dir / f"epoch{i + 1}" for i in range(config.epochs)]
        if saved.get("key") == json.loads(json.dumps(key)) and all((d / "config.json").is_file() for d in dirs):
            return (str(dirs[0]), [str(d) for d in dirs[1:]], saved["epoch_learning_rates"],
                    float(saved.get("train_s", _previous_train_s(models_dir.parent))))
    record.unlink(missing_ok=True)
    t0 = time.perf_counter()
    train_mod.pretrain(model, tokenizer, pretrain_texts, epochs=config.pretrain_epochs, lr=config.pretrain_lr,
                       batch_size=config.batch_size * 2, seed=config.seed, max_length=config.max_length,
                       progress=progress)
    base_dir = model_mod.save(model, tokenizer, models_dir / "base")
    epoch_dirs, epoch_lrs = train_mod.finetune(model, tokenizer, train, models_dir, epochs=config.epochs,
                                               lr=config.lr, batch_size=config.batch_size, seed=config.seed + 1,
                                               max_length=config.max_length, progress=progress)
    record.write_text(json.dumps({"key": key, "epoch_learning_rates": epoch_lrs,
                                  "train_s": time.perf_counter() - t0}, indent=2))
    return base_dir, epoch_dirs, epoch_lrs, None


def _previous_train_s(out: Path) -> float:
    """The training time an earlier run of this directory reported (0 when unknown)."""
    try:
        return float(json.loads((out / "report.json").read_text())["config"]["train_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _weights_sha256(model) -> str:
    """The first 16 hex digits of the SHA-256 of every weight: equal only for bitwise equal models."""
    from fasttda.store import model_fingerprint

    return model_fingerprint(model)["sha256"][:16]


def environment() -> dict:
    """What decides whether another machine trains bitwise the same models."""
    import transformers

    flags = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    words = set(flags.split())
    isa = "AVX-512" if "avx512f" in words else "AVX2" if "avx2" in words else (
        "unknown ISA" if not words else "no AVX2")
    return {"cpu": cpu, "isa": isa, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available()}


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _record(name, description, scores, queries, corpus, extra, methods, curves, per_pair):
    result = ev.evaluate(np.asarray(scores), queries, corpus)
    methods[name] = {"description": description, **result["summary"], **extra}
    curves[name] = result["roc"]
    for pair, metrics in result["pairs"].items():
        per_pair.setdefault(pair, {})[name] = metrics


def notes(methods: dict, pairs: dict | None = None, epochs: int = 0, diagnoses: dict | None = None) -> list[str]:
    """Plain statements read off the table, so the report says what it measured."""
    auc = {n: m["auc"] for n, m in methods.items()}
    best = max(auc, key=auc.get)
    said = [f"Best averaged ROC-AUC: {best} ({auc[best]:.3f})."]
    for a, b, what in (("denoise", "cosine", "denoise (epoch mean) vs the last checkpoint"),
                       ("debias", "cosine", "debias (minus β·θ₀) vs the last checkpoint"),
                       ("dda", "denoise", "adding debias to denoise"),
                       ("dda_dot", "denoise_dot", "adding debias to denoise, raw dot")):
        if a in auc and b in auc:
            said.append(f"{what}: {auc[a] - auc[b]:+.3f} AUC ({a} {auc[a]:.3f}, {b} {auc[b]:.3f}).")
    if "base_only" in auc:
        verdict = ("well above chance: θ₀ already ranks the sources high, so subtracting it removes signal "
                   "(METHODS.md section 7)" if auc["base_only"] > 0.6 else
                   "near chance: θ₀'s gradients carry little about the swap")
        said.append(f"θ₀ alone scores {auc['base_only']:.3f}, {verdict}.")
    fits = [p["fit_of_swapped_examples"] for p in (pairs or {}).values() if "fit_of_swapped_examples" in p]
    if fits and epochs:
        def mean(ckpt, key):
            return float(np.mean([f[ckpt][key] for f in fits]))
        said.append(
            f"Loss of the swapped examples at the swapped-in entity: {mean('ckpt0', 'swap_token_loss'):.2f} at θ₀, "
            f"{mean('ckpt1', 'swap_token_loss'):.2f} after epoch 1, {mean(f'ckpt{epochs}', 'swap_token_loss'):.2f} "
            f"after epoch {epochs} (whole summary: {mean('ckpt1', 'response_loss'):.2f}, then "
            f"{mean(f'ckpt{epochs}', 'response_loss'):.2f}). " +
            ("The swap is fitted as fast as the rest of the summary, so it stops standing out in later "
             "checkpoints' gradients; earlier checkpoints keep more of it, which is what denoise adds."
             if mean(f"ckpt{epochs}", "swap_token_loss") <= mean(f"ckpt{epochs}", "response_loss") else
             "The swap stays harder to fit than the rest of the summary, which keeps it visible in gradients."))
    for form, d in (diagnoses or {}).items():
        said.append(f"Label-free debias statistic, {form} form: θ₀ ranks the epoch mean's top {d['top_rows']} "
                    f"rows at lift {d['top_lift']:+.3f}, predicting that debias "
                    f"{'hurts' if d['predicts'] == 'harm' else 'helps'}; it {d['debias']} "
                    f"({d['dda_minus_denoise']:+.3f} AUC): {'right' if d['correct'] else 'wrong'}.")
    if "bm25" in auc:
        beaten = [n for n in auc if n != "bm25" and auc[n] > auc["bm25"]]
        said.append(f"BM25 scores {auc['bm25']:.3f}; " + (f"above it: {', '.join(beaten)}." if beaten else
                                                          "no gradient method beats it here."))
    return said
