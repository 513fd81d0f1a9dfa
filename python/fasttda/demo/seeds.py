"""The demo over several seeds: one full run per seed, then mean ± spread per method.

A single seed on one machine is not a claim anyone can check: the tiny model is trained
from scratch, and another CPU's BLAS sums floats in another order, so it trains another
model. What a reader can check is an effect that holds across seeds. `run_seeds` runs
``out/seed{N}/`` for each seed (in parallel worker processes with ``jobs > 1``: each run
uses one thread, so two seeds on two cores take the time of one), and `aggregate`
writes ``out/report.json`` (per method: mean, sample standard deviation, min, max and the
per-seed values of every metric), ``out/report.md`` and ``out/roc.png`` (mean curves).
Effects are stated per comparison with the number of seeds in which they hold.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

# (a, b, what): "a − b" is reported per seed, and stated as an effect only with its sign count.
COMPARISONS = [
    ("denoise", "cosine", "denoise (epoch mean) vs the last checkpoint, cosine"),
    ("denoise_dot", "grad_dot", "denoise (epoch mean) vs the last checkpoint, raw dot"),
    ("debias", "cosine", "debias (minus β·θ₀) vs the last checkpoint, cosine"),
    ("debias_dot", "grad_dot", "debias (minus β·θ₀) vs the last checkpoint, raw dot"),
    ("dda", "denoise", "adding debias (β = 1) to denoise, cosine"),
    ("dda_beta0.5", "denoise", "adding debias (β = 0.5) to denoise, cosine"),
    ("dda_dot", "denoise_dot", "adding debias (β = 1) to denoise, raw dot"),
    ("dda_lr", "dda", "learning-rate epoch weights vs 1/N in dda"),
    ("dda_contrast", "denoise_contrast", "adding debias (β = 1) to denoise, contrastive queries, cosine"),
    ("comparison_dda", "comparison_denoise", "adding debias (β = 1) to denoise, comparison models"),
    ("grad_dot_contrast", "grad_dot", "contrastive vs plain query, raw dot, last checkpoint"),
    ("denoise_contrast", "denoise", "contrastive vs plain query, denoise (cosine)"),
    ("comparison", "cosine", "comparison models vs gradient cosine, last checkpoint"),
    ("comparison_denoise", "denoise", "comparison models vs gradient cosine, denoise"),
    ("trak_if", "grad_dot", "TRAK-style preconditioning vs raw dot, last checkpoint"),
    ("denoise", "bm25", "denoise vs BM25"),
]

METRICS = ("auc", "recall_at_k", "recall_at_50", "index_s", "score_s")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix: ``"0-2,7"``; no duplicates."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
        except ValueError:
            raise ValueError(f"seeds {text!r} not understood: expected e.g. 0,1,2 or 0-4") from None
    if not seeds:
        raise ValueError(f"seeds {text!r}: give at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {text!r}: a seed is repeated")
    if min(seeds) < 0:
        raise ValueError(f"seeds {text!r}: seeds must be >= 0")
    return seeds


def _run_one(config, out: str, progress: bool, prefix: str) -> dict:
    from fasttda.demo.run import run

    def log(message: str) -> None:
        import sys

        sys.stderr.write(f"{prefix}{message}\n")
        sys.stderr.flush()

    return run(config, Path(out), progress=progress, log=log)


def run_seeds(config, seeds: Sequence[int], out: str | Path, *, jobs: int = 1, progress: bool = False,
              log=print) -> dict:
    """Run the demo once per seed into ``out/seed{N}`` and write the aggregate report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    dirs = [str(out / f"seed{s}") for s in seeds]
    if jobs <= 1 or len(seeds) == 1:
        reports = [_run_one(c, d, progress, f"seed {c.seed}: ") for c, d in zip(configs, dirs)]
    else:
        import multiprocessing

        # spawn: a fresh interpreter per worker, so no torch state (threads, RNG) is inherited
        with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, c, d, False, f"seed {c.seed}: ") for c, d in zip(configs, dirs)]
            reports = [f.result() for f in futures]
    wall_s = time.perf_counter() - t0
    summary = aggregate(reports, wall_s=wall_s, jobs=jobs)
    curves = {name: np.mean([_curve(d, name) for d in dirs], axis=0) for name in summary["methods"]}
    paths = write(out, summary, curves)
    log(f"wrote {paths['md']}, {paths['json']} and {paths['png']}: {len(seeds)} seeds in {wall_s:.0f} s")
    return summary


