#!/usr/bin/env bash
# GPU tests and every benchmark suite in ONE call of at most 9 minutes, whatever fails.
#
#   bash bench/gpu.sh [--dry-run] [OUT_DIR]     (OUT_DIR: default $OUT, else bench/results/tmp)
#
# Made for the lent GPU machine (no network; the repo runs from ./python via PYTHONPATH;
# missing packages travel as wheels in .whl/, see bench/gpu_wheels.sh). Timeline, each
# stage with its own timeout, none started once the overall deadline (TOTAL_S) is near:
#   t=0  the CUDA extension starts building in the background              -> build.log
#        carried wheels (.whl/*.whl) are installed into a temp site-packages
#        GPU-relevant tests, in parallel (pytest -n, per-test timeout)      -> tests.log
#        the CUDA-extension tests, once the build has finished              -> tests.log
#        one process per bench suite, each with its own timeout; its JSON is
#        merged into bench-<device>.json the moment the suite ends          -> bench.log
#   end  summary.txt: one line per stage (ok / failed / timeout / skipped) and the wall time
# OUT_DIR holds at most 8 files: summary.txt tests.log build.log bench.log
# bench-<device>.json plots.tar (copy the JSON to bench/results/).
#
# --dry-run: the same code path on a machine without a GPU (CI runs it): --device cpu,
# bench --quick, a few tests, limits that end it within DRY_TOTAL_S (110 s); it checks the
# merged JSON against the schema and the file count. Exit status: 0 when every test passed
# and every suite ran (a stage cut by its timeout counts as a failure, except in --dry-run
# where it is reported only, since CI machines' speed varies; a crash or failed test counts).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-bench/results/tmp}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fasttda-gpu.XXXXXX")"
SITE="$WORK/site"
mkdir -p "$SITE" "$WORK/plots"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET FASTTDA_BACKEND

if [ "$DRY" = 1 ]; then
  TOTAL_S="${DRY_TOTAL_S:-110}"; TEST_LIMIT_S="${TEST_LIMIT_S:-30}"; PER_TEST_S="${PER_TEST_S:-25}"
  BUILD_LIMIT_S="${BUILD_LIMIT_S:-30}"; SUITE_LIMIT_S="${SUITE_LIMIT_S:-30}"; EXT_TEST_S=20; RESERVE_S=50
  DEVICE=cpu; QUICK="--quick"; EXT_KIND=cuda
  TESTS="${GPU_TESTS:-tests/test_dispatch.py::test_cuda_asked_for_a_kind_it_lacks_raises_never_switches tests/test_host_syncs.py::test_background_stage_runs_ahead_in_order_on_another_thread}"
  EXT_TESTS="${EXT_TESTS:-tests/ops/test_project_cuda.py}"
  export BENCH_QUICK_FLAG=1
  export FASTTDA_NO_BUILD=1  # the bench suites' C++ CPU kernels: no JIT build in a smoke run (as CI's bench test)
else
  TOTAL_S="${TOTAL_S:-530}"; TEST_LIMIT_S="${TEST_LIMIT_S:-200}"; PER_TEST_S="${PER_TEST_S:-120}"
  BUILD_LIMIT_S="${BUILD_LIMIT_S:-240}"; SUITE_LIMIT_S="${SUITE_LIMIT_S:-120}"; EXT_TEST_S=60; RESERVE_S=200
  DEVICE="${BENCH_DEVICE:-cuda}"; QUICK="${BENCH_QUICK:-}"; EXT_KIND=cuda
  [ -n "$QUICK" ] && export BENCH_QUICK_FLAG=1
  TESTS="${GPU_TESTS:-tests/ops tests/capture tests/test_scoring.py tests/test_host_syncs.py tests/test_dispatch.py tests/test_precondition.py}"
  EXT_TESTS="${EXT_TESTS:-tests/ops/test_project_cuda.py}"
fi
SUITES="${BENCH_SUITES:-score project quantize factored store capture e2e influcoder}"
DEADLINE=$((START + TOTAL_S))
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
failed=0

