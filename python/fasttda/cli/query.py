"""``fasttda query``: score queries against one or more stores, top-k per query."""
from __future__ import annotations

import json
import sys

import click

from fasttda.cli._common import (capture_options, data_field_options, fields_of, one_line_errors,
                                 target_field_option)


@click.command("query")
@click.option("--store", "stores", required=True, multiple=True,
              help="Store directory (repeatable: the scores of several stores are combined).")
@click.option("--weight", "weights", multiple=True, type=float,
              help="Weight of each store's score, in --store order (default 1 each).")
@click.option("--model", "models", required=True, multiple=True,
              help="Model directory the store was built from: once for all stores, or once per --store.")
@click.option("--queries", "queries_path", required=True, help="Queries, JSONL with prompt and response.")
@click.option("--top-k", default=50, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--out", default=None, help="Write results here as JSONL (default: standard output).")
@click.option("--cosine/--dot", "normalize", default=False, show_default=True,
              help="Cosine per store, or raw dot products.")
@click.option("--precondition", is_flag=True, help="Precondition with (GᵀG/N + λI)⁻¹ fitted on each store.")
@click.option("--damping", default=1e-3, show_default=True, type=float, help="λ for --precondition.")
@click.option("--projection", default=None,
              help="Expected projection; an error if a store was built with another one.")
@capture_options
@data_field_options
@target_field_option
@one_line_errors
def query(stores, weights, models, queries_path, top_k, out, normalize, precondition, damping, projection,
          batch_size, max_length, device, target_field, **kwargs):
    """Score queries against one or more stores; top-k per query."""
    from fasttda import pipeline
    from fasttda.capture import Projection
    from fasttda.data import load_jsonl

    if weights and len(weights) != len(stores):
        raise click.UsageError(f"give one --weight per --store ({len(stores)}), got {len(weights)}")
    if len(models) not in (1, len(stores)):
        raise click.UsageError(f"give --model once or once per --store ({len(stores)}), got {len(models)}")
    weights = list(weights) or [1.0] * len(stores)
    model_of = list(models) * len(stores) if len(models) == 1 else list(models)
    queries = load_jsonl(queries_path, **fields_of(kwargs), target_field=target_field)
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
        pipeline.check_store(store, path, checkpoint=loaded[model_dir])
        feats.append(pipeline.query_features(loaded[model_dir], queries, config))
        opened.append(store)
    pre = [pipeline.fit_preconditioner(s, damping) for s in opened] if precondition else None
    values, indices = pipeline.score_stores(feats, opened, weights, k=top_k, normalize=normalize,
                                            preconditioners=pre)
    result = pipeline.Attribution.of_store([q.id for q in queries], values, indices, opened[0])
    if out:
        result.write_jsonl(out)
        click.echo(f"wrote the top {values.shape[1]} of {len(opened[0])} training examples for "
                   f"{len(queries)} queries to {out}")
    else:
        for row in result.rows():
            sys.stdout.write(json.dumps(row) + "\n")

