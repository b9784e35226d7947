#!/usr/bin/env bash
# scripts/gpu-check.sh's verdicts and exit codes without a GPU: a fake bundle whose run.sh
# plays test_cuda and bench_cuda (pass, fail, no device, hang, missing library) as told by
# FAKE_* variables. Checks the exit status, the summary written step by step, and the one
# archive of logs. (The real run.sh and bundle are proved by scripts/gpu-bundle.sh --check.)
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work=$(mktemp -d "${TMPDIR:-/tmp}/test_gpu_check.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
check() { # check DESCRIPTION CONDITION...
  local what="$1"
  shift
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $what" >&2
  fi
}

bundle="$work/bundle"
mkdir -p "$bundle/bin"
cp "$root/scripts/gpu-check.sh" "$bundle/gpu-check.sh"
echo "commit fake" >"$bundle/BUILD-INFO"
cat >"$bundle/run.sh" <<'EOF'
#!/usr/bin/env bash
echo "run.sh: libcublasLt.so.13 <- /fake/cuda/lib64" >&2
case "${1:-}" in
  --libs)
    [[ ${FAKE_LIBS:-ok} == ok ]] && { echo "  bundle   libfoo.so.1 /tmp/x"; exit 0; }
    echo "  MISSING  libfoo.so.1 not found"; exit 1 ;;
  test_cuda)
    case "${PAELLA_CUDA_PRECISION:-}${FAKE_TEST_CUDA:-ok}" in
      *skip) echo "SKIP: no CUDA device"; exit 77 ;;
      fp32*) echo "device: Fake GPU; GEMM precision fp32"; echo "1 passed, 0 failed"; exit 0 ;;
      fail) echo "device: Fake GPU; GEMM precision bf16"
            echo "linear(gelu)   [256, 5120]   3.000e-02   2.0e-02   FAIL"; echo "40 passed, 1 failed"; exit 1 ;;
      *) echo "device: Fake GPU; GEMM precision bf16"; echo "41 passed, 0 failed"; exit 0 ;;
    esac ;;
  bench_cuda) # bench_cuda [--batch LIST] NAME...: one line per name and batch size
    shift
    batch=1,4,16
    [[ ${1:-} == --batch ]] && { batch=$2; shift 2; }
    [[ -n ${FAKE_HANG:-} && " $* " == *" $FAKE_HANG "* ]] && exec sleep 1000
    echo "bf16 GEMM peak      700.0 TFLOP/s (cuBLASLt bf16 8192^3, this run)"
    for name; do
      for b in ${batch//,/ }; do
        echo "fake $name 256px   batch $b   12.00 ms   300.0 TFLOP/s   42.9% of bf16 peak"
      done
    done
    exit 0 ;;
esac
exit 2
EOF
chmod +x "$bundle/run.sh" "$bundle/gpu-check.sh"

# run_check NAME [VAR=VALUE...]: runs the check with a fresh $OUT, sets rc and sum (the summary)
run_check() {
  local name="$1"
  shift
  out="$work/$name"
  mkdir -p "$out"
  env OUT="$out" "$@" bash "$bundle/gpu-check.sh" >"$work/$name.stdout" 2>&1
  rc=$?
  sum=$(cat "$out/summary.txt" 2>/dev/null)
}
has() { grep -qE "$1" <<<"$sum"; }
in_archive() { tar -tzf "$out/gpu-check-logs.tar.gz" 2>/dev/null | grep -qx "gpu-check/$1"; }

run_check all_pass
check "all pass: exit 0" test "$rc" -eq 0
check "all pass: every step ok" bash -c '[[ $(grep -cE "^(libs|test_cuda|bench_[a-z0-9_]+) +ok " <<<"$1") -eq 8 ]]' _ "$sum"
check "all pass: benchmark figures in the summary" has "fake sample 256px +batch 1 +12.00 ms"
# batch 1 is a step of its own, before the larger batches
check "all pass: batch 1 first, on its own" bash -c '[[ $(grep -oE "^bench_[a-z0-9_]+|batch [0-9]+" <<<"$1" | head -n 6 | tr "\n" " ") == "bench_b1 batch 1 batch 1 bench_b4_16 batch 4 batch 16 " ]]' _ "$sum"
check "all pass: the CUDA library source in the summary" has "libcublasLt.so.13 <- /fake/cuda/lib64"
check "all pass: no fp32 rerun" bash -c '! grep -q test_cuda_fp32 <<<"$1"' _ "$sum"
check "all pass: one archive with every log" bash -c 'for f in libs test_cuda bench_b1 bench_b4_16 bench_prior bench_vqgan bench_clip bench_t5; do tar -tzf "$1" | grep -qx "gpu-check/$f.log" || exit 1; done' _ "$out/gpu-check-logs.tar.gz"
check "all pass: only the summary and the archive in OUT" bash -c '[[ $(ls "$1" | wc -l) -eq 2 ]]' _ "$out"

chmod -x "$bundle/run.sh" "$bundle/gpu-check.sh" # a copy that lost its mode bits
run_check no_mode_bits
check "no mode bits: exit 0" test "$rc" -eq 0
chmod +x "$bundle/run.sh" "$bundle/gpu-check.sh"

run_check no_device FAKE_TEST_CUDA=skip
check "no device: exit 3" test "$rc" -eq 3
check "no device: said so" has "^test_cuda +NO-DEVICE"
check "no device: benchmarks not run" bash -c '! grep -q "^bench_" <<<"$1"' _ "$sum"
check "no device: archive holds the test log" in_archive test_cuda.log

run_check parity_fail FAKE_TEST_CUDA=fail
check "failed parity: exit 1" test "$rc" -eq 1
check "failed parity: verdict and the failing row" has "^test_cuda +FAIL\(rc=1\)"
check "failed parity: failing row in the summary" has "linear\(gelu\).*FAIL"
check "failed parity: benchmarks still run" has "^bench_b4_16 +ok"
check "failed parity: fp32 rerun" has "^test_cuda_fp32 +ok"

run_check missing_lib FAKE_LIBS=missing
check "missing library: exit 4" test "$rc" -eq 4
check "missing library: the library named" has "MISSING +libfoo.so.1"

# a hung benchmark under a short overall limit: cut at the limit, the later steps not run,
# everything before it kept, and the script ends well inside its limit
t0=$SECONDS
run_check hang FAKE_HANG=paella GPU_CHECK_SECONDS=20
check "hang: exit 1" test "$rc" -eq 1
check "hang: bench_b1 cut" has "^bench_b1 +CUT\(overall limit\)"
check "hang: later required step not run" has "^bench_b4_16 +NOT-RUN\(no time\)"
check "hang: earlier results kept" has "^test_cuda +ok"
check "hang: within the limit ($((SECONDS - t0)) s)" test $((SECONDS - t0)) -le 30
check "hang: archive holds the cut log" in_archive bench_b1.log

rm -rf "$work/none" && mkdir "$work/none"
(cd "$work/none" && OUT="$work/none/out" bash "$root/scripts/gpu-check.sh" >/dev/null 2>&1)
check "no bundle: exit 2" test $? -eq 2

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
