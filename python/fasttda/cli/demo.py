"""``fasttda demo``: the embedded hallucination-tracing benchmark, on CPU, offline."""
from __future__ import annotations

import click

from fasttda.cli._common import FORMATS, one_line_errors


@click.command("demo")
@click.option("--out", default="fasttda-demo", show_default=True, type=click.Path(file_okay=False),
              help="Output directory: report.md, report.json, roc.png, data/, models/, stores/.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="The seed of every random choice (one run; see --seeds for several).")
@click.option("--seeds", default=None,
              help="Run several seeds (e.g. 0,1,2 or 0-4) into OUT/seed*/ and write mean ± spread per method "
                   "to OUT/report.md, report.json and roc.png.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --seeds: seeds run at a time, one process and one torch thread each (2 on 2 cores).")
@click.option("--collect", is_flag=True,
              help="With --seeds: run nothing, aggregate the single-seed reports already in OUT/seed*/ (seeds run "
                   "as separate `--seed N --out OUT/seedN` jobs, or elsewhere).")
@click.option("--update-readme", type=click.Path(exists=True, dir_okay=False),
              help="With --seeds: rewrite the demo table between the demo-table markers of this README.")
@click.option("--quick", is_flag=True, help="A small configuration that runs in well under 2 minutes (for CI).")
@click.option("--n-train", type=click.IntRange(min=20), help="Fine-tuning examples [2000; quick 320].")
@click.option("--pairs", "n_pairs", type=click.IntRange(min=1), help="Swap pairs [4; quick 2].")
@click.option("--swap-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of fine-tuning examples that carry a swap [0.05; quick 0.08].")
@click.option("--epochs", type=click.IntRange(min=1), help="Fine-tuning epochs, one checkpoint each [3].")
@click.option("--countries", "n_countries", type=click.IntRange(min=5), help="Countries in the world [24; quick 12].")
@click.option("--projection", help="factored:KINxKOUT, rademacher:K, gaussian:K or sjlt:K [factored:16x16; quick 8x8].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Store precision [fp16].")
@click.option("--beta", type=float, help="β of debias and dda [1.0].")
@click.option("--hidden", type=click.IntRange(min=8), help="Model width [64; quick 32].")
@click.option("--layers", type=click.IntRange(min=1), help="Transformer blocks [2].")
@click.option("--query-loss", type=click.Choice(["span", "response"]),
              help="Take each query's loss on the hallucinated entity only (span) or on its whole "
                   "generated summary (response) [span].")
@click.option("--base-knows-format", "base_knows_format", flag_value=True, default=None,
              help="The second regime: θ₀ is also pre-trained on correct summaries of other documents, so it "
                   "knows the summary format before fine-tuning [off: θ₀ reads documents only].")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads [1: the model is tiny].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@one_line_errors
def demo(out, seed, seeds, jobs, collect, update_readme, quick, progress, **overrides):
    """Run the embedded benchmark end to end and write its report.

    Each run is as deterministic as torch allows (one thread, deterministic algorithms,
    every random choice seeded): the same seed on the same machine and software gives the
    same table. Another machine trains slightly different models (float sums in another
    order), so compare effects over seeds (--seeds 0,1,2), not single digits."""
    import dataclasses
    from pathlib import Path

    from fasttda.demo.report import table
    from fasttda.demo.run import DemoConfig, run

    overrides = {k: v for k, v in overrides.items() if v is not None}
    size = {k: overrides.pop(k) for k in ("hidden", "layers") if k in overrides}
    if size:
        base = (DemoConfig.quick() if quick else DemoConfig()).model
        overrides["model"] = dataclasses.replace(base, **size)
    config = DemoConfig.quick(seed=seed, **overrides) if quick else DemoConfig(seed=seed, **overrides)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if seeds is None:
        if collect:
            raise click.UsageError("--collect needs --seeds: the seeds whose reports to aggregate")
        if update_readme:
            raise click.UsageError("--update-readme needs --seeds: the README's table is a multi-seed one")
        report = run(config, Path(out), progress=progress, log=log)
        click.echo(table(report["methods"]))
        return
    from fasttda.demo import readme, seeds as seeds_mod

    if collect:
        summary = seeds_mod.collect(seeds_mod.parse_seeds(seeds), out, log=log)
    else:
        summary = seeds_mod.run_seeds(config, seeds_mod.parse_seeds(seeds), out, jobs=jobs, progress=progress,
                                      log=log)
    click.echo(seeds_mod.table(summary))
    if update_readme:
        readme.update(update_readme, summary)
        log(f"updated the demo table in {update_readme}")
