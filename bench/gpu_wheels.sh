#!/usr/bin/env bash
# Download, here (with network), exactly the wheels the lent GPU machine lacks into .whl/,
# which the device tool's `carry` takes along and bench/gpu.sh installs there:
#
#   bash bench/gpu_wheels.sh            then: run(command="bash bench/gpu.sh", carry=[".whl"])
#
# The GPU machine (Python 3.12, torch 2.11, triton 3.6, no network) already has
# transformers, peft, scipy, numpy, tqdm, attrs, typing-extensions, matplotlib, pytest,
# pytest-xdist, pytest-timeout, ninja and pybind11 (see /work/.library/device/KINDS.md).
# It lacks: rank-bm25 (demo), traker and dattri (bench anchors), and jsonschema with the
# dependencies it lacks (jsonschema-specifications, referencing, rpds-py: a binary wheel,
# so it is fetched for cp312 manylinux). One version of each; the Requires-Dist lines of
# what was fetched are printed so a new dependency shows up.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
mkdir -p "$DEST"
exclude="$(git rev-parse --git-path info/exclude 2>/dev/null || true)"
if [ -n "$exclude" ] && ! grep -qx '/.whl/' "$exclude" 2>/dev/null; then echo '/.whl/' >>"$exclude"; fi
PACKAGES=(rank-bm25 traker dattri jsonschema jsonschema-specifications referencing rpds-py)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
  --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" "${PACKAGES[@]}"
for w in "$DEST"/*.whl; do
  echo "== $(basename "$w")"
  unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
du -sh "$DEST"   # counts towards the 64 MiB that travels with a run
