"""One PNG per suite from a bench report: median time per case (log scale), one bar per impl.

Bars carry the p25–p75 spread as error bars and the ratio against the case's baseline as a
label; missing impls are listed under the plot, so an absent anchor stays visible.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path


def _case_label(r: dict) -> str:
    shape = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k not in ("dtype", "kind"))
    return f"{r['name']}\n{shape}"


def plot_suite(report: dict, suite: str, path: str | os.PathLike) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["results"] if r["suite"] == suite and r["status"] == "ok"]
    missing = [r for r in report["results"] if r["suite"] == suite and r["status"] != "ok"]
    if not ok and not missing:
        return None
    cases: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in ok:
        cases.setdefault(_case_label(r), []).append(r)
    impls = list(OrderedDict.fromkeys(r["impl"] for r in ok))
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 1.6 * len(cases) * max(1, len(impls)) * 0.35), 5.0))
    for j, impl in enumerate(impls):
        xs, ys, lo, hi, labels = [], [], [], [], []
        for i, rows in enumerate(cases.values()):
            for r in rows:
                if r["impl"] == impl:
                    xs.append(i + (j - (len(impls) - 1) / 2) * width)
                    ys.append(r["median_s"])
                    lo.append(r["median_s"] - r["p25_s"])
                    hi.append(r["p75_s"] - r["median_s"])
                    labels.append(f"{r['ratio_vs_baseline']:.1f}x" if r["ratio_vs_baseline"] else "")
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], label=impl, capsize=2)
        for bar, text in zip(bars, labels):
            if text:
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7, rotation=90, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(list(cases), fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median time per call (s, log)")
    machine = report["machine"]
    ax.set_title(f"fasttda bench: {suite} on {machine['device_name']} ({report['created_utc'][:10]})"
                 + (" [quick]" if report["config"]["quick"] else ""), fontsize=9)
    if impls:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if missing:
        names = sorted({r["impl"] for r in missing})
        fig.text(0.01, 0.005, "missing: " + ", ".join(names), fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_report(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Draw ``<out_dir>/<stem>-<suite>.png`` for every suite in the report."""
    from fasttda.bench.harness import result_filename

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_filename(report)[: -len(".json")]
    paths = []
    for suite in report["suites"]:
        path = plot_suite(report, suite, out / f"{stem}-{suite}.png")
        if path is not None:
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m fasttda.bench.plots RESULT.json [OUT_DIR]``: redraw a saved run's plots."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        raise SystemExit("usage: python -m fasttda.bench.plots RESULT.json [OUT_DIR]")
    report = json.loads(Path(args[0]).read_text())
    for path in plot_report(report, args[1] if len(args) > 1 else Path(args[0]).parent):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
