#!/usr/bin/env bash
# The project's test command: installs the dependencies, builds and runs every test twice
# (Release, then AddressSanitizer + UndefinedBehaviorSanitizer), then the bounded fuzzers.
# Ends with one summary line "total: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh || exit 1

passed=0
failed=0
run_suite() { # name, build dir, cmake args...
  local name=$1 dir=$2
  shift 2
  echo "== $name =="
  if ! cmake -S . -B "$dir" -G Ninja "$@" >/dev/null || ! cmake --build "$dir"; then
    echo "$name: build failed"
    failed=$((failed + 1))
    return
  fi
  local log
  log=$(mktemp)
  ctest --test-dir "$dir" --output-on-failure -j2 --timeout 900 2>&1 | tee "$log"
  local total fails
  total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$log")
  fails=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$log")
  if [ -z "$total" ]; then
    failed=$((failed + 1))
  else
    passed=$((passed + total - fails))
    failed=$((failed + fails))
  fi
  rm -f "$log"
}

run_suite "release" build -DCMAKE_BUILD_TYPE=Release
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite "asan+ubsan" build-asan -DCMAKE_BUILD_TYPE=Debug -DPAELLA_SANITIZE=ON

# run_check NAME TAIL CMD...: one pass or failure; on success the last TAIL lines of its log
run_check() {
  local name=$1 keep=$2 log
  shift 2
  echo "== $name =="
  log=$(mktemp)
  if "$@" >"$log" 2>&1; then
    tail -"$keep" "$log"
    passed=$((passed + 1))
  else
    tail -60 "$log"
    echo "$name: FAILED"
    failed=$((failed + 1))
  fi
  rm -f "$log"
}

# The CUDA backend is compiled (sm_80, sm_90) but cannot run here: no GPU on CI machines.
run_check "cuda build (compile only)" 1 bash scripts/cuda-build-check.sh build-cuda
# The GPU bundle (docs/gpu.md): built from this tree, every library proved with ldd (~75 s).
run_check "gpu bundle (scripts/gpu-bundle.sh --check)" 2 bash scripts/gpu-bundle.sh --check

if [ -f scripts/fuzz.sh ]; then
  echo "== fuzz (${FUZZ_SECONDS:-30} s per target) =="
  if FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash scripts/fuzz.sh; then
    passed=$((passed + 1))
  else
    echo "fuzz: FAILED"
    failed=$((failed + 1))
  fi
fi

echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
