#!/usr/bin/env python3
"""Print the README's performance table (markdown) from the committed bench results.

    python bench/make_table.py [RESULTS_DIR_OR_FILES...] [--include-quick] [--all-cases]
    python bench/make_table.py --update README.md     # rewrite the table between the markers

Per device and suite, the newest full (non --quick) run in bench/results/ that measured
the suite is used. One row per
fasttda case: its median time, the baseline it was measured against in the same run,
the ratio, and the fastest anchor of that case (with its peak memory: a fast anchor may
pay for its speed in memory) and the ratio against it. Every row names
the device and the date of its run. Nothing in the table is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    from fasttda.bench import fmt_time
except ImportError:  # a source checkout without an install: the package is under python/
    sys.path.insert(0, str(HERE.parent / "python"))
    from fasttda.bench import fmt_time


def load_runs(paths: list[Path], include_quick: bool) -> list[dict]:
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    runs = []
    for f in files:
        try:
            run = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {f}: {exc}", file=sys.stderr)
            continue
        if "results" not in run or (run["config"]["quick"] and not include_quick):
            continue
        run["_file"] = f.name
        runs.append(run)
    # Per device and suite, the newest run that measured that suite (a later `--suite project`
    # run replaces only the project rows of an earlier `--suite all` run); runs under `--busy`
    # load are kept apart, beside the quiet ones, never in their place.
    newest: dict[tuple, dict] = {}
    for run in sorted(runs, key=lambda r: r["created_utc"]):
        for suite, status in run["suites"].items():
            if status["status"] == "ok":
                busy = bool(run["config"].get("busy"))
                newest[(run["machine"]["device_name"], run["config"]["device"], busy, suite)] = run
    picked: dict[int, dict] = {}
    for (*_, suite), run in sorted(newest.items(), key=lambda kv: kv[0]):
        entry = picked.setdefault(id(run), dict(run, results=[], suites={}))
        entry["results"] += [r for r in run["results"] if r["suite"] == suite]
        entry["suites"][suite] = run["suites"][suite]
    return sorted(picked.values(), key=lambda r: (r["config"]["device"], r["created_utc"]))


def fmt_mem(case: dict) -> str:
    mem = case.get("peak_mem_bytes")
    return "" if mem is None else f", {mem / 2**20:.0f} MiB"


def fmt_shape(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("dtype",))


def is_fasttda(impl: str) -> bool:
    return impl.startswith("fasttda")


def rows_for(run: dict, all_cases: bool) -> list[list[str]]:
    ok = [r for r in run["results"] if r["status"] == "ok"]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["suite"], r["name"], json.dumps(r["params"], sort_keys=True)), []).append(r)
    device = f"{run['machine']['device_name']} ({run['config']['device']})"
    date = run["created_utc"][:10]
    load = run["machine"].get("loadavg_start")
    if run["config"]["device"] == "cpu" and load:
        device += f", load {load[0]:.1f}"
    if run["config"].get("busy"):
        device += ", under --busy load"
    table = []
    for (suite, name, _), cases in groups.items():
        anchors = [c for c in cases if not is_fasttda(c["impl"])]
        fastest = min(anchors, key=lambda c: c["median_s"]) if anchors else None
        for c in cases:
            if not is_fasttda(c["impl"]) or (c["baseline"] is None and not all_cases):
                continue
            base = next((a for a in cases if a["impl"] == c["baseline"]), None)
            table.append([
                suite, name, fmt_shape(c["params"]), c["impl"], fmt_time(c["median_s"]) + fmt_mem(c),
                f"{c['baseline']} {fmt_time(base['median_s'])}" if base else (c["baseline"] or "-"),
                f"**{c['ratio_vs_baseline']:.2f}×**" if c["ratio_vs_baseline"] else "-",
                f"{fastest['impl']} {fmt_time(fastest['median_s'])}{fmt_mem(fastest)}" if fastest else "-",
                f"{fastest['median_s'] / c['median_s']:.2f}×" if fastest else "-",
                device, date,
            ])
    return table


def missing_for(run: dict) -> list[str]:
    return sorted({f"{r['suite']}: {r['impl']}" for r in run["results"] if r["status"] != "ok"})


def render(runs: list[dict], all_cases: bool) -> str:
    head = ["suite", "case", "shape", "fasttda", "time, peak mem", "baseline (same run)", "speed-up", "fastest anchor",
            "vs fastest", "device", "date"]
    lines = ["<!-- generated by bench/make_table.py from bench/results/; do not edit by hand -->",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        lines += ["| " + " | ".join(row) + " |" for row in rows_for(run, all_cases)]
    for run in runs:
        miss = missing_for(run)
        if miss:
            lines.append("")
            lines.append(f"Not measured on {run['machine']['device_name']} ({run['created_utc'][:10]}): "
                         + "; ".join(miss) + ".")
    if not runs:
        lines.append("| (no full results committed yet) |" + " |" * (len(head) - 1))
    return "\n".join(lines)


START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def update_file(path: Path, table: str) -> None:
    """Replace what lies between the bench-table markers in ``path`` with ``table``."""
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, default=[HERE / "results"])
    ap.add_argument("--include-quick", action="store_true", help="also use --quick runs")
    ap.add_argument("--all-cases", action="store_true", help="also fasttda cases without a baseline")
    ap.add_argument("--update", type=Path, metavar="FILE", help="write the table between the markers in FILE")
    args = ap.parse_args(argv)
    table = render(load_runs(args.paths, args.include_quick), args.all_cases)
    if args.update:
        update_file(args.update, table)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
