#!/usr/bin/env bash
# Dependencies of train/ only (reproducing the built-in default model: bash train/run.sh), not
# of the build, the tests or CI: Debian's PyTorch and friends for /usr/bin/python3 (npm, which
# fetches the emoji data, comes with the machine image as for tests/tools). Safe to run
# repeatedly; needs root (apt-get).
set -euo pipefail

APT_PACKAGES=(
  python3-torch python3-numpy   # training (CPU, one thread)
  python3-pil                   # reading the emoji PNGs, the README grid
  python3-matplotlib            # the loss-curve plot
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure "${APT_PACKAGES[@]}"
