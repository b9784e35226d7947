#!/usr/bin/env bash
# Runs the test suite (or the ctest tests matching a regex) while `stress-ng --cpu N` keeps
# the CPUs busy beside it, then stops stress-ng: a test that depends on the order of
# independent events or on a short wall-clock window fails here first.
#   scripts/test-under-load.sh [-n RUNS] [-c CPUS] [-t TIMEOUT_S] [-b BUILD_DIR] [REGEX]
# Defaults: 1 run, 2 stress workers, a 900 s stress-ng timeout (a safety net: the script
# stops it when the tests end), ./build (built first when missing), every test.
# Exit status: 0 when every run passed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=1 cpus=2 timeout=900 dir=build
while getopts "n:c:t:b:" opt; do
  case $opt in
  n) runs=$OPTARG ;; c) cpus=$OPTARG ;; t) timeout=$OPTARG ;; b) dir=$OPTARG ;;
  *) echo "usage: $0 [-n RUNS] [-c CPUS] [-t TIMEOUT_S] [-b BUILD_DIR] [REGEX]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
regex=${1:-}
command -v stress-ng >/dev/null || { echo "stress-ng is missing: run scripts/install-deps.sh" >&2; exit 2; }
if [ ! -f "$dir/CTestTestfile.cmake" ]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build "$dir" || exit 1
fi

stress_pid=
stop_stress() {
  if [ -n "$stress_pid" ]; then
    kill "$stress_pid" 2>/dev/null # stress-ng stops its own workers on SIGTERM
    wait "$stress_pid" 2>/dev/null
    stress_pid=
  fi
}
trap stop_stress EXIT INT TERM

failed_runs=0
for run in $(seq 1 "$runs"); do
  stress-ng --cpu "$cpus" --timeout "$timeout" --quiet &
  stress_pid=$!
  start=$(date +%s)
  args=(--test-dir "$dir" --output-on-failure --timeout 900)
  [ -n "$regex" ] && args+=(-R "$regex")
  ctest "${args[@]}"
  rc=$?
  stop_stress
  echo "under load ($cpus stress-ng CPU workers), run $run/$runs: $([ $rc -eq 0 ] && echo passed || echo FAILED) in $(($(date +%s) - start)) s"
  [ $rc -eq 0 ] || failed_runs=$((failed_runs + 1))
done
echo "under load: $((runs - failed_runs)) of $runs runs passed"
[ "$failed_runs" -eq 0 ]
