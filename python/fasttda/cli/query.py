"""``fasttda query``: score queries against one or more stores, top-k per query."""
from __future__ import annotations

import json
import sys

import click

from fasttda.cli._common import (capture_options, data_field_options, fields_of, one_line_errors, one_weight_per,
                                 similarity_option, target_field_option, text_report_options, top_k_option,
                                 weights_option)


def prefilter_options(fn):
    """``--prefilter`` and the ``--candidates`` it keeps (two-stage scoring with an Influcoder store)."""
    fn = click.option("--candidates", default=1000, show_default=True, type=click.IntRange(min=1),
                      help="Rows per query kept by --prefilter.")(fn)
    return click.option("--prefilter", default=None,
                        help="influcoder:STORE: an encoder store of the same rows (fasttda influcoder encode) "
                             "shortlists --candidates rows per query; only those are scored with gradients. "
                             "One --store, no --precondition.")(fn)


@click.command("query")
@click.option("--store", "stores", required=True, multiple=True,
              help="Store directory (repeatable: the scores of several stores are combined).")
@weights_option("--store")
@click.option("--model", "models", required=True, multiple=True,
              help="Model directory the store was built from: once for all stores, or once per --store.")
@click.option("--queries", "queries_path", required=True, help="Queries, JSONL with prompt and response.")
@top_k_option
@click.option("--out", default=None,
              help="Write results here as JSONL, and a readable report beside it (OUT with .html) "
                   "(default: JSONL on standard output).")
@click.option("--data", "data_path", default=None,
              help="The training JSONL the stores index: its text goes into the results and the report "
                   "(checked against the stores' data fingerprint).")
@similarity_option
@click.option("--precondition", is_flag=True, help="Precondition with (GᵀG/N + λI)⁻¹ fitted on each store.")
@click.option("--damping", default=1e-3, show_default=True, type=float, help="λ for --precondition.")
@click.option("--query-precision", default="fp32", show_default=True, type=click.Choice(["fp32", "int8"]),
              help="int8: round each query to int8 (its own scale) and score with exact integer dot products: "
                   "faster on CPU, for one int8 or int4 --store.")
@click.option("--contrast/--no-contrast", default=None,
              help="Contrastive queries: g(response) − g(reference), from each query's 'reference' field (the "
                   "correct output; its loss on the 'reference_target' span when given, else the whole "
                   "reference). Default: on exactly when the queries carry references.")
@click.option("--projection", default=None,
              help="Expected projection; an error if a store was built with another one.")
@prefilter_options
@capture_options
@data_field_options
@target_field_option
@text_report_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def query(stores, weights, models, queries_path, top_k, out, data_path, normalize, precondition, damping,
          query_precision, contrast, projection, prefilter, candidates, batch_size, max_length, device, target_field, with_text,
          with_html, quiet, **kwargs):
    """Score queries against one or more stores; top-k per query."""
    from fasttda import distributed, pipeline
    from fasttda.capture import Projection
    from pathlib import Path

    from fasttda.data import data_fingerprint, load_jsonl, resolve_contrast

    rank, _ = distributed.join_torchrun(device)  # under torchrun: queries and rows split over the ranks
    weights = one_weight_per(weights, "--store", stores)
    if prefilter is not None and (len(stores) != 1 or precondition or not prefilter.startswith("influcoder:")):
        raise click.UsageError("--prefilter takes influcoder:STORE, with one --store and no --precondition")
    if query_precision != "fp32" and (len(stores) != 1 or prefilter is not None):
        raise click.UsageError("--query-precision int8 scores one --store, without --prefilter")
    if len(models) not in (1, len(stores)):
        raise click.UsageError(f"give --model once or once per --store ({len(stores)}), got {len(models)}")
    weights = weights or [1.0] * len(stores)
    model_of = list(models) * len(stores) if len(models) == 1 else list(models)
    fields = fields_of(kwargs)
    queries = load_jsonl(queries_path, **fields, target_field=target_field, reference_field="reference",
                         reference_target_field="reference_target")
    contrast = resolve_contrast(contrast, queries)
    train = load_jsonl(data_path, **fields) if data_path and (with_text or with_html) else None
    pipeline.check_same_tokenizer(sorted(set(model_of), key=model_of.index))
    expected = Projection.parse(projection) if projection is not None else None
    opened, feats, loaded = [], [], {}
    for path, model_dir in zip(stores, model_of):
        store = pipeline.open_store(path)
        config = pipeline.store_config(store, batch_size=batch_size)
        if expected is not None and expected != config.projection:
            raise pipeline.StoreMismatch(f"store {path} was built with projection {config.projection}, "
                                         f"not {projection}")
        if model_dir not in loaded:
            loaded[model_dir] = pipeline.load_checkpoint(model_dir, device=device)
        pipeline.check_store(store, path, checkpoint=loaded[model_dir],
                             data=data_fingerprint(train) if train is not None else None)
        feats.append(distributed.query_features(loaded[model_dir], queries, config, contrast=contrast,
                                                   progress=not quiet))
        opened.append(store)
    if prefilter is not None:
        from fasttda.methods.influcoder.twostage import query_with_prefilter

        values, indices = query_with_prefilter(pipeline.open_store(prefilter.partition(":")[2]), queries,
                                               feats[0] * weights[0], opened[0], k=top_k, m=candidates,
                                               normalize=normalize, device=device)
    else:
        pre = [pipeline.fit_preconditioner(s, damping) for s in opened] if precondition else None
        values, indices = pipeline.score_stores(feats, opened, weights, k=top_k, normalize=normalize,
                                                preconditioners=pre, query_precision=query_precision,
                                                progress=not quiet)
    result = pipeline.Attribution.of_store([q.id for q in queries], values, indices, opened[0])
    if rank != 0:  # every rank holds the same result; rank 0 writes it
        return
    result.queries, result.train = queries, train
    if train is None and (with_text or with_html) and out:
        click.echo("note: pass --data TRAIN.jsonl (the data the stores index) to put the training text in the "
                   "results and the report", err=True)
    if out:
        result.write_jsonl(out, text=with_text)
        wrote = f"{out}"
        if with_html:
            html = Path(out).with_suffix(".html")
            result.write_html(html, title=f"fasttda query: top {values.shape[1]} per query",
                              meta={"stores": ", ".join(stores), "similarity": "cosine" if normalize else "dot"})
            wrote += f" and {html}"
        click.echo(f"wrote the top {values.shape[1]} of {len(opened[0])} training examples for "
                   f"{len(queries)} queries to {wrote}")
    else:
        for row in result.rows(with_text):
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")

