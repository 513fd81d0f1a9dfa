"""Helpers for the pytest-benchmark suites in bench/."""
import importlib

import pytest


def op_or_skip(module: str, attr: str):
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"{module}.{attr} not in this build: {exc}")
