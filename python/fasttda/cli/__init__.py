"""The ``fasttda`` command: one click group, each subcommand in its own module.

Subcommands are imported only when invoked (``fasttda --help`` stays fast and never
imports torch-heavy code). A subcommand module exposes one click command named as below.
"""
from __future__ import annotations

import importlib
import importlib.util

import click

from fasttda import __version__

SUBCOMMANDS = {
    "index": ("fasttda.cli.index", "index", "Index a training set (JSONL) into a feature store."),
    "query": ("fasttda.cli.query", "query", "Score queries against one or more stores; top-k per query."),
    "dda": ("fasttda.cli.dda", "dda", "Debias-and-Denoise attribution over checkpoints, end to end."),
    "demo": ("fasttda.cli.demo", "demo", "The embedded hallucination-tracing benchmark, on CPU, offline."),
    "influcoder": ("fasttda.cli.influcoder", "influcoder",
                   "Influcoder: distil gradient similarities into a text encoder (teacher, train, encode, eval, demo)."),
    "store": ("fasttda.cli.store", "store", "Inspect and verify feature stores (info, verify)."),
    "bench": ("fasttda.cli.bench", "bench", "Benchmark every op against the anchors; JSON and plots."),
    "import": ("fasttda.cli.import_index", "import_index",
               "Convert a TRAK, Bergson, LESS or dattri-llm index into a feature store."),
    "query-index": ("fasttda.cli.query_index", "query_index",
                    "Score query features against a TRAK, Bergson or dattri-llm index in place, no copy."),
    "less-select": ("fasttda.cli.less_select", "less_select",
                    "LESS data selection over stores: subtask mean, max, top rows; streamed."),
    "kernels": ("fasttda.cli.kernels", "kernels", "Compile every Triton kernel for sm_90a/sm_80 (no GPU needed)."),
}


class LazyGroup(click.Group):
    def invoke(self, ctx):
        from fasttda.cli._common import run_reporting_errors

        return run_reporting_errors(super().invoke, ctx)

    def list_commands(self, ctx):
        return [name for name, (mod, _, _) in SUBCOMMANDS.items() if importlib.util.find_spec(mod)]

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS or name not in self.list_commands(ctx):
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fasttda")
def main():
    """fasttda: fast training data attribution for language models."""


if __name__ == "__main__":
    main()
