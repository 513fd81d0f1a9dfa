"""``fasttda index``: one checkpoint's per-example gradient features into a store."""
from __future__ import annotations

import click

from fasttda.cli._common import capture_options, data_field_options, fields_of, one_line_errors, projection_options


@click.command("index")
@click.option("--model", "model_dir", required=True, help="Local model directory (Hugging Face or PEFT LoRA).")
@click.option("--data", "data_path", required=True, help="Training data, JSONL with prompt and response.")
@click.option("--out", "out", required=True, help="Store directory to create.")
@projection_options
@capture_options
@click.option("--resume", is_flag=True, help="Finish a store whose build was interrupted.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@data_field_options
@one_line_errors
def index(model_dir, data_path, out, projection, fmt, seed, modules, batch_size, max_length, device, resume,
          quiet, **kwargs):
    """Index a training set (JSONL) into a feature store (under ``torchrun``, each rank a
    slice; see the README's "Many GPUs and many nodes")."""
    from fasttda import distributed, pipeline
    from fasttda.data import load_jsonl

    rank, world = distributed.join_torchrun(device)

    examples = load_jsonl(data_path, **fields_of(kwargs))
    config = pipeline.CaptureConfig(projection, list(modules) or None, max_length, batch_size, seed)
    checkpoint = pipeline.load_checkpoint(model_dir, device=device)
    store = distributed.index(checkpoint, examples, out, config, fmt=fmt, resume=resume,
                              progress=not quiet and rank == 0)
    if rank == 0:
        click.echo(f"indexed {len(store)} examples from {data_path} at {model_dir} into {out} "
                   f"({config.projection}, {fmt}, {store.dim} dims{f', {world} ranks' if world > 1 else ''})")
