#!/usr/bin/env bash
# Dependencies of train/ only (reproducing the built-in default model: bash train/run.sh), not
# of the build, the tests or CI. Debian's PyTorch and friends for /usr/bin/python3, and npm to
# fetch the emoji data. Safe to run repeatedly; needs root (apt-get).
set -euo pipefail

APT_PACKAGES=(
  python3-torch python3-numpy   # training (CPU, one thread)
  python3-pil                   # reading the emoji PNGs, the README grid
  python3-matplotlib            # the loss-curve plot
  npm                           # emoji-datasource-twitter (the training images and captions)
)

need_install=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_install+=("$p")
done
if [ "${#need_install[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends "${need_install[@]}"
fi
