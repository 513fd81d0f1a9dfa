"""Each command's imports are covered by the core dependencies plus its extra, and the demo
and hf extras hold nothing their commands do not import (build tools excepted).

Imports are read from the source (AST, including imports inside functions, which is how
fasttda keeps its imports lazy), following fasttda's own modules from the command's module.
An import inside ``try: ... except ImportError`` is optional and not counted.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# command -> its extra (None: core dependencies only)
# (a command not listed here is checked against the core and every extra together)
EXTRA_OF = {"demo": "demo", "index": "hf", "query": "hf", "dda": "hf", "store": None, "bench": "bench",
            "influcoder": "influcoder"}
# packages an extra may hold without importing them: build tools run as programs
TOOLS = {"ninja"}
# imports a command's code reaches but the command never runs, with the reason
NOT_RUN = {"demo": {"peft": "only for PEFT LoRA adapter directories; the demo saves full models"}}
STDLIB = set(sys.stdlib_module_names)


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requirements(extra: str | None) -> set[str]:
    project = _pyproject()["project"]
    names = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    todo = list(extras) if extra == "*" else [] if extra is None else [extra]
    while todo:
        for r in extras[todo.pop()]:
            if r.startswith("fasttda["):  # a self-reference: fasttda[triton,hf]
                todo += r[len("fasttda["):].split("]")[0].split(",")
            else:
                names.add(_name(r))
    return names


def _is_optional(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
                h.type is not None and any(n in ast.unparse(h.type) for n in ("ImportError", "ModuleNotFoundError", "Exception"))
                for h in node.handlers):
            return True
    return False


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


@functools.lru_cache(maxsize=None)
def command_imports(module: str) -> dict[str, str]:
    """Top-level third-party names imported by ``module`` and the fasttda modules it reaches,
    each with one module that imports it."""
    seen, todo, found = set(), [module], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                base = name.rsplit(".", node.level if not path.name == "__init__.py" else node.level - 1)[0]
                targets = [f"{base}.{node.module}" if node.module else base]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top == "fasttda":
                    if importlib.util.find_spec(top) and _module_file(target):
                        todo.append(target)
                elif top not in STDLIB and top != "__future__" and not _is_optional(node, parents):
                    found.setdefault(top, name)
    return found


def _distributions(import_name: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in md.packages_distributions().get(import_name, [import_name])}


def _commands() -> list[str]:
    from fasttda.cli import SUBCOMMANDS

    return sorted(SUBCOMMANDS)


@pytest.mark.parametrize("command", _commands())
def test_command_imports_are_in_its_extra(command):
    from fasttda.cli import SUBCOMMANDS

    allowed = _requirements(EXTRA_OF.get(command, "*"))
    module = SUBCOMMANDS[command][0]
    missing = {name: where for name, where in command_imports(module).items()
               if not (_distributions(name) & allowed) and name not in NOT_RUN.get(command, {})}
    assert not missing, (f"`fasttda {command}` imports {sorted(missing)} (from {sorted(set(missing.values()))}) "
                         f"but pyproject's [{EXTRA_OF.get(command, '*')}] extra and the core dependencies lack them")


@pytest.mark.parametrize("extra", ["demo", "hf"])
def test_extra_holds_nothing_its_commands_do_not_import(extra):
    from fasttda.cli import SUBCOMMANDS

    imported = set()
    for command in (c for c, e in EXTRA_OF.items() if e == extra):
        for name in command_imports(SUBCOMMANDS[command][0]):
            imported |= _distributions(name)
    unused = _requirements(extra) - _requirements(None) - imported - TOOLS
    assert not unused, f"[{extra}] holds {sorted(unused)}, which none of its commands imports"
