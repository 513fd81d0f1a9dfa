"""``fasttda dda``: index every checkpoint, score the queries with DDA's weights, rank."""
from __future__ import annotations

import click

from fasttda.cli._common import (capture_options, data_field_options, fields_of, one_line_errors,
                                 projection_options, similarity_option, target_field_option, text_report_options)


@click.command("dda")
@click.option("--base", required=True, help="Base model θ₀ directory (before fine-tuning).")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True,
              help="Fine-tuned checkpoint directory, one per epoch, in order (repeatable).")
@click.option("--data", "data_path", required=True, help="Fine-tuning data, JSONL with prompt and response.")
@click.option("--queries", "queries_path", required=True, help="Outputs to attribute, JSONL with prompt and response.")
@click.option("--out", required=True, help="Output directory: stores/, results.jsonl, config.json.")
@click.option("--mode", default="dda", show_default=True, type=click.Choice(["dda", "debias", "denoise", "if", "base"]),
              help="dda: epoch mean − β·base; debias: last − β·base; denoise: epoch mean; if: last; "
                   "base: the base alone (a diagnostic).")
@click.option("--beta", default=1.0, show_default=True, type=float, help="Weight β of the base model's score.")
@click.option("--lr", "lrs", multiple=True, type=float,
              help="Learning rate of each epoch (repeatable, one per --checkpoint): weights lr_i/Σlr replace 1/N.")
@similarity_option
@click.option("--precondition", is_flag=True, help="Precondition each checkpoint with (GᵀG/N + λI)⁻¹.")
@click.option("--damping", default=1e-3, show_default=True, type=float, help="λ for --precondition.")
@click.option("--top-k", default=50, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--no-resume", is_flag=True, help="Fail instead of reusing or finishing existing stores in --out.")
@click.option("--contrast/--no-contrast", default=None,
              help="Contrastive queries: g(response) − g(reference), from each query's 'reference' field (the "
                   "correct output; its loss on the 'reference_target' span when given, else the whole "
                   "reference). Default: on exactly when the queries carry references.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@projection_options
@capture_options
@data_field_options
@target_field_option
@text_report_options
@one_line_errors
def dda(base, checkpoints, data_path, queries_path, out, mode, beta, lrs, normalize, precondition, damping, top_k,
        contrast, no_resume, quiet, projection, fmt, seed, modules, batch_size, max_length, device, target_field,
        with_text, with_html, **kwargs):
    """Debias-and-Denoise attribution over checkpoints, end to end."""
    from pathlib import Path

    from fasttda.methods import dda as dda_method

    if lrs and len(lrs) != len(checkpoints):
        raise click.UsageError(f"give one --lr per --checkpoint ({len(checkpoints)}), got {len(lrs)}")
    result = dda_method.attribute(
        base, checkpoints, data_path, queries_path, out, mode=mode, beta=beta, lr=list(lrs) or None,
        normalize=normalize, precondition=precondition, damping=damping, k=top_k, projection=projection,
        seed=seed, fmt=fmt, modules=list(modules) or None, batch_size=batch_size, max_length=max_length,
        resume=not no_resume, progress=not quiet, device=device, fields=fields_of(kwargs),
        target_field=target_field, text=with_text, contrast=contrast)
    wrote = str(Path(out) / "results.jsonl")
    if with_html:
        html = result.write_html(Path(out) / "report.html", title=f"fasttda dda: top {result.values.shape[1]} per query",
                                 meta={"mode": mode, "β": beta, "similarity": "cosine" if normalize else "dot"})
        wrote += f" and {html}"
    click.echo(f"ranked {len(result.train_ids)} training examples for {len(result.query_ids)} queries "
               f"({mode}, β={beta}{', contrastive' if result.contrast else ''}); "
               f"top {result.values.shape[1]} in {wrote} "
               f"(index {result.index_s:.1f} s, score {result.score_s:.1f} s)")
