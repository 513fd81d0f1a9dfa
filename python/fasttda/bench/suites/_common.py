"""Helpers the suites share: finding an op that may not exist yet, and its backends."""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

from fasttda.bench.anchors import AnchorMissing


def fasttda_attr(module: str, attr: str):
    """``module.attr`` from fasttda, or `AnchorMissing` when this build does not have it."""
    try:
        value = getattr(importlib.import_module(module), attr)
        if inspect.ismodule(value):  # a submodule of the same name shadowing a lazy export
            value = getattr(value, attr)
        return value
    except (ImportError, AttributeError) as exc:
        raise AnchorMissing(f"{module}.{attr} is not in this fasttda build ({type(exc).__name__}: {exc})") from exc


def candidate_backends(ctx) -> list[str]:
    """fasttda backends worth timing on the bench device ('auto' is what users get)."""
    return ["triton", "cuda"] if ctx.device == "cuda" else ["reference", "cpp"]


def usable_backends(ctx, suite: str, name: str, params: dict, probe: Callable[[str], object],
                    prefix: str) -> tuple[list[str], list[dict]]:
    """Backends for which ``probe(backend)`` (a tiny call) runs; the others as missing cases."""
    usable, missing = [], []
    for backend in candidate_backends(ctx):
        try:
            probe(backend)
            usable.append(backend)
        except Exception as exc:
            missing.append(ctx.missing(suite=suite, name=name, impl=f"{prefix}[{backend}]", params=params,
                                       reason=f"{type(exc).__name__}: {exc}"[:500]))
    return usable, missing


def missing_all(ctx, suite: str, name: str, impls: list[str], params: dict, reason: str) -> list[dict]:
    return [ctx.missing(suite=suite, name=name, impl=impl, params=params, reason=reason) for impl in impls]
