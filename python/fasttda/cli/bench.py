"""``fasttda bench``: every op against every installed anchor, one run, JSON + plots."""
from __future__ import annotations

import importlib

import click

from fasttda.bench import fmt_time
from fasttda.bench.suites import SUITES


def _suite_module(name: str):
    return lambda: importlib.import_module(f"fasttda.bench.suites.{name}")


def _parse_suites(values: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for value in values or ("all",):
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                names.extend(SUITES)
            elif name in SUITES:
                names.append(name)
            elif name:
                raise click.BadParameter(f"unknown suite {name!r}; expected one of {', '.join(SUITES)} or all",
                                         param_hint="--suite")
    return list(dict.fromkeys(names))


@click.command("bench")
@click.option("--suite", "suites", multiple=True, metavar="NAME",
              help=f"Suite to run ({'|'.join(SUITES)}|all); repeat or comma-separate. Default: all.")
@click.option("--quick", is_flag=True, help="Small shapes and few repeats (CI smoke run, minutes on 2 cores).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run; auto picks cuda when torch sees a GPU.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="fasttda-bench", show_default=True,
              help="Directory for the JSON result and the per-suite PNG plots.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Draw one PNG per suite (matplotlib).")
@click.option("--busy", is_flag=True,
              help="Keep every core busy with a second process (a torch matmul loop) while timing: ratios under load.")
def bench(suites, quick, device, out_dir, plots, busy):
    """Benchmark every op against every installed anchor, side by side in one run.

    Writes <out>/<device>-<date>.json (machine, versions, git commit, every case with its
    median and spread, ratios against same-run baselines) and <out>/<suite>.png.
    """
    import torch

    from fasttda.bench import harness

    names = _parse_suites(suites)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        ctx = harness.BenchContext(quick=quick, device=device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    from fasttda import _extension
    from fasttda.bench.busy import busy_cores

    # build (or load the cached build of) the compiled kernels now, so no suite's timing pays for it
    _extension.prepare(["cpu"] + (["cuda"] if device == "cuda" else []), log=lambda m: click.echo(m, err=True))
    ctx.busy = bool(busy)  # suites whose goals differ under load read it
    with busy_cores(busy):
        report = harness.run_suites(names, ctx, {name: _suite_module(name) for name in names})
    report["config"]["busy"] = bool(busy)
    path = harness.write_report(report, out_dir)
    click.echo(f"wrote {path}")
    if plots:
        try:
            from fasttda.bench.plots import plot_report

            for png in plot_report(report, out_dir):
                click.echo(f"wrote {png}")
        except ImportError as exc:
            click.echo(f"plots skipped: {exc} (pip install 'fasttda[bench]')", err=True)
    click.echo(summary(report))
    failed = [name for name, s in report["suites"].items() if s["status"] == "error"]
    if failed:
        raise click.ClickException(f"suites failed: {', '.join(failed)} (tracebacks in {path})")


def summary(report: dict) -> str:
    """A plain-text table of the run: time, ratio vs baseline, GB/s, TFLOP/s, peak memory."""
    lines = [f"{'suite/case':44} {'impl':32} {'median':>10} {'vs base':>9} {'GB/s':>8} {'TFLOP/s':>8} {'peak MiB':>9}"]
    for r in report["results"]:
        shape = ",".join(f"{k}={v}" for k, v in r["params"].items() if k not in ("dtype", "kind"))
        label = f"{r['suite']}/{r['name'] or '*'} {shape}"
        if r["status"] != "ok":
            lines.append(f"{label[:44]:44} {r['impl'][:32]:32} missing: {r['reason'][:70]}")
            continue
        ratio = f"{r['ratio_vs_baseline']:.2f}x" if r["ratio_vs_baseline"] else ""
        gbps = f"{r['gbps']:.1f}" if r["gbps"] else ""
        tflops = f"{r['tflops']:.3f}" if r["tflops"] else ""
        mem = f"{r['peak_mem_bytes'] / 2**20:.0f}" if r["peak_mem_bytes"] is not None else ""
        lines.append(f"{label[:44]:44} {r['impl'][:32]:32} {fmt_time(r['median_s']):>10} {ratio:>9} {gbps:>8} "
                     f"{tflops:>8} {mem:>9}")
    goals = [(r, g) for r in report["results"] for g in (r.get("extra") or {}).get("goals", [])]
    if goals:  # the targets some suites check (extra["goals"]): one line each
        lines.append("goals:")
        lines += [f"  {'met   ' if g['met'] else 'MISSED'} {r['suite']}/{r['name']} {g['goal']}: {g['value']:.3g}"
                  for r, g in goals]
    return "\n".join(lines)

