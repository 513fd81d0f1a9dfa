"""One mechanism makes the top-level `kernels/` and `csrc/` the packages `fasttda.kernels` and
`fasttda.csrc`: in a source tree `fasttda/__init__.py` puts the tree's root on the package's
``__path__``; wheels and sdists carry them inside the package (setup.py). Wheels and sdists
are installed and checked by `.ci/check_wheel.sh`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fasttda

REPO = Path(__file__).resolve().parents[1]


def test_kernels_and_csrc_resolve_to_the_source_tree():
    import fasttda.csrc
    import fasttda.kernels
    from fasttda import _extension

    if "site-packages" in fasttda.__file__:  # an installed wheel: they ship inside the package
        root = Path(fasttda.__file__).parent
        assert Path(fasttda.kernels.__file__).parent == root / "kernels"
    else:
        assert Path(fasttda.kernels.__file__).resolve().parent == REPO / "kernels"
        assert Path(fasttda.csrc.__file__).resolve().parent == REPO / "csrc"
    assert _extension.CSRC == Path(fasttda.csrc.__file__).resolve().parent
    assert (_extension.CSRC / "project.cu").is_file()


def test_pythonpath_python_without_any_install(tmp_path):
    """`PYTHONPATH=python` (how bench/gpu.sh runs): no site-packages at all (-S), so no
    editable-install finder can help; only fasttda/__init__.py's mechanism is at work."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fasttda.kernels, fasttda.csrc; "
            "print(fasttda.kernels.__file__); print(fasttda.csrc.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(REPO / "python")], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.split()
    assert [Path(p).resolve().parent for p in out] == [REPO / "kernels", REPO / "csrc"]
