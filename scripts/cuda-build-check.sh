#!/usr/bin/env bash
# CI: the CUDA backend compiles and links (no GPU needed). Configures and builds with
# -DPAELLA_CUDA=ON into build-cuda (or $1); exits 0 when everything compiles.
# CUDA_ARCHS (default "80;90") picks the architectures.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build-cuda}"
if [[ ! -x /usr/local/cuda/bin/nvcc ]] && ! command -v nvcc >/dev/null; then
  echo "cuda-build-check: nvcc not found (install the CUDA toolkit or put it on PATH)" >&2
  exit 1
fi
export PATH="/usr/local/cuda/bin:$PATH"
cmake -S "$root" -B "$build" -G Ninja -DPAELLA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-80;90}"
ninja -C "$build"
echo "cuda-build-check: OK ($build)"