left() { echo $((DEADLINE - $(date +%s))); }
note() { printf '%-28s %-9s %s\n' "$1" "$2" "${3:-}" | tee -a "$SUMMARY"; }
# limit_for WANTED RESERVE: seconds a stage may take: WANTED, cut so RESERVE seconds remain.
limit_for() { local l=$(( $(left) - $2 )); [ "$l" -gt "$1" ] && l=$1; echo "$l"; }
status_of() { case "$1" in 0) echo ok;; 124|137) echo timeout;; *) echo "failed($1)";; esac; }
# check RC: a stage's exit status counts as a failure; in --dry-run a timeout only shows in
# the summary (CI machines' speed varies; the dry-run proves the mechanics, not the speed).
check() { case "$1" in 0) ;; 124|137) [ "$DRY" = 1 ] || failed=1;; *) failed=1;; esac; }

export PYTHONPATH="$REPO/python:$SITE${PYTHONPATH:+:$PYTHONPATH}" MACHINE_JSON="$WORK/machine.json"

# -- t=0: the CUDA extension builds in the background --------------------------------------
(
  echo "== $EXT_KIND extension build (limit ${BUILD_LIMIT_S}s)"
  timeout -k 5 "$BUILD_LIMIT_S" "$PY" -c "
import time; t = time.time()
from fasttda import _extension
try:
    _extension.load('$EXT_KIND')
except Exception as exc:
    print('unavailable:', exc); raise SystemExit(3)
print(f'built in {time.time() - t:.0f} s')"
) >"$OUT_DIR/build.log" 2>&1 &
build_pid=$!