def collect(seeds: Sequence[int], out: str | Path, *, log=print) -> dict:
    """Aggregate the single-seed reports already in ``out/seed{N}/`` (seeds run as separate
    jobs, or on other machines) without running anything; ``wall_s`` is then unknown."""
    out = Path(out)
    dirs = [out / f"seed{s}" for s in seeds]
    missing = [str(d / "report.json") for d in dirs if not (d / "report.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no single-seed report to collect: {', '.join(missing)}")
    reports = [json.loads((d / "report.json").read_text()) for d in dirs]
    for s, r in zip(seeds, reports):
        if r["config"]["seed"] != s:
            raise ValueError(f"{out / f'seed{s}' / 'report.json'} holds seed {r['config']['seed']}, not {s}")
    summary = aggregate(reports, wall_s=None, jobs=0)
    curves = {name: np.mean([_curve(str(d), name) for d in dirs], axis=0) for name in summary["methods"]}
    paths = write(out, summary, curves)
    log(f"wrote {paths['md']}, {paths['json']} and {paths['png']} from {len(seeds)} seeds' reports")
    return summary


def _curve(run_dir: str, name: str) -> np.ndarray:
    data = json.loads((Path(run_dir) / "roc.json").read_text())
    return np.asarray(data["tpr"][name], dtype=np.float64)


def _stats(values: Sequence[float]) -> dict:
    vals = [float(v) for v in values]
    finite = [v for v in vals if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else float("nan")
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(finite, default=float("nan")),
            "max": max(finite, default=float("nan")), "values": vals}


def aggregate(reports: Sequence[dict], *, wall_s: float | None = None, jobs: int = 1) -> dict:
    """Mean ± spread per method and metric over single-seed reports (as `run` returns
    them), the per-seed values, and the sign count of each comparison."""
    if not reports:
        raise ValueError("aggregate needs at least one report")
    seeds = [r["config"]["seed"] for r in reports]
    names = [n for n in reports[0]["methods"] if all(n in r["methods"] for r in reports)]
    methods = {}
    for name in names:
        first = reports[0]["methods"][name]
        entry = {"description": first["description"], "projection": first.get("projection", "-"),
                 "format": first.get("format", "-")}
        keys = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for key in keys:
            entry[key] = _stats([r["methods"][name].get(key, float("nan")) for r in reports])
        methods[name] = entry
    comparisons = []
    for a, b, what in COMPARISONS:
        if a in methods and b in methods:
            diffs = [r["methods"][a]["auc"] - r["methods"][b]["auc"] for r in reports]
            comparisons.append({"a": a, "b": b, "what": what, "auc_diff": _stats(diffs),
                                "seeds_a_better": sum(d > 0 for d in diffs), "seeds": len(diffs)})
    per_seed = {}
    for r in reports:
        cfg = r["config"]
        per_seed[str(cfg["seed"])] = {k: cfg.get(k) for k in (
            "total_s", "train_s", "n_queries", "n_generated_queries", "n_teacher_forced_queries", "n_swapped",
            "fingerprints", "models_reused")}
    common = {k: v for k, v in reports[0]["config"].items() if k not in (
        "seed", "total_s", "train_s", "n_queries", "n_generated_queries", "n_teacher_forced_queries",
        "fingerprints", "n_swapped", "epoch_learning_rates", "models_reused", "phases_s")}
    return {"seeds": seeds, "methods": methods, "comparisons": comparisons, "per_seed": per_seed,
            "config": common, "wall_s": wall_s, "jobs": jobs, "debias_statistic": debias_statistic(reports)}


def debias_statistic(reports: Sequence[dict]) -> dict:
    """Per form, each seed's label-free statistic, its prediction and the outcome, and how
    often each candidate statistic predicted the sign of (dda − denoise)."""
    forms: dict[str, list] = {}
    for r in reports:
        for form, d in (r.get("debias_diagnosis") or {}).items():
            forms.setdefault(form, []).append({"seed": r["config"]["seed"], **d})
    keys = ("top_lift", "agreement_top", "agreement_all", "top_overlap")
    runs = [d for rows in forms.values() for d in rows]
    return {"forms": forms, "runs": len(runs),
            "correct": {k: sum(bool(d[f"correct_{k}"]) for d in runs) for k in keys}}


def fmt_stat(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def table(summary: dict) -> str:
    """The markdown table: mean ± sample std over seeds, and each seed's ROC-AUC."""
    seeds = summary["seeds"]
    lines = ["| method | what it scores | projection | format | ROC-AUC | AUC per seed (" +
             ", ".join(str(s) for s in seeds) + ") | Recall@K | Recall@50 | index s | score s |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|"]
    for name, m in summary["methods"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in m["auc"]["values"])
        lines.append(f"| {name} | {m['description']} | {m['projection']} | {m['format']} | "
                     f"{fmt_stat(m['auc'])} | {per_seed} | {fmt_stat(m['recall_at_k'])} | "
                     f"{fmt_stat(m['recall_at_50'])} | {m['index_s']['mean']:.1f} | {m['score_s']['mean']:.2f} |")
    return "\n".join(lines)


def effects(summary: dict) -> list[str]:
    """One line per comparison: the mean difference, its spread, and in how many seeds
    it holds. Only an effect with the same sign in every seed is called one."""
    lines = []
    for c in summary["comparisons"]:
        n, k, d = c["seeds"], c["seeds_a_better"], c["auc_diff"]
        if k == n:
            verdict = f"{c['a']} is better in all {n} seeds"
        elif k == 0:
            verdict = f"{c['a']} is worse in all {n} seeds"
        else:
            verdict = f"mixed: {c['a']} is better in {k} of {n} seeds, so no effect is claimed"
        lines.append(f"{c['what']}: {d['mean']:+.3f} ± {d['std']:.3f} AUC ({verdict}).")
    return lines


def machine_notes(summary: dict) -> list[str]:
    cfg = summary["config"]
    env = cfg.get("environment", {})
    return [
        f"Each seed ran with torch.use_deterministic_algorithms(True), {cfg.get('threads', 1)} torch thread, "
        "and every random choice (corpus, initialisation, batch order, projection) seeded: rerunning a seed "
        "on the same machine and software gives the same models (the fingerprints below) and the same table.",
        "What can still differ on another machine: float32 sums in the matrix products run in an order that "
        "depends on the CPU's vector width (AVX2 vs AVX-512) and on torch's build (its BLAS and oneDNN "
        "versions); over about 1,300 training steps those last-bit differences grow into a different model, "
        "with other hallucinations and other queries. Expect each method's AUC within about the spread "
        "shown, not the same digits; the effects that hold in every seed are the claim.",
        f"This run: {env.get('cpu', '?')} ({env.get('isa', '?')}), torch {env.get('torch', '?')}, "
        f"transformers {env.get('transformers', '?')}, " + (
            f"{summary.get('jobs', 1)} seed(s) at a time." if summary.get("jobs") else "seeds run as separate jobs."),
    ]


def markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    cfg = summary["config"]
    lines = [
        "# fasttda demo over seeds: tracing hallucinations to their training examples", "",
        f"Seeds {', '.join(map(str, seeds))}; per seed {cfg.get('n_train')} fine-tuning examples over "
        f"{cfg.get('n_pairs')} swap pairs, {cfg.get('epochs')} epochs, a "
        f"{cfg.get('model_parameters', 0):,}-parameter Llama-style model. Each cell is the mean ± sample "
        "standard deviation over seeds; each seed's own report is in seed*/report.md.", "",
        table(summary), "",
        "## Effects and how many seeds they hold in", "",
    ] + [f"- {line}" for line in effects(summary)] + ["", "## Per seed", "",
                                                      "| seed | queries (generated / forced) | wall s | θ₀ fingerprint | last checkpoint fingerprint |",
                                                      "|---|---|---:|---|---|"]
    for seed, info in summary["per_seed"].items():
        fps = info.get("fingerprints") or {}
        lines.append(f"| {seed} | {info['n_generated_queries']} / {info['n_teacher_forced_queries']} | "
                     f"{info['total_s']:.0f} | {fps.get('base', '-')} | {fps.get('last', '-')} |")
    stat = summary.get("debias_statistic") or {}
    if stat.get("runs"):
        lines += ["", "## Will debiasing help? The label-free statistic", "",
                  "Where θ₀ ranks the top 5 % of the epoch mean's ranking (lift: 2·mean percentile − 1, +1 = θ₀'s "
                  "own top, 0 = chance); above 0 predicts that debias hurts (`fasttda dda --beta auto` then takes "
                  "β = 0). The other columns are the other candidates (Spearman within that top, over all rows, "
                  "and the overlap of the two tops).", "",
                  "| form | seed | lift | Spearman (top) | Spearman (all) | top overlap | predicts | dda − denoise AUC | right |",
                  "|---|---|---:|---:|---:|---:|---|---:|---|"]
        for form, rows in stat["forms"].items():
            for d in rows:
                lines.append(f"| {form} | {d['seed']} | {d['top_lift']:+.3f} | {d['agreement_top']:+.3f} | {d['agreement_all']:+.3f} | "
                             f"{d['top_overlap']:.2f} | {d['predicts']} | {d['dda_minus_denoise']:+.3f} | "
                             f"{'yes' if d['correct'] else 'no'} |")
        lines += ["", "Right in " + ", ".join(f"{v} of {stat['runs']} ({k})" for k, v in stat["correct"].items()) +
                  " runs."]
    lines += ["", "## Reproducibility", ""] + [f"- {n}" for n in machine_notes(summary)]
    if summary.get("wall_s") is not None:
        lines += ["", f"All {len(seeds)} seeds took {summary['wall_s']:.0f} s of wall time "
                      f"({summary.get('jobs', 1)} at a time).", ""]
    return "\n".join(lines)


def write(out: Path, summary: dict, curves: dict[str, np.ndarray]) -> dict[str, Path]:
    from fasttda.demo.report import plot_roc

    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "roc.png"}
    paths["json"].write_text(json.dumps(summary, indent=2))
    paths["md"].write_text(markdown(summary))
    aucs = {name: m["auc"]["mean"] for name, m in summary["methods"].items()}
    plot_roc(curves, aucs, paths["png"], title=f"Mean ROC over seeds {', '.join(map(str, summary['seeds']))}")
    return paths
