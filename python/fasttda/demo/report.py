"""The demo's outputs: report.json, report.md (the table), roc.png and roc.json (the curves)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fasttda.demo.evaluate import FPR_GRID


def write(out: Path, methods: dict, pairs: dict, config: dict, curves: dict[str, np.ndarray],
          notes: list[str], debias_diagnosis: dict | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = {"methods": methods, "pairs": pairs, "config": config}
    if debias_diagnosis is not None:
        report["debias_diagnosis"] = debias_diagnosis
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "roc.png",
             "curves": out / "roc.json"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"].write_text(markdown(report, notes))
    paths["curves"].write_text(json.dumps({"fpr": FPR_GRID.tolist(),
                                           "tpr": {n: np.asarray(c).tolist() for n, c in curves.items()}}))
    plot_roc(curves, {n: m["auc"] for n, m in methods.items()}, paths["png"],
             title=f"Tracing hallucinations to swapped training examples (seed {config['seed']})")
    return paths


def table(methods: dict) -> str:
    lines = ["| method | what it scores | ROC-AUC | Recall@K | Recall@50 | projection | format | index s | score s |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['description']} | {m['auc']:.3f} | {m['recall_at_k']:.3f} | "
                     f"{m['recall_at_50']:.3f} | {m['projection']} | {m['format']} | {m['index_s']:.1f} | "
                     f"{m['score_s']:.2f} |")
    return "\n".join(lines)


def markdown(report: dict, notes: list[str]) -> str:
    cfg = report["config"]
    lines = [
        "# fasttda demo: tracing hallucinations to their training examples",
        "",
        f"Seed {cfg['seed']}; {cfg['n_train']} fine-tuning examples, {cfg['n_swapped']} carry a swapped "
        f"country over {cfg['n_pairs']} swap pairs; {cfg['epochs']} epochs; a {cfg['model_parameters']:,}-parameter "
        f"Llama-style model; {cfg['n_queries']} queries ({cfg['n_generated_queries']} greedy-decoded "
        f"hallucinations, {cfg['n_teacher_forced_queries']} teacher-forced fallbacks). Metrics rank the whole "
        "training set and are averaged over queries, then over swap pairs; K is the number of true sources. "
        + ("Each query's gradient is the loss on the hallucinated country's tokens only (--query-loss span)."
           if cfg.get("query_loss", "response") == "span" else
           "Each query's gradient is the loss on its whole generated summary (--query-loss response)."),
        "",
        table(report["methods"]),
        "",
        "## Per swap pair (ROC-AUC)",
        "",
    ]
    names = list(report["methods"])
    lines.append("| pair | true sources | queries (generated / forced) | " + " | ".join(names) + " |")
    lines.append("|---|---:|---|" + "---:|" * len(names))
    for pair, info in report["pairs"].items():
        aucs = " | ".join(f"{info['methods'][n]['auc']:.3f}" if n in info["methods"] else "-" for n in names)
        lines.append(f"| {pair} | {info['true_sources']} | {info['generated_queries']} / "
                     f"{info['teacher_forced_queries']} | {aucs} |")
    lines += ["", "## How well each checkpoint fits the swapped examples", "",
              "Mean cross-entropy of the swapped examples at the swapped-in entity, and over their whole "
              "summary (θ₀ = ckpt0). A swap fitted early leaves little of itself in later gradients.", "",
              "| pair | " + " | ".join(f"ckpt{c} entity / summary" for c in range(cfg["epochs"] + 1)) + " |",
              "|---|" + "---|" * (cfg["epochs"] + 1)]
    for pair, info in report["pairs"].items():
        fit = info.get("fit_of_swapped_examples", {})
        lines.append(f"| {pair} | " + " | ".join(
            f"{fit[c]['swap_token_loss']:.2f} / {fit[c]['response_loss']:.2f}" if c in fit else "-"
            for c in (f"ckpt{i}" for i in range(cfg["epochs"] + 1))) + " |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", f"Timings in seconds on this machine; capture/store/scoring: {cfg['implementation']}."]
    if cfg.get("phases_s"):
        lines.append("Where the time went: " + ", ".join(f"{k} {v:.1f} s" for k, v in cfg["phases_s"].items()) +
                     f"; {cfg['total_s']:.0f} s in all.")
    lines.append("")
    return "\n".join(lines)


# Colours (Okabe-Ito, then tab10's darker ones) and dash patterns, paired so that no two
# methods share both; the legend is ordered by AUC, the best first.
_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8c564b",
            "#7f7f7f", "#bcbd22", "#9467bd"]
_DASHES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]


def line_styles(names) -> dict[str, tuple[str, object]]:
    """A (colour, line style) per method, fixed by the method's position in ``names``, so a
    method looks the same in every plot of a run; unique for up to 55 methods."""
    styles = {}
    for i, name in enumerate(names):
        colour = _COLOURS[i % len(_COLOURS)]
        dash = _DASHES[(i // len(_COLOURS) + i) % len(_DASHES)]
        styles[name] = (colour, dash)
    return styles


def plot_roc(curves: dict[str, np.ndarray], aucs: dict[str, float], path: Path,
             title: str = "Tracing hallucinations to swapped training examples") -> None:
    """Mean ROC curve per method; the legend lists methods by AUC, highest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = line_styles(list(curves))
    fig, ax = plt.subplots(figsize=(7.2, 6.0))
    for name in sorted(curves, key=lambda n: -aucs[n]):
        colour, dash = styles[name]
        ax.plot(FPR_GRID, curves[name], linestyle=dash, color=colour, linewidth=1.8,
                label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle=(0, (1, 3)), label="chance (0.500)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.25)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right", handlelength=3.2, title="by ROC-AUC", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