# -- carried wheels (seconds), then source distributions in the background ----------------
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >>"$OUT_DIR/build.log" 2>&1 && note wheels ok "$(ls .whl/*.whl | wc -l) carried" || { note wheels failed; failed=1; }
fi
sdist_pid=""
if compgen -G ".whl/*.tar.gz" >/dev/null; then  # CUDA-extension anchors (fast_jl, sjlt): built against this torch
  ( for sdist in .whl/*.tar.gz; do
      timeout -k 5 "$BUILD_LIMIT_S" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target "$SITE" "$sdist" && echo "built $sdist" || echo "build of $sdist failed (reported as missing)"
    done ) >"$WORK/sdist.log" 2>&1 &
  sdist_pid=$!
fi

( echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 || true
  timeout -k 5 60 "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
  echo "cores: $(nproc)"; uptime
  timeout -k 5 60 "$PY" -c "import json, sys; from fasttda.bench.machine import machine_info; json.dump(machine_info('$DEVICE'), open('$WORK/machine.json', 'w'))"
) >"$WORK/machine.log" 2>&1 &
machine_pid=$!
: >"$OUT_DIR/tests.log"

# -- GPU-relevant tests first, in parallel ---------------------------------------------------
pytest_args=(-q -p no:cacheprovider -rfE)
if "$PY" -c "import xdist" 2>/dev/null; then
  workers=$(nproc); [ "$workers" -gt 8 ] && workers=8
  pytest_args+=(-n "$workers")
fi
"$PY" -c "import pytest_timeout" 2>/dev/null && pytest_args+=("--timeout=$PER_TEST_S")
ignore=(); for t in $EXT_TESTS; do ignore+=("--ignore=$t"); done
limit=$(limit_for "$TEST_LIMIT_S" "$RESERVE_S")
[ "$limit" -lt 10 ] && limit=10  # the tests come first: they always get a chance
t0=$(date +%s)
echo "== tests: ${pytest_args[*]} $TESTS (limit ${limit}s)" >>"$OUT_DIR/tests.log"
# shellcheck disable=SC2086
timeout -k 5 "$limit" "$PY" -m pytest "${pytest_args[@]}" "${ignore[@]}" $TESTS >>"$OUT_DIR/tests.log" 2>&1
rc=$?; note tests "$(status_of $rc)" "$(( $(date +%s) - t0 ))s: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|skipped)' "$OUT_DIR/tests.log" | tail -1)"
check "$rc"

# -- the extension's own tests, once its build is done -------------------------------------
wait "$build_pid"; brc=$?
note "$EXT_KIND extension build" "$(status_of $brc)" "$(tail -1 "$OUT_DIR/build.log")"
if [ "$brc" != 0 ] && [ "$DRY" = 0 ]; then failed=1; fi
limit=$(limit_for "$EXT_TEST_S" $((RESERVE_S - EXT_TEST_S)))
if [ "$limit" -ge 10 ]; then
  t0=$(date +%s)
  echo "== extension tests: $EXT_TESTS (limit ${limit}s)" >>"$OUT_DIR/tests.log"
  # shellcheck disable=SC2086
  timeout -k 5 "$limit" "$PY" -m pytest -q -p no:cacheprovider -rfEs $EXT_TESTS >>"$OUT_DIR/tests.log" 2>&1
  rc=$?; note "extension tests" "$(status_of $rc)" "$(( $(date +%s) - t0 ))s"
  check "$rc"
else
  note "extension tests" skipped "no time left"; check 124
fi
if [ -n "$sdist_pid" ]; then wait "$sdist_pid"; cat "$WORK/sdist.log" >>"$OUT_DIR/build.log"; fi

# -- one process per bench suite; its JSON merged the moment it ends -----------------------
RESULT="$OUT_DIR/bench-$DEVICE.json"
rm -f "$RESULT"
set -- $SUITES
n_left=$#
for suite in $SUITES; do
  share=$(( ($(left) - 10) / n_left ))
  [ "$share" -gt "$SUITE_LIMIT_S" ] && share=$SUITE_LIMIT_S
  n_left=$((n_left - 1))
  if [ "$share" -lt 5 ]; then
    note "bench $suite" skipped "no time left"
    "$PY" bench/gpu_merge.py "$RESULT" "$WORK/$suite" "$suite" skipped 0 "$DEVICE" >>"$OUT_DIR/bench.log" 2>&1
    [ "$DRY" = 1 ] || failed=1
    continue
  fi
  t0=$(date +%s)
  echo "== suite $suite (limit ${share}s)" >>"$OUT_DIR/bench.log"
  # shellcheck disable=SC2086
  timeout -k 5 "$share" "$PY" -m fasttda.cli bench --suite "$suite" --device "$DEVICE" $QUICK \
    --out "$WORK/$suite" >>"$OUT_DIR/bench.log" 2>&1
  rc=$?
  "$PY" bench/gpu_merge.py "$RESULT" "$WORK/$suite" "$suite" "$(status_of $rc)" "$share" "$DEVICE" >>"$OUT_DIR/bench.log" 2>&1
  mrc=$?
  note "bench $suite" "$(status_of $rc)" "$(( $(date +%s) - t0 ))s"
  if [ "$mrc" != 0 ]; then failed=1; else check "$rc"; fi
  mv "$WORK/$suite"/*.png "$WORK/plots/" 2>/dev/null
  (cd "$WORK/plots" && compgen -G "*.png" >/dev/null && tar cf "$OUT_DIR/plots.tar" ./*.png)
done

# -- what came back -----------------------------------------------------------------------
wait "$machine_pid"; cat "$WORK/machine.log" "$OUT_DIR/tests.log" >"$WORK/t.log" && mv "$WORK/t.log" "$OUT_DIR/tests.log"
n_files=$(find "$OUT_DIR" -type f | wc -l)
if [ "$n_files" -gt 8 ]; then note "files in OUT_DIR" failed "$n_files > 8"; failed=1; fi
if [ "$DRY" = 1 ]; then  # the merged JSON must validate, and name every suite
  "$PY" -c "
import json, sys
from fasttda.bench import harness
report = json.load(open('$RESULT'))
harness.validate(report)
missing = set('$SUITES'.split()) - set(report['suites'])
assert not missing, f'suites missing from the merged JSON: {missing}'
" >>"$OUT_DIR/bench.log" 2>&1 && note "merged JSON" ok "validates; every suite listed" || { note "merged JSON" failed; failed=1; }
fi
rm -rf "$WORK"
note "wall time" "$(( $(date +%s) - START ))s" "of ${TOTAL_S}s; files: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
echo "== summary"; cat "$SUMMARY"
echo "== failures (tests.log)"; grep -E "^(FAILED|ERROR) " "$OUT_DIR/tests.log" | head -40
exit "$failed"
