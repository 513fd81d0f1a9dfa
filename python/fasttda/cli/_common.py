"""Options and error handling shared by the subcommands.

Bad input ends the command with one line (``Error: ...``) and exit status 1, never a
traceback; set ``FASTTDA_DEBUG=1`` to see the traceback instead. `error_line` is the one
place that turns an exception into that line; the ``fasttda`` group applies it to every
subcommand.
"""
from __future__ import annotations

import functools
import os

import click

FORMATS = ("fp32", "bf16", "fp16", "int8", "fp8_e4m3", "int4")


# a missing optional module -> the extra that installs it
EXTRAS = {"transformers": "hf", "peft": "hf", "matplotlib": "demo", "rank_bm25": "demo", "traker": "trak",
          "dattri": "dattri", "triton": "triton", "jsonschema": "dev"}


def error_line(exc: BaseException) -> str:
    """One line saying what went wrong, for any error a command lets through.

    fasttda's documented errors (`StoreError` and its kinds, `IncompatibleStoresError`,
    `BackendUnavailable`, `DataError`, `CheckpointError`, and the ValueError/TypeError/
    OSError its functions raise on bad arguments or files) carry self-contained messages
    that name the file or argument; multi-line ones are folded onto one line. A missing
    optional module names the extra to install. Anything else is a bug: its type is named
    and ``FASTTDA_DEBUG=1`` shows the traceback.
    """
    from fasttda.store import CorruptStoreError, IncompatibleStoresError, StoreError

    if isinstance(exc, CorruptStoreError) and exc.problems:
        head = str(exc).splitlines()[0].rstrip(":")
        more = f" (+{len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        first = exc.problems[0]
        return head if first in head else f"{head}: {first}{more}"
    if isinstance(exc, ImportError) and not isinstance(exc, ModuleNotFoundError) and "cannot import name" in str(exc):
        return _internal(exc)
    if isinstance(exc, ImportError):
        module = (exc.name or "").split(".")[0] or "a module"
        extra = EXTRAS.get(module)
        hint = f": pip install 'fasttda[{extra}]'" if extra else ""
        return f"this command needs {module}, which is not installed{hint}"
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if isinstance(exc, RecursionError):
        return "input is nested too deeply to read"
    if isinstance(exc, (StoreError, IncompatibleStoresError)):
        return _fold(exc)
    from fasttda._dispatch import BackendUnavailable

    if isinstance(exc, (BackendUnavailable, ValueError, TypeError, OSError, FloatingPointError)):
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
            return f"{exc.filename}: {exc.strerror or exc}"
        return _fold(exc)
    if type(exc).__name__ == "UnpicklingError":
        return f"refused to unpickle a file holding objects other than tensors ({_fold(exc)[:120]})"
    return _internal(exc)


