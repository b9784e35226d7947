#!/usr/bin/env bash
# Installs the dependencies (Debian packages) and builds paella in ./build (Release).
# Extra arguments go to CMake, e.g. scripts/build.sh -DPAELLA_CUDA=ON
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build
