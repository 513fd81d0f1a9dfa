"""The README's promises, checked as a newcomer would meet them.

* Every ```python block runs exactly as printed, in a fresh interpreter, in an empty
  working directory: nothing is injected, nothing is patched. A block that needs the
  user's own files is preceded by ``<!-- readme-test: skip (reason) -->``; it is still
  compiled (a syntax error fails), and the test reports it as skipped with its reason.
* The README's two top commands are the ones CI (``.ci/run``) performs.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip \((?P<reason>[^)]+)\) -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


def blocks(text: str) -> list[dict]:
    """Fenced blocks in order: language, first line number, code, and the skip reason of a
    ``readme-test: skip`` marker on the nearest non-blank line above the fence."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group("lang"):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        above = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.match(above)
        out.append({"lang": m.group("lang"), "line": i + 1, "code": "\n".join(lines[i + 1: j]) + "\n",
                    "skip": skip.group("reason") if skip else None})
        i = j + 1
    return out


PYTHON_BLOCKS = [b for b in blocks(README.read_text()) if b["lang"] == "python"]


def test_the_readme_has_python_blocks_and_the_first_one_runs():
    assert PYTHON_BLOCKS, "no ```python block found in README.md"
    assert PYTHON_BLOCKS[0]["skip"] is None, "the README's first python snippet must run as printed"


def test_skip_markers_are_well_formed_and_placed():
    text = README.read_text()
    markers = [(n + 1, line) for n, line in enumerate(text.splitlines()) if "readme-test" in line]
    marked = {b["line"] for b in PYTHON_BLOCKS if b["skip"]}
    for line_no, line in markers:
        assert SKIP.match(line.strip()), f"README.md:{line_no}: malformed marker {line!r}"
    assert len(markers) == len(marked), "every readme-test marker must sit right above a ```python block"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"README.md:{b['line']}" for b in PYTHON_BLOCKS])
def test_python_block_runs_as_printed(block, tmp_path):
    compile(block["code"], f"README.md:{block['line']}", "exec")  # even a skipped block must parse
    if block["skip"]:
        pytest.skip(f"README.md:{block['line']}: {block['skip']}")
    script = tmp_path / "readme_block.py"
    script.write_text(block["code"])
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README.md:{block['line']} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def _top_commands() -> list[list[str]]:
    """The README's first ```bash block: one list of ``&&``-joined commands per line."""
    first = next(b for b in blocks(README.read_text()) if b["lang"] == "bash")
    return [[c.strip() for c in line.split("&&")] for line in first["code"].splitlines() if line.strip()]


def _ci_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_readme_test_command_is_what_ci_runs():
    demo, dev = _top_commands()
    ci = _ci_lines()
    for command in dev:  # the set-up and the test command, verbatim
        assert command in ci, f"README command {command!r} is not a line of .ci/run"
    # the demo line installs with the same pinned torch as CI, then runs the demo command
    pin = next(w for w in shlex.split(dev[0]) if w.startswith("torch=="))
    assert pin in shlex.split(demo[0]) and shlex.split(demo[0])[-1] == ".[demo]", demo[0]
    assert shlex.split(demo[1])[:2] == ["fasttda", "demo"], demo[1]


def test_readme_extras_exist():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for line in _top_commands():
        for word in shlex.split(line[0]):
            m = re.fullmatch(r"\.\[(.+)\]", word)
            if m:
                assert set(m.group(1).split(",")) <= set(extras), word
