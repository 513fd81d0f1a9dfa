"""``fasttda import trak|bergson|less|dattri-llm PATH STORE``: another tool's index as a feature store."""
from __future__ import annotations

import click

from fasttda.cli._common import FORMATS, one_line_errors, trak_index_options


@click.command("import")
@click.argument("kind", type=click.Choice(["trak", "bergson", "less", "dattri-llm"]))
@click.argument("path", type=click.Path(exists=True))
@click.argument("store", type=click.Path())
@click.option("--format", "fmt", default="fp16", show_default=True, type=click.Choice(FORMATS),
              help="Stored format (fp32 keeps fp32 sources bit for bit).")
@trak_index_options
@click.option("--no-verify", is_flag=True, help="Skip the final check against the source (bytes, norms, values).")
@one_line_errors
def import_index(kind, path, store, fmt, model_id, array, no_verify):
    """Convert a TRAK, Bergson, LESS or dattri-llm index at PATH into the store STORE.

    Resumable: run it again after an interruption and it continues after the last committed row.
    Nothing is unpickled: memmaps, JSON, and torch.load(weights_only=True) only.
    """
    from fasttda.integrations.importers import import_index as run

    options = {"model_id": model_id, "array": array} if kind == "trak" else {}
    result = run(kind, path, store, fmt=fmt, verify=not no_verify, **options)
    click.echo(f"imported {len(result)} rows x {result.dim} ({result.fmt}) from {kind} {path} -> {store}"
               f"{'' if no_verify else ', verified'}")
