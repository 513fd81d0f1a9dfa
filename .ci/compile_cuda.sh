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

# The torch bindings: a syntax check against this torch's headers (a CPU build of torch
# ships them too), so a binding that cannot compile fails here rather than on a GPU.
python3 - <<'PY'
import subprocess, sys, sysconfig
from torch.utils import cpp_extension
includes = [f"-I{p}" for p in [sysconfig.get_paths()["include"], *cpp_extension.include_paths()]]
cmd = ["g++", "-std=c++20", "-fsyntax-only", "-w", "-DTORCH_EXTENSION_NAME=fasttda_check", *includes,
       "csrc/cuda_bindings.cpp"]
print("g++ -fsyntax-only csrc/cuda_bindings.cpp")
sys.exit(subprocess.run(cmd).returncode)
PY
