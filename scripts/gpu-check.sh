#!/usr/bin/env bash
# The one check for a lent GPU (H100/H200): runs the prebuilt GPU bundle (scripts/gpu-bundle.sh;
# the GPU machine has CUDA but none of the Debian libraries and no registry, so nothing is built
# there), parity first, then the benchmarks, inside one overall time limit.
#
# FIRST, in a session that has a GPU, from the root of the checkout that session started in
# (the device tool sends that checkout, plus the carried paths):
#   bash scripts/gpu-bundle.sh gpu-bundle          (here; 30-75 s on the 2-core VM, 11 MB)
#   device tool: run  carry ["gpu-bundle"]  timeout_s 600  command "bash gpu-bundle/gpu-check.sh"
# Results come back from $OUT: summary.txt (one block per step, appended as each step ends) and
# gpu-check-logs.tar.gz (every log, the full parity table, device and build info; repacked
# after each step, so a run cut short still returns what it did).
#
# usage: gpu-check.sh [BUNDLE]   (default: the folder this script is in when that is a bundle,
#                                 else ./gpu-bundle); env OUT (default ./gpu-check-out),
#                                 GPU_CHECK_SECONDS (overall limit, default 540)
#
# Steps, each under `timeout` with its own budget, clipped to what the overall limit leaves;
# * = required (not finishing is a failure), the others run as time allows:
#   libs*          30 s  run.sh --libs: every library resolves (bundle / system / CUDA)
#   test_cuda*    170 s  CUDA vs CPU: op table, exhaustive Gumbel table, sampler tokens, the
#                        goldens, real-width networks at small spatial size
#   bench_b1*      60 s  bf16 GEMM peak, Paella forward 256 px and the 12-step CFG sample
#                        256 px (ms per image) at batch 1: the figure wanted first, on its own
#   bench_b4_16*  150 s  the same at batch 4 and 16
#   bench_prior 40 s, bench_vqgan 30 s, bench_clip 60 s, bench_t5 120 s: the optional steps
#                        take what is left (the required ones' budgets sum to 410 s), so time
#                        saved earlier goes to them; one cut by the overall limit reads CUT
#   test_cuda_fp32       only after a failed test_cuda, with what time is left (fp32 GEMMs
#                        isolate bf16 rounding); diagnostic
# Exit status: 0 every check passed; 1 a check failed or timed out; 2 no bundle / usage;
# 3 no CUDA device (test_cuda skipped: nothing was checked); 4 the bundle cannot run here (a
# library is missing: see the libs step).
set -uo pipefail
total="${GPU_CHECK_SECONDS:-540}"
# the outer limit (a backstop: every step has its own) ends even a hung tar or ldd
if [[ -z ${GPU_CHECK_INNER:-} ]]; then
  GPU_CHECK_INNER=1 exec timeout --kill-after=10 $((total + 20)) bash "${BASH_SOURCE[0]}" "$@"
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n ${1:-} ]]; then
  bundle="$1"
elif [[ -f $here/run.sh && -d $here/bin ]]; then
  bundle="$here"
else
  bundle="$PWD/gpu-bundle"
fi
if [[ ! -f $bundle/run.sh ]]; then
  echo "gpu-check: no GPU bundle at $bundle: build it first with  bash scripts/gpu-bundle.sh gpu-bundle" >&2
  exit 2
fi
bundle="$(cd "$bundle" && pwd)"
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out" || exit 2
logs=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")/gpu-check
trap 'rm -rf "$(dirname "$logs")"' EXIT
mkdir -p "$logs"
summary="$out/summary.txt"
archive="$out/gpu-check-logs.tar.gz"
deadline=$((SECONDS + total))
reserve=10 # seconds kept for the last summary lines and the archive
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
failed=0

pack() { # the archive holds every log so far (and the summary)
  cp "$summary" "$logs/"
  tar -C "$(dirname "$logs")" -czf "$archive.tmp" gpu-check && mv "$archive.tmp" "$archive"
}