def _fold(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(exc).__name__


def _internal(exc: BaseException) -> str:
    return f"unexpected {type(exc).__name__}: {_fold(exc)[:300]} (a fasttda bug? FASTTDA_DEBUG=1 shows the traceback)"


def run_reporting_errors(fn, *args, **kwargs):
    """Call ``fn``; any error but click's own ends the command with ``Error: <one line>``, exit 1."""
    try:
        return fn(*args, **kwargs)
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:
        if os.environ.get("FASTTDA_DEBUG") == "1":
            raise
        raise click.ClickException(error_line(exc)) from None


def one_line_errors(fn):
    """Decorator form of `run_reporting_errors` (every subcommand also gets it from the group)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run_reporting_errors(fn, *args, **kwargs)
    return wrapper


def data_field_options(fn):
    for option in reversed([
        click.option("--prompt-field", default="prompt", show_default=True, help="JSON field holding the prompt."),
        click.option("--response-field", default="response", show_default=True,
                     help="JSON field holding the response (the loss is taken on it)."),
        click.option("--id-field", default="id", show_default=True,
                     help="JSON field holding the example id (the row number when absent)."),
    ]):
        fn = option(fn)
    return fn


def target_field_option(fn):
    return click.option("--target-field", default="target", show_default=True,
                        help="JSON field of a query naming the text of its response to attribute (e.g. a "
                             "hallucinated entity): the loss is taken on the tokens of its first occurrence "
                             "only. Used where present; queries without it keep the whole response.")(fn)


def fields_of(kwargs: dict) -> dict:
    return {"prompt_field": kwargs.pop("prompt_field"), "response_field": kwargs.pop("response_field"),
            "id_field": kwargs.pop("id_field")}


def capture_options(fn):
    for option in reversed([
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
                     help="Examples per forward/backward pass."),
        click.option("--max-length", default=512, show_default=True, type=click.IntRange(min=2),
                     help="Tokens per example; longer prompts lose their start (with a warning)."),
        click.option("--device", default="cpu", show_default=True, help="Torch device to run the model on."),
        click.option("--threads", type=click.IntRange(min=1), default=None, callback=_set_threads,
                     expose_value=False, help="CPU threads for torch (default: torch's choice; 1 suits tiny models)."),
    ]):
        fn = option(fn)
    return fn


def _set_threads(ctx, param, value):
    if value is not None:
        import torch

        torch.set_num_threads(value)


def projection_options(fn):
    for option in reversed([
        click.option("--projection", default="factored:16x16", show_default=True,
                     help="factored:KINxKOUT, rademacher:K, gaussian:K, sjlt:K or none."),
        click.option("--format", "fmt", default="fp16", show_default=True, type=click.Choice(FORMATS),
                     help="Store precision."),
        click.option("--seed", default=0, show_default=True, type=int, help="Projection seed."),
        click.option("--module", "modules", multiple=True,
                     help="Module name pattern to capture (fnmatch; repeatable). Default: every linear "
                          "layer but the output head (LoRA adapters only, for a PEFT checkpoint)."),
    ]):
        fn = option(fn)
    return fn


# One default for `query` and `dda`: cosine per store. Gradient norms differ by orders of
# magnitude between examples (long or high-loss ones dominate a raw dot product) and between
# checkpoints (θ₀'s and early epochs' are larger), so with raw dots a weighted sum over
# checkpoints is decided by whichever has the largest norms; cosine makes each store's
# score comparable and keeps `query` over several stores equal to `dda` over them.
SIMILARITY_HELP = ("Per-store cosine (default: scale-free, so examples with large gradients and checkpoints "
                   "with large norms do not dominate, and query and dda rank alike) or raw dot products "
                   "(TracIn/the DDA paper's form).")


def similarity_option(fn):
    return click.option("--cosine/--dot", "normalize", default=True, show_default=True, help=SIMILARITY_HELP)(fn)


def text_report_options(fn):
    for option in reversed([
        click.option("--text/--no-text", "with_text", default=True, show_default=True,
                     help="Include the query's and each training example's prompt and response in the JSONL."),
        click.option("--html/--no-html", "with_html", default=True, show_default=True,
                     help="Also write a readable report.html: each query with its target span marked and its "
                          "top training examples with the words they share."),
    ]):
        fn = option(fn)
    return fn



def top_k_option(fn):
    return click.option("--top-k", default=50, show_default=True, type=click.IntRange(min=1),
                        help="Results per query.")(fn)


def weights_option(per: str, note: str = ""):
    """``--weight`` (repeatable), one per ``per`` option in its order; check with `one_weight_per`."""
    return click.option("--weight", "weights", multiple=True, type=float,
                        help=f"Weight of each {per}'s score, in {per} order (default: equal weights){note}.")


def one_weight_per(weights, per: str, values) -> list[float] | None:
    """The weights as a list (None when none were given); a usage error unless one per ``per`` value."""
    if weights and len(weights) != len(values):
        raise click.UsageError(f"give one --weight per {per} ({len(values)}), got {len(weights)}")
    return list(weights) or None


def trak_index_options(fn):
    """TRAK's ``--model-id`` and ``--array`` (they apply to trak indexes only)."""
    for option in reversed([
        click.option("--model-id", default=0, show_default=True, type=int, help="TRAK: the checkpoint's model_id."),
        click.option("--array", default="features", show_default=True, type=click.Choice(["features", "grads"]),
                     help="TRAK: finalized features or the projected gradients."),
    ]):
        fn = option(fn)
    return fn
