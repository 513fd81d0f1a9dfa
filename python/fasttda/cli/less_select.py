"""``fasttda less-select``: LESS's data selection over feature stores, streamed (no N × Q matrix)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fasttda.cli._common import one_line_errors, one_weight_per, weights_option


def _validation_rows(path: str):
    """A store directory, or LESS's own validation gradients (``.pt`` shards, loaded without unpickling)."""
    from fasttda.integrations.less import less_shards, load_less_tensor

    p = Path(path)
    if (p / "manifest.json").is_file():
        return path
    import torch

    return torch.cat([load_less_tensor(f) for f in less_shards(p)])


@click.command("less-select")
@click.option("--train", "train", required=True, multiple=True,
              help="Training store, one per checkpoint (repeatable; same rows in each).")
@click.option("--val", "val", required=True, multiple=True,
              help="Validation gradients per checkpoint, in --train order: a store, or LESS's dim<k> folder / .pt file.")
@weights_option("--train", "; LESS: the checkpoint's learning rate, renormalized to sum 1")
@click.option("--n-subtasks", type=click.IntRange(min=1), default=None,
              help="Validation rows form this many equal, contiguous subtask groups (mmlu 57, bbh 27, tydiqa 9).")
@click.option("--subtask-sizes", default=None, help="Explicit group sizes instead, comma-separated, in row order.")
@click.option("--percentage", type=float, default=None, help="Keep int(percentage × N) training rows.")
@click.option("--max-samples", type=click.IntRange(min=0), default=None, help="Keep this many training rows.")
@click.option("--cosine/--dot", "normalize", default=False, show_default=True,
              help="Cosine (for unnormalized stores) or raw inner product (LESS's normalized gradients).")
@click.option("--out", default=None, help="Write the selection here as JSONL (default: standard output).")
@one_line_errors
def less_select(train, val, weights, n_subtasks, subtask_sizes, percentage, max_samples, normalize, out):
    """LESS selection: mean over each subtask's validation rows, max over subtasks, top rows."""
    from fasttda.integrations.less_select import less_select as select

    if len(val) != len(train):
        raise click.UsageError(f"give one --val per --train ({len(train)}), got {len(val)}")
    weights = one_weight_per(weights, "--train", train)
    if (n_subtasks is None) == (subtask_sizes is None):
        raise click.UsageError("give exactly one of --n-subtasks and --subtask-sizes")
    sizes = None
    if subtask_sizes is not None:
        try:
            sizes = [int(s) for s in subtask_sizes.split(",")]
        except ValueError:
            raise click.UsageError(f"--subtask-sizes must be comma-separated integers, got {subtask_sizes!r}") from None
    result = select(list(train), [_validation_rows(v) for v in val], n_subtasks=n_subtasks, subtask_sizes=sizes,
                    checkpoint_weights=weights, percentage=percentage, max_samples=max_samples,
                    normalize=normalize)
    sink = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        for rank, (row, rid, score) in enumerate(zip(result.rows.tolist(), result.ids, result.scores.tolist())):
            sink.write(json.dumps({"rank": rank, "row": row, "id": rid, "score": score}) + "\n")
    finally:
        if out:
            sink.close()
    if out:
        click.echo(f"selected {len(result.ids)} rows -> {out}", err=True)
