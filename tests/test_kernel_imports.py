"""Kernel files import only triton, torch, the standard library and torch-only leaf modules."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEAVES = {"fasttda.formats", "fasttda.topk"}  # torch-only modules shared with ops, store and scoring
THIRD_PARTY = {"torch", "triton"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            out.add(node.module)
    return out


def allowed(name: str, leaves: set[str]) -> bool:
    top = name.split(".")[0]
    return (top in THIRD_PARTY or top in sys.stdlib_module_names or name in leaves
            or name.startswith("fasttda.kernels."))


def test_every_kernel_file_imports_only_triton_torch_and_leaves():
    files = sorted((ROOT / "kernels").glob("*.py"))
    assert len(files) >= 7
    bad = {f.name: sorted(m for m in imports(f) if not allowed(m, LEAVES)) for f in files}
    assert {f: m for f, m in bad.items() if m} == {}


def test_leaf_modules_import_only_torch():
    for leaf in sorted(LEAVES) + ["fasttda.kernels._launch"]:
        parts = leaf.split(".")
        path = ROOT / ("kernels" if parts[1] == "kernels" else "python/fasttda") / f"{parts[-1]}.py"
        bad = sorted(m for m in imports(path) if not allowed(m, set()) or m.startswith("fasttda") or m == "triton")
        assert bad == [], f"{leaf} imports {bad}"


def test_the_op_layer_does_not_merge_its_own_topk():
    """One running top-k merge (fasttda.topk) for the reference, the Triton launcher and scoring."""
    for rel in ("python/fasttda/ops/score.py", "python/fasttda/scoring.py", "kernels/score.py"):
        src = (ROOT / rel).read_text()
        assert "def merge_topk" not in src and "def pack_keys" not in src and "def chunk_rows" not in src, rel
        assert "fasttda.topk" in src, rel
