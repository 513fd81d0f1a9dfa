#!/usr/bin/env bash
# `python -m build` gives a wheel and an sdist; each installs into a fresh virtual
# environment (reusing this machine's torch through --system-site-packages, since a fresh
# torch would be gigabytes) and runs an op from outside the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
for artifact in "$work"/dist/*.whl "$work"/dist/*.tar.gz; do
  echo "install $(basename "$artifact") into a fresh venv"
  rm -rf "$work/venv"
  python3 -m venv --system-site-packages "$work/venv"
  "$work/venv/bin/pip" install -q --no-deps "$artifact"
  (cd "$work" && FASTTDA_NO_BUILD=1 "$work/venv/bin/python" -c "
import fasttda, torch
assert 'site-packages' in fasttda.__file__, fasttda.__file__
from fasttda import _extension
assert (_extension.CSRC / 'project.cu').is_file(), 'CUDA sources missing from the package'
assert (_extension.CSRC / 'cpu' / 'score.cpp').is_file(), 'C++ CPU sources missing from the package'
import fasttda.kernels, os
assert os.path.dirname(fasttda.kernels.__file__) == os.path.join(os.path.dirname(fasttda.__file__), 'kernels'), fasttda.kernels.__file__
assert os.path.isfile(os.path.join(os.path.dirname(fasttda.kernels.__file__), 'project.py')), 'Triton kernels missing'
print(fasttda.ops.project(torch.randn(2, 100), 8).shape)")
done
