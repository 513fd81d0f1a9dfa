"""The demo's outputs: report.json, report.md (the table) and roc.png."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fasttda.demo.evaluate import FPR_GRID


def write(out: Path, methods: dict, pairs: dict, config: dict, curves: dict[str, np.ndarray],
          notes: list[str]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = {"methods": methods, "pairs": pairs, "config": config}
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "roc.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"].write_text(markdown(report, notes))
    plot_roc(curves, methods, paths["png"])
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
    lines += ["", f"Timings in seconds on this machine; capture/store/scoring: {cfg['implementation']}.", ""]
    return "\n".join(lines)


def plot_roc(curves: dict[str, np.ndarray], methods: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    colors = plt.get_cmap("tab20").colors
    for i, (name, tpr) in enumerate(curves.items()):
        style = "-" if name in ("dda", "denoise", "debias") else "--"
        ax.plot(FPR_GRID, tpr, style, color=colors[i % len(colors)], linewidth=1.4,
                label=f"{name} (AUC {methods[name]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Tracing hallucinations to swapped training examples")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
