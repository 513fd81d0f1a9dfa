"""``fasttda query-index KIND:PATH --queries Q.npy``: score another tool's index in place, top-k per query."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fasttda.cli._common import one_line_errors, top_k_option, trak_index_options


def _query_features(path: str):
    """``[Q, d]`` query features: ``.npy`` (no pickle) or ``.pt`` (``torch.load(weights_only=True)``)."""
    import numpy as np
    import torch

    p = Path(path)
    if p.suffix == ".npy":
        q = torch.from_numpy(np.load(p, allow_pickle=False))
    else:
        q = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(q, torch.Tensor) or q.dim() != 2 or not q.dtype.is_floating_point:
        raise ValueError(f"{path}: expected a 2-D float array of query features [Q, d]")
    return q.float()


@click.command("query-index")
@click.argument("index")
@click.option("--queries", "queries_path", required=True,
              help="Query features [Q, d] from the same tool and projection (.npy, or a tensor .pt).")
@top_k_option
@click.option("--cosine/--dot", "normalize", default=False, show_default=True, help="Cosine or raw inner product.")
@trak_index_options
@click.option("--out", default=None, help="Write JSONL here (default: standard output).")
@one_line_errors
def query_index(index, queries_path, top_k, normalize, model_id, array, out):
    """Score query features against INDEX (trak:DIR, bergson:DIR or dattri-llm:DIR) where it lies, no copy.

    Rows stream from the tool's own memory maps through fasttda's one-pass scorer and top-k;
    LESS .pt shards cannot be read in place (fasttda import less them once).
    """
    import fasttda
    from fasttda.integrations.foreign import ForeignIndex

    options = {"model_id": model_id, "array": array} if index.startswith("trak:") else {}
    foreign = ForeignIndex.open(index, **options)
    result = fasttda.score(_query_features(queries_path), foreign, k=top_k, normalize=normalize)
    sink = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        for q, (values, rows, ids) in enumerate(zip(result.values.tolist(), result.indices.tolist(), result.ids)):
            for rank, (score, row, rid) in enumerate(zip(values, rows, ids)):
                sink.write(json.dumps({"query": q, "rank": rank, "row": row, "id": rid if isinstance(rid, str)
                                       else int(rid), "score": score}) + "\n")
    finally:
        if out:
            sink.close()
    if out:
        click.echo(f"wrote the top {result.values.shape[1]} of {len(foreign)} rows of {index} for "
                   f"{result.values.shape[0]} queries to {out}", err=True)
