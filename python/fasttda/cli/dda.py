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
@click.option("--beta", default="1.0", show_default=True, callback=lambda ctx, param, v: _beta(v),
              help="Weight β of the base model's score, or 'auto': 0 when the label-free statistic (printed for "
                   "dda and debias) predicts that debiasing hurts, else 1.")
@click.option("--form", default="gradient", show_default=True, type=click.Choice(["gradient", "comparison"]),
              help="gradient: per-checkpoint gradient dot products (the paper's formulas). comparison: the "
                   "authors' procedure: per checkpoint, fine-tune a ground copy on the queries' references "
                   "and an error copy on their responses, score each training example by L(ground) − "
                   "L(error) (forward passes only), standardized per checkpoint (needs 'reference' on "
                   "every query).")
@click.option("--tune-steps", default=3, show_default=True, type=click.IntRange(min=1),
              help="--form comparison: full-batch optimizer steps per copy. Few steps keep each copy a "
                   "first-order move away from the checkpoint (the issue's measurement: 3 steps beat 10 and 30).")
@click.option("--tune-lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="--form comparison: learning rate of the copies' fine-tunes.")
@click.option("--tune-rank", default=8, show_default=True, type=click.IntRange(min=1),
              help="--form comparison: LoRA rank of the copies (adapters on every linear layer, as the "
                   "authors did; cheap to copy and to train at any model size).")
@click.option("--full-tune", is_flag=True, help="--form comparison: fine-tune every parameter instead of LoRA.")
@click.option("--tune-optimizer", default="adam", show_default=True, type=click.Choice(["adam", "sgd"]),
              help="--form comparison: Adam takes steps of about lr per weight whatever the gradients' "
                   "scale, so one lr suits every checkpoint.")
@click.option("--tune-loss", default="span", show_default=True, type=click.Choice(["span", "response"]),
              help="--form comparison: fine-tune on the target / reference_target spans where the queries "
                   "give them (what is attributed), or on whole outputs.")
@click.option("--group", "grouping", default="query", show_default=True, type=click.Choice(["query", "all"]),
              help="--form comparison: one ground/error pair per query, or one for all queries together "
                   "(queries about one error act as one query; costs 2 forward passes over the data per "
                   "group and checkpoint).")
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
def dda(base, checkpoints, data_path, queries_path, out, mode, beta, form, tune_steps, tune_lr, tune_rank, full_tune,
        tune_optimizer, tune_loss, grouping, lrs, normalize, precondition, damping, top_k, contrast, no_resume, quiet, projection, fmt, seed, modules, batch_size, max_length, device, target_field,
        with_text, with_html, **kwargs):
    """Debias-and-Denoise attribution over checkpoints, end to end."""
    from pathlib import Path

    from fasttda.methods import dda as dda_method

    if lrs and len(lrs) != len(checkpoints):
        raise click.UsageError(f"give one --lr per --checkpoint ({len(checkpoints)}), got {len(lrs)}")
    if form == "comparison":
        from fasttda.methods import dda_comparison as comp

        if contrast is False:
            raise click.UsageError("--form comparison always contrasts responses with references; drop --no-contrast")
        tune = comp.TuneConfig(steps=tune_steps, lr=tune_lr, lora_rank=None if full_tune else tune_rank,
                               optimizer=tune_optimizer, loss=tune_loss)
        result = comp.attribute_comparison(
            base, checkpoints, data_path, queries_path, out, mode=mode, beta=beta, lr=list(lrs) or None, tune=tune,
            grouping=grouping, k=top_k, batch_size=batch_size, max_length=max_length, resume=not no_resume,
            device=device, fields=fields_of(kwargs), target_field=target_field, text=with_text)
    else:
        result = dda_method.attribute(
            base, checkpoints, data_path, queries_path, out, mode=mode, beta=beta, lr=list(lrs) or None,
            normalize=normalize, precondition=precondition, damping=damping, k=top_k, projection=projection,
            seed=seed, fmt=fmt, modules=list(modules) or None, batch_size=batch_size, max_length=max_length,
            resume=not no_resume, progress=not quiet, device=device, fields=fields_of(kwargs),
            target_field=target_field, text=with_text, contrast=contrast)
    beta = result.beta
    if result.diagnosis is not None:
        click.echo(dda_method.describe_diagnosis(result.diagnosis))
    n_ckpt = len(dda_method.combination(mode, len(checkpoints), beta=1.0, lr=list(lrs) or None))
    click.echo(cost_report(form, result, n_ckpt))
    wrote = str(Path(out) / "results.jsonl")
    if with_html:
        html = result.write_html(Path(out) / "report.html", title=f"fasttda dda: top {result.values.shape[1]} per query",
                                 meta={"mode": mode, "β": beta, "form": form,
                                       "similarity": "cosine" if normalize or form == "comparison" else "dot"})
        wrote += f" and {html}"
    click.echo(f"ranked {len(result.train_ids)} training examples for {len(result.query_ids)} queries "
               f"({mode}, β={beta:g}, {form} form{', contrastive' if result.contrast else ''}); "
               f"top {result.values.shape[1]} in {wrote} "
               f"(index {result.index_s:.1f} s, score {result.score_s:.1f} s)")


def _beta(value: str) -> float | str:
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        beta = float(value)
    except ValueError:
        raise click.BadParameter(f"expected a number or 'auto', got {value!r}", param_hint="--beta") from None
    if beta != beta or beta in (float("inf"), float("-inf")):
        raise click.BadParameter(f"must be finite, got {value!r}", param_hint="--beta")
    return beta


def cost_report(form: str, result, n_checkpoints: int) -> str:
    """This run's cost beside the other form's, in example passes (one example through the
    model once) and seconds."""
    from fasttda.methods.dda_comparison import gradient_form_cost

    n, q = len(result.train_ids), len(result.query_ids)
    grad = gradient_form_cost(n, q, n_checkpoints, contrast=result.contrast)
    if form == "comparison":
        c = result.cost
        return (f"cost: comparison form {c.seconds:.1f} s over {n_checkpoints} checkpoints: {c.fine_tunes} "
                f"fine-tunes, {c.forward:,} forward and {c.backward:,} backward example passes (stores reused "
                f"from --out cost nothing); the gradient form over the same checkpoints takes {grad['forward']:,} "
                f"forward and {grad['backward']:,} backward passes, and its stores serve any later query")
    return (f"cost: gradient form {result.index_s + result.score_s:.1f} s (index {result.index_s:.1f} s) over "
            f"{n_checkpoints} checkpoints: {grad['forward']:,} forward and {grad['backward']:,} backward example "
            f"passes; --form comparison would take 2 fine-tunes and {2 * n:,} forward passes per query group "
            "and checkpoint")
