#!/usr/bin/env bash
# GPU tests + the full benchmark in one call, on a machine with a CUDA GPU and no network.
#
#   bash bench/gpu.sh [OUT_DIR]          (OUT_DIR defaults to $OUT, else bench/results/tmp)
#
# Fits a 10-minute call: the test run is capped at TEST_LIMIT_S (default 200 s), the
# benchmark at BENCH_LIMIT_S (default 330 s), optional anchor builds at BUILD_LIMIT_S.
# The repo is not pip-installed there: fasttda runs from ./python via PYTHONPATH.
# Python packages missing on that machine travel as wheels in .whl/ (see bench/README.md);
# source distributions there (sjlt, fast_jl: CUDA extensions) are built against the
# machine's own torch, in the background while the tests run.
# Writes into OUT_DIR: tests.log, bench.log, the result JSON and plots.tar (few files,
# since only a handful come back from a lent machine). Copy the JSON to bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench/results/tmp}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
TEST_LIMIT_S="${TEST_LIMIT_S:-200}"
BENCH_LIMIT_S="${BENCH_LIMIT_S:-330}"
BUILD_LIMIT_S="${BUILD_LIMIT_S:-240}"
SUITES="${BENCH_SUITES:-all}"
DEVICE="${BENCH_DEVICE:-cuda}"   # cpu only to dry-run this script on a machine without a GPU
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET FASTTDA_BACKEND

SITE=/tmp/site
mkdir -p "$SITE"
if compgen -G ".whl/*.whl" >/dev/null; then
  echo "== installing carried wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
fi
export PYTHONPATH="$PWD/python:$SITE${PYTHONPATH:+:$PYTHONPATH}"

builds_pid=""
if compgen -G ".whl/*.tar.gz" >/dev/null; then
  echo "== building carried source distributions (CUDA extensions) in the background"
  (
    for sdist in .whl/*.tar.gz; do
      timeout "$BUILD_LIMIT_S" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target "$SITE" "$sdist" && echo "built $sdist" || echo "build of $sdist failed (reported as missing)"
    done
  ) >"$OUT_DIR/build.log" 2>&1 &
  builds_pid=$!
fi

echo "== machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 || true; } \
  | tee "$OUT_DIR/tests.log"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee -a "$OUT_DIR/tests.log"

echo "== GPU tests (limit ${TEST_LIMIT_S}s)"
per_test=""
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test="--timeout=120"
timeout "$TEST_LIMIT_S" "$PY" -m pytest -q -p no:cacheprovider $per_test tests 2>&1 | tee -a "$OUT_DIR/tests.log"
test_rc=${PIPESTATUS[0]}
echo "tests exit code: $test_rc" | tee -a "$OUT_DIR/tests.log"

if [ -n "$builds_pid" ]; then
  wait "$builds_pid"
  cat "$OUT_DIR/build.log"
fi

echo "== benchmark: --suite $SUITES --device $DEVICE (limit ${BENCH_LIMIT_S}s)"
plots="$OUT_DIR/plots"
mkdir -p "$plots"
timeout "$BENCH_LIMIT_S" "$PY" -m fasttda.cli bench --suite "$SUITES" --device "$DEVICE" --out "$plots" ${BENCH_ARGS:-} \
  2>&1 | tee "$OUT_DIR/bench.log"
bench_rc=${PIPESTATUS[0]}
mv "$plots"/*.json "$OUT_DIR"/ 2>/dev/null
(cd "$plots" && tar cf ../plots.tar ./*.png 2>/dev/null)
rm -rf "$plots"
echo "benchmark exit code: $bench_rc"
ls -l "$OUT_DIR"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
