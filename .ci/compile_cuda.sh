#!/usr/bin/env bash
# Compile every csrc/*.cu for Hopper (sm_90a) and Ampere (sm_80), object files only.
# The .cu files include no torch headers (bindings live in cuda_bindings.cpp), so this
# needs nothing but nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
shopt -s nullglob
for src in csrc/*.cu; do
  echo "nvcc $src"
  nvcc -std=c++17 -O3 -Icsrc -c "$src" -o "$out/$(basename "$src").o" \
    -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80
done
rm -rf "$out"
