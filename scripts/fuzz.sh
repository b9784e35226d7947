#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/: the wire protocol's msgpack and JSON decoders, the
# image decoders and embedded-parameter readers) with clang under
# ASan + UBSan and runs each for a bounded time. Exits non-zero when a target crashes, leaks
# or breaks a round-trip invariant; the input that did it is left in $FUZZ_OUT/artifacts/.
#
#   bash scripts/fuzz.sh                    # every target, FUZZ_SECONDS (default 30) each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh   # the 10-minute local run
#   bash scripts/fuzz.sh fuzz_json          # one target
#
# Environment: FUZZ_SECONDS, FUZZ_OUT (build + working corpus, default build-fuzz),
# CC (default clang, else clang-14). The checked-in seeds in tests/fuzz/corpus/ are read,
# never written; new inputs go to $FUZZ_OUT/corpus/<target>.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}"
OUT="${FUZZ_OUT:-$ROOT/build-fuzz}"
CC="${CC:-$(command -v clang || command -v clang-14)}"
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(fuzz_msgpack fuzz_json fuzz_image)

CFLAGS=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$ROOT")

# The parser sources each target compiles (so that they carry the coverage instrumentation),
# the libraries it links and its -max_len: big enough for every field kind or a small image
# with its metadata, small enough to keep executions fast.
target_build() {
  case "$1" in
    fuzz_msgpack|fuzz_json)
      SOURCES=("$ROOT"/proto/*.c); LIBS=(-lmsgpackc -ljansson -lm); MAX_LEN=16384 ;;
    fuzz_image)
      SOURCES=("$ROOT"/model/image.c "$ROOT"/model/image_png.c "$ROOT"/model/image_jpeg.c
               "$ROOT"/model/image_webp.c "$ROOT"/ops/error.c)
      read -r -a LIBS <<<"$(pkg-config --libs spng libjpeg libwebp libwebpmux) -lm"; MAX_LEN=65536 ;;
    *) echo "fuzz.sh: unknown target $1" >&2; exit 2 ;;
  esac
}

mkdir -p "$OUT/artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
for t in "${TARGETS[@]}"; do
  seeds="$ROOT/tests/fuzz/corpus/${t#fuzz_}"
  dict="$ROOT/tests/fuzz/${t#fuzz_}.dict"
  target_build "$t"
  DICT=()
  [ -f "$dict" ] && DICT=(-dict="$dict")
  echo "fuzz.sh: building $t"
  "$CC" "${CFLAGS[@]}" "${SOURCES[@]}" "$ROOT/tests/fuzz/$t.c" "${LIBS[@]}" -o "$OUT/$t"
  mkdir -p "$OUT/corpus/$t"
  echo "fuzz.sh: running $t for ${SECONDS_PER_TARGET}s"
  rc=0
  "$OUT/$t" -max_total_time="$SECONDS_PER_TARGET" -max_len="$MAX_LEN" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 "${DICT[@]}" \
      -artifact_prefix="$OUT/artifacts/$t-" "$OUT/corpus/$t" "$seeds" >"$OUT/$t.log" 2>&1 || rc=$?
  grep -E "^(#[0-9]+ *(INITED|DONE)|stat::|==[0-9]+==|SUMMARY|fuzz invariant)" "$OUT/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: $t FAILED with status $rc (see $OUT/$t.log and $OUT/artifacts/)" >&2
    status=1
  else
    echo "fuzz.sh: $t clean"
  fi
done
exit "$status"
