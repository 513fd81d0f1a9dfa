"""Which ``@triton.jit`` functions in `fasttda.kernels` are kernels, and what each promises.

A jit function that another jit function calls is a device helper (inlined into its
callers); every other one is a kernel, launched from Python, and must be reached by the
launch list. Each kernel's docstring states its numerics on one line,
``Numerics: dot=<ieee|tf32x3|tf32x3+16bit|none>; div=<rn|none>.``, which `check_promise`
compares with what was compiled.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path


def kernel_dir() -> Path:
    import fasttda.kernels

    return Path(fasttda.kernels.__file__).parent


def _is_jit(dec: ast.expr) -> bool:
    node = dec.func if isinstance(dec, ast.Call) else dec
    return isinstance(node, ast.Attribute) and node.attr == "jit" and getattr(node.value, "id", "") == "triton"


def jit_functions(root: Path | None = None) -> dict[str, dict]:
    """``{name: {"file", "doc", "calls"}}`` for every ``@triton.jit`` function under ``root``."""
    out = {}
    for path in sorted((root or kernel_dir()).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(_is_jit(d) for d in node.decorator_list):
                calls = {c.func.id if isinstance(c.func, ast.Name) else getattr(c.func, "attr", "")
                         for c in ast.walk(node) if isinstance(c, ast.Call)}
                out[node.name] = {"file": path.name, "doc": ast.get_docstring(node) or "", "calls": calls}
    return out


def kernels(root: Path | None = None) -> dict[str, dict]:
    """The jit functions that no other jit function calls: the launched kernels."""
    funcs = jit_functions(root)
    called = set().union(*(f["calls"] for f in funcs.values())) if funcs else set()
    return {name: f for name, f in funcs.items() if name not in called}


def promise(doc: str) -> tuple[str, str] | None:
    m = re.search(r"Numerics: dot=([\w+]+); div=(\w+)\.", doc)
    return (m.group(1), m.group(2)) if m else None


def check_promise(doc: str, entry: dict) -> list[str]:
    """Breaches of the docstring's numerics promise by the compiled code (empty when kept)."""
    p = promise(doc)
    if p is None:
        return ["docstring states no 'Numerics: dot=...; div=....' line"]
    dot, div = p
    out = []
    precisions = set(entry["dot_precision"]) - {"none"}
    tf32_mma = any("tf32" in m for m in entry["matrix"])
    allowed = {"none": set(), "ieee": {"ieee"}, "tf32x3": {"tf32x3"}, "tf32x3+16bit": {"tf32x3", "16bit"},
               "tf32": {"tf32"}}.get(dot)
    if allowed is None:
        out.append(f"unknown dot promise {dot!r}")
    elif not precisions <= allowed:
        out.append(f"promises dot={dot} but compiles dots as {sorted(precisions)}")
    elif dot in ("none", "ieee") and (tf32_mma or any(m != "fma" for m in entry["matrix"])):
        out.append(f"promises dot={dot} but the PTX has {entry['matrix']}")
    elif precisions & {"tf32", "tf32x3"} and not tf32_mma:
        out.append(f"the IR has {sorted(precisions)} dots but the PTX has no tf32 mma ({entry['matrix']})")
    divisions = set(entry["division"]) - {"none"}
    if div == "none" and divisions:
        out.append(f"promises div=none but the PTX divides with {sorted(divisions)}")
    if div == "rn" and divisions != {"rn"}:
        out.append(f"promises div=rn (IEEE) but the PTX divides with {sorted(divisions) or 'nothing'}")
    return out
