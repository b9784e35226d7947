#!/usr/bin/env bash
# The GPU bundle: test_cuda and bench_cuda built HERE (the GPU machine has CUDA but none of the
# Debian libraries and no package registry) into one self-contained folder that travels to it.
#
#   bash scripts/gpu-bundle.sh OUTDIR     build (-DPAELLA_MODEL_ONLY=ON -DPAELLA_CUDA=ON) and fill OUTDIR
#   bash scripts/gpu-bundle.sh --check    the same into a temporary folder, then remove it (CI)
#
# OUTDIR: bin/ (the two programs), lib.tar.xz (every non-CUDA shared library they load beyond
# libc/libm/libpthread/libdl/librt/libgcc_s/libstdc++, copied from this machine), golden/,
# run.sh (scripts/gpu-bundle-run.sh: sets the library path and prints where the CUDA libraries
# were found on the machine it runs on), gpu-check.sh (scripts/gpu-check.sh), cuda-libs.txt and
# glibc-needed.txt (what the target must provide), BUILD-INFO. CUDA libraries are never bundled.
# Ends with the proof: `run.sh --libs` (ldd of each binary under run.sh's library path) must
# class every library as bundle, system or cuda, and `run.sh test_cuda` must start (exit 0, or
# 77 = no CUDA device here).
#
# Then, in a session with a GPU, from the root of the checkout the session started in:
#   bash scripts/gpu-bundle.sh gpu-bundle
#   device tool: run  carry ["gpu-bundle"]  timeout_s 600  command "bash gpu-bundle/gpu-check.sh"
#
# Environment: BUNDLE_BUILD (build folder, default build-bundle), CUDA_ARCHS (default 90: the
# H100/H200; "90" also embeds PTX that newer cards compile at load time).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
check_only=0
if [[ ${1:-} == --check ]]; then
  check_only=1
  out=$(mktemp -d "${TMPDIR:-/tmp}/paella-gpu-bundle.XXXXXX")
  trap 'rm -rf "$out"' EXIT
elif [[ $# -eq 1 && $1 != -* ]]; then
  out="$1"
else
  echo "usage: gpu-bundle.sh OUTDIR | gpu-bundle.sh --check" >&2
  exit 2
fi
build="${BUNDLE_BUILD:-$root/build-bundle}"
export PATH="/usr/local/cuda/bin:$PATH"
t0=$SECONDS

# ---- build: the model, the kernels and the two programs only -------------------------------
# --as-needed: a program records only the libraries it calls (the CLIP tokenizer's ICU or the
# image code's libspng are not); no RPATH: run.sh's LD_LIBRARY_PATH decides, here and there.
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPAELLA_CUDA=ON -DPAELLA_MODEL_ONLY=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DPAELLA_CUDA_GOLDEN_DIR=golden \
  -DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed -DCMAKE_SKIP_RPATH=ON >/dev/null
ninja -C "$build" test_cuda bench_cuda
t_build=$((SECONDS - t0))

# ---- assemble --------------------------------------------------------------------------------
rm -rf "$out"
mkdir -p "$out/bin" "$out/golden"
cp "$build/tests/cuda/test_cuda" "$build/bench/bench_cuda" "$out/bin/"
cp "$root"/tests/golden/*.safetensors "$out/golden/"
cp "$root/scripts/gpu-bundle-run.sh" "$out/run.sh"
cp "$root/scripts/gpu-check.sh" "$out/gpu-check.sh"
chmod +x "$out/run.sh" "$out/gpu-check.sh"
# what the target machine must provide: the CUDA sonames the programs link, and a glibc at
# least as new as the newest symbol version any bundled file asks for (printed by run.sh)
readelf -d "$out"/bin/* | sed -n 's/.*(NEEDED).*\[\(lib\(cudart\|cublasLt\|cublas\|cuda\)\.so[.0-9]*\)\]/\1/p' |
  sort -u >"$out/cuda-libs.txt"
{
  echo "commit $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built $(date -u +%FT%TZ) on $(uname -n), $(nvcc --version | tail -1), CUDA archs ${CUDA_ARCHS:-90}"
} >"$out/BUILD-INFO"

# the libraries run.sh's ldd classes EXTRA (from this machine, not allowed there) are the ones
# to bundle: copy them under their soname, compress them, and ask again
staging=$(mktemp -d "${TMPDIR:-/tmp}/paella-gpu-lib.XXXXXX")
mkdir "$staging/lib"
extra=$("$out/run.sh" --libs 2>/dev/null | awk '$1 == "EXTRA" { print $2, $3 }' | sort -u || true)
while read -r name path; do
  [[ -n $name ]] && cp -L "$path" "$staging/lib/$name"
done <<<"$extra"
# a fixed order and mtime: the same libraries give the same archive (run.sh unpacks by checksum)
tar -C "$staging" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - lib |
  xz -T0 -6 >"$out/lib.tar.xz"
unpacked_mib=$(du -sm "$staging/lib" | cut -f1)
objdump -T "$out"/bin/* "$staging"/lib/* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 >"$out/glibc-needed.txt"
rm -rf "$staging"
t_assemble=$((SECONDS - t0 - t_build))

# ---- proof ------------------------------------------------------------------------------------
echo "== gpu-bundle: $out"
"$out/run.sh" --libs
set +e
"$out/run.sh" test_cuda >"$out/smoke.log" 2>&1
smoke=$?
set -e
if [[ $smoke -ne 0 && $smoke -ne 77 ]]; then
  cat "$out/smoke.log"
  echo "gpu-bundle: run.sh test_cuda exited $smoke (0 or 77 = no device expected)" >&2
  exit 1
fi
echo "smoke: run.sh test_cuda -> exit $smoke ($(grep -m1 -E 'SKIP|passed' "$out/smoke.log"))"
rm -f "$out/smoke.log"
echo "bundle size: $(du -sb "$out" | cut -f1) bytes ($(du -sh "$out" | cut -f1); non-CUDA libraries ${unpacked_mib} MiB unpacked);" \
  "build ${t_build} s, assemble ${t_assemble} s, total $((SECONDS - t0)) s"
((check_only)) && echo "gpu-bundle --check: OK"
exit 0
