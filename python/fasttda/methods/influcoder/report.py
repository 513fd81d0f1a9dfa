"""The Influcoder demo's report: report.json (the fixed shape), details.json, report.md,
and scatter.png (student against teacher similarity on the held-out block)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROWS = (("trained", "trained student"), ("untrained", "untrained student"), ("tfidf", "TF-IDF"), ("bm25", "BM25"))


def table(report: dict) -> str:
    lines = ["| similarity | mean per-anchor Spearman | aggregated Spearman |", "|---|---:|---:|"]
    for key, name in ROWS:
        m = report[key]
        lines.append(f"| {name} | {m['spearman_anchor']:.3f} | {m['spearman_agg']:.3f} |")
    return "\n".join(lines)


def goals(report: dict, details: dict) -> list[str]:
    t, u = report["trained"], report["untrained"]
    b, s, two = report["bytes_per_example"], report["seconds_per_example"], report["two_stage"]
    flops = details.get("flops", {})
    said = [
        f"aggregated Spearman {t['spearman_agg']:.3f} (goal ≥ 0.75: {'met' if t['spearman_agg'] >= 0.75 else 'not met'}), "
        f"{t['spearman_agg'] - u['spearman_agg']:+.3f} over the untrained encoder (goal ≥ +0.2: "
        f"{'met' if t['spearman_agg'] - u['spearman_agg'] >= 0.2 else 'not met'})",
        two_stage_goal(two, details.get("top_k", 50), details.get("two_stage_pool"),
                       details.get("two_stage_union_fraction", float("nan")), "the held-out pool"),
        f"storage {b['encoder']} vs {b['teacher']} bytes per example: {b['teacher'] / b['encoder']:.1f}× smaller "
        f"(goal ≥ 10×: {'met' if b['teacher'] >= 10 * b['encoder'] else 'not met'})",
        f"speed: encoder {s['encoder'] * 1e3:.2f} ms/example, gradient path {s['gradient'] * 1e3:.2f} ms/example "
        f"(×{s['gradient'] / s['encoder']:.2f}); the teacher is tiny here, so this says little",
    ]
    large = details.get("two_stage_large")
    if large:
        said.append(two_stage_goal(large, details.get("top_k", 50), large["pool"], large["union_fraction"],
                                   "the larger held-out pool (a superset of the first, for the two-stage "
                                   "measurement only)"))
    if "teacher_split_half_agg" in details:
        said.append(f"the teacher's own aggregated ranking agrees with itself at {details['teacher_split_half_agg']:.3f} "
                    "(Spearman between the candidate means of two random halves of the held-out anchors): "
                    "how much the aggregate depends on which anchors were drawn")
    if flops:
        said.append(f"FLOPs per example: encoder {flops['encoder_flops']:.3g}, gradient path "
                    f"{flops['gradient_flops']:.3g} (gradient/encoder ×{flops['ratio_gradient_over_encoder']:.3g})")
    return said


def two_stage_goal(two: dict, k: int, pool, union: float, which: str) -> str:
    met = two["recall_at_50"] >= 0.95 and two["gradient_fraction"] <= 0.1 + 1e-9
    rows = f"{pool}-row " if pool else ""
    return (f"two-stage on {which}, {rows}pool: recall@{k} {two['recall_at_50']:.3f} computing gradients for "
            f"{100 * two['gradient_fraction']:.1f} % of the pool per query (goal ≥ 0.95 at ≤ 10 %: "
            f"{'met' if met else 'not met'}); the union over all queries covers {100 * union:.1f} %")


def sweep_table(sweep: list, title: str) -> list[str]:
    return ["", title, "", "| candidates per query | fraction of pool | recall | union over queries |",
            "|---:|---:|---:|---:|"] + [
        f"| {r['candidates']} | {r['fraction']:.3f} | {r['recall']:.3f} | {r['union_fraction']:.3f} |" for r in sweep]


def write(out: Path, report: dict, details: dict, matrices: dict, y: np.ndarray) -> dict:
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2, default=str))
    png = scatter(out / "scatter.png", matrices, y)
    sweep = details.get("two_stage_sweep", [])
    lines = ["# Influcoder demo", "",
             "Held-out anchors × held-out pool of the embedded setting; Spearman against the teacher's "
             "gradient cosine.", "", table(report), "", "## Goals", ""]
    lines += [f"- {g}" for g in goals(report, details)]
    large = details.get("two_stage_large")
    if sweep:
        pool = details.get("two_stage_pool")
        lines += sweep_table(sweep, "## Two-stage: recall of the gradient top-k vs the pool fraction re-ranked"
                             + (f" (held-out pool, {pool} rows)" if pool else ""))
    if large:
        lines += sweep_table(large["sweep"], f"## Two-stage on the larger held-out pool ({large['pool']} rows, "
                             "the rows above included)")
    env = details.get("environment", {})
    git = env.get("git") or {}
    load = [env.get("loadavg_start"), details.get("load_end")]
    lines += ["", f"Total time {details.get('total_s', 0):.0f} s on {env.get('cpu', '?')} "
              f"({details.get('machine', '?')}), {details.get('date', '?')}, fasttda commit "
              f"{(git.get('commit') or '?')[:12]}{' (dirty)' if git.get('dirty') else ''}; load average (1 min) "
              f"at start/end {', '.join('?' if x is None else f'{x[0]:.1f}' for x in load)}. "
              "Full configuration, the training loss and the timings in details.json."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"md": out / "report.md", "json": out / "report.json", "png": png}


def scatter(path: Path, matrices: dict, y: np.ndarray, max_points: int = 20000):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    flat_y = y.ravel()
    pick = rng.choice(flat_y.size, min(max_points, flat_y.size), replace=False)
    fig, axes = plt.subplots(1, len(matrices), figsize=(5 * len(matrices), 4.5), squeeze=False)
    for ax, (name, s) in zip(axes[0], matrices.items()):
        ax.scatter(flat_y[pick], np.asarray(s).ravel()[pick], s=2, alpha=0.3)
        ax.set_xlabel("teacher: gradient cosine")
        ax.set_ylabel(f"{name} student: embedding cosine")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
