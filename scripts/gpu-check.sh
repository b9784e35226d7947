#!/usr/bin/env bash
# The one script for a lent GPU (H100/H200, fresh machine, repo copied, no network): checks
# the build dependencies, builds with -DPAELLA_CUDA=ON for sm_90 only, runs the CUDA-vs-CPU
# test and the benchmarks, each step under `timeout`, logs into $OUT (or ./gpu-check-out),
# and prints a short summary table last. Installs nothing.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$root/gpu-check-out}"
build="${BUILD:-$root/build-gpu}"
mkdir -p "$out"
export PATH="/usr/local/cuda/bin:$PATH"
declare -a summary

step() { # step NAME SECONDS CMD...
  local name="$1" secs="$2"; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${secs}s)"
  timeout --kill-after=10 "$secs" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 60 "$out/$name.log"
  local verdict=ok
  [[ $rc -eq 124 || $rc -eq 137 ]] && verdict=TIMEOUT
  [[ $rc -ne 0 && $verdict == ok ]] && verdict="FAIL(rc=$rc)"
  [[ $rc -eq 77 ]] && verdict=SKIPPED
  summary+=("$(printf '%-14s %-12s %5ds  %s' "$name" "$verdict" $((SECONDS - t0)) "$out/$name.log")")
  return $rc
}

# ---- dependencies (report, never install) ------------------------------------------------------
missing=()
for t in cmake ninja nvcc pkg-config gcc; do command -v "$t" >/dev/null || missing+=("$t"); done
# the configure step needs every library of the tree (worker/ and scheduler/ too)
for p in libopenblas-openmp-dev libjansson-dev libzip-dev zlib1g-dev libicu-dev libmsgpack-dev \
         libspng-dev libssl-dev libhiredis-dev librdkafka-dev libcurl4-openssl-dev libmicrohttpd-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true; nvcc --version | tail -1; } \
  | tee "$out/device.txt"
if ((${#missing[@]})); then
  echo "gpu-check: missing build dependencies: ${missing[*]}" | tee "$out/missing-deps.txt"
  echo "gpu-check: (no network here: install them into the image, scripts/install-deps.sh lists them); trying the build anyway"
fi

# ---- build (sm_90 only: one architecture compiles twice as fast) --------------------------------
step configure 120 cmake -S "$root" -B "$build" -G Ninja -DPAELLA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
step build 420 ninja -C "$build" test_cuda bench_cuda test_sampler test_ops test_golden_nets
built=$?

# ---- tests, then benchmarks (most important first: the budget may run out) ---------------------
if [[ $built -eq 0 ]]; then
  step test_cuda 300 env OMP_NUM_THREADS=16 "$build/tests/cuda/test_cuda"
  step test_cpu 120 ctest --test-dir "$build" -R "test_sampler|test_ops|test_golden_nets" --output-on-failure
  step bench_peak 60 "$build/bench/bench_cuda" peak
  step bench_paella 240 "$build/bench/bench_cuda" paella sample
  step bench_prior 120 "$build/bench/bench_cuda" prior
  step bench_vqgan 90 "$build/bench/bench_cuda" vqgan
  step bench_clip 150 "$build/bench/bench_cuda" clip
  step bench_t5 240 "$build/bench/bench_cuda" t5
  # a failing op table is easier to read again in fp32 GEMM mode (isolates bf16 rounding)
  if grep -q FAIL "$out/test_cuda.log" 2>/dev/null; then
    step test_cuda_fp32 300 env PAELLA_CUDA_PRECISION=fp32 OMP_NUM_THREADS=16 "$build/tests/cuda/test_cuda"
  fi
fi

echo
echo "=== gpu-check summary ($(cat "$out/device.txt" | head -1))"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
grep -h -E "FAIL|TFLOP/s|ms per image|passed, .* failed" "$out"/test_cuda.log "$out"/bench_*.log 2>/dev/null \
  | tee -a "$out/summary.txt"