# step NAME BUDGET required|optional CMD...: runs CMD under timeout, logs to NAME.log, appends
# its verdict and result lines to the summary, sets $verdict
step() {
  local name="$1" budget="$2" need="$3"
  shift 3
  local left=$((deadline - SECONDS - reserve)) limit t0=$SECONDS rc
  limit=$((budget < left ? budget : left))
  if ((limit < 5)); then
    verdict="NOT-RUN(no time)"
    printf '%-15s %-18s\n' "$name" "$verdict" | tee -a "$summary"
    [[ $need == required ]] && failed=1
    pack
    return
  fi
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) verdict=ok ;;
    77) verdict=NO-DEVICE ;;
    4) verdict=NO-CUDA-LIBS ;;
    124 | 137) verdict=TIMEOUT; ((limit < budget)) && verdict="CUT(overall limit)" ;;
    *) verdict="FAIL(rc=$rc)" ;;
  esac
  {
    printf '%-15s %-18s %4ds of %4ds\n' "$name" "$verdict" $((SECONDS - t0)) "$limit"
    # the result lines: the device, failed rows, pass counts, benchmark figures, errors
    grep -E 'device:|FAIL|CHECK failed|passed, [0-9]+ failed|TFLOP/s|ms per image|created and uploaded|naive GEMM|no cuBLASLt|SKIP|NOT FOUND|EXTRA|MISSING|rror' \
      "$logs/$name.log" | grep -vE '^run.sh: (lib[^ ]* <-|glibc)' | head -n 60 | sed 's/^/    /'
  } | tee -a "$summary"
  if [[ $verdict != ok && $verdict != NO-DEVICE ]]; then
    [[ $need == required || $verdict == TIMEOUT || $verdict == FAIL* ]] && failed=1
  fi
  pack
}

# ---- where we are -------------------------------------------------------------------------------
{
  echo "gpu-check $(date -u +%FT%TZ), bundle $bundle, limit ${total}s"
  sed 's/^/  /' "$bundle/BUILD-INFO" 2>/dev/null
  echo "  host $(uname -n), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), glibc $(getconf GNU_LIBC_VERSION | cut -d' ' -f2)"
  if command -v nvidia-smi >/dev/null; then
    echo "  gpu $(timeout 15 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
  else
    echo "  gpu: no nvidia-smi on PATH"
  fi
} | tee "$summary"
timeout 15 nvidia-smi >"$logs/nvidia-smi.log" 2>&1

# ---- libraries, then parity (if there is no device, nothing else can run) ----------------------
step libs 30 required bash "$bundle/run.sh" --libs
sed -n 's/^run.sh: /    /p' "$logs/libs.log" | tee -a "$summary" # where the CUDA libraries came from
if [[ $verdict != ok ]]; then
  echo "gpu-check: the bundle cannot run here (see libs above)" | tee -a "$summary"
  pack
  exit 4
fi
step test_cuda 170 required bash "$bundle/run.sh" test_cuda
parity=$verdict
if [[ $parity == NO-DEVICE || $parity == NO-CUDA-LIBS ]]; then
  echo "gpu-check: $parity: no check ran on a GPU; the benchmarks are not run" | tee -a "$summary"
  pack
  [[ $parity == NO-DEVICE ]] && exit 3
  exit 4
fi

# ---- benchmarks, most wanted first -----------------------------------------------------------
step bench_b1 60 required bash "$bundle/run.sh" bench_cuda --batch 1 paella sample
step bench_b4_16 150 required bash "$bundle/run.sh" bench_cuda --batch 4,16 paella sample
step bench_prior 40 optional bash "$bundle/run.sh" bench_cuda prior
step bench_vqgan 30 optional bash "$bundle/run.sh" bench_cuda vqgan
step bench_clip 60 optional bash "$bundle/run.sh" bench_cuda clip
step bench_t5 120 optional bash "$bundle/run.sh" bench_cuda t5
if [[ $parity != ok ]]; then
  step test_cuda_fp32 600 optional env PAELLA_CUDA_PRECISION=fp32 bash "$bundle/run.sh" test_cuda
fi

echo "gpu-check: $( ((failed)) && echo 'FAILED' || echo 'all checks passed') in $((SECONDS))s; logs in $archive" |
  tee -a "$summary"
pack
exit $((failed ? 1 : 0))
