#!/usr/bin/env bash
# Lists what the runtime image needs for the given binaries, from what they are linked to:
# the Debian packages that own their shared libraries go to OUT/packages.txt; libraries that
# no package owns are copied with their symlinks, the CUDA toolkit's to OUT/cuda-lib64 (the
# CUDA runtime base's /usr/local/cuda/lib64), others to OUT/lib. Run in the build stage; the runtime stage installs exactly that list, so it never
# drifts from CMakeLists.txt. libcuda.so.1 is skipped: the NVIDIA container runtime mounts
# the host driver's copy.
# usage: runtime-libs.sh OUT BINARY...
set -euo pipefail
out=$1
shift
mkdir -p "$out/lib" "$out/cuda-lib64"
: >"$out/packages.txt.tmp"
for bin in "$@"; do
  ldd "$bin" | while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue # the vdso and the loader itself
    case "$name" in libcuda.so.*) continue ;; esac
    if [ "$path" = "not" ]; then
      echo "runtime-libs: $bin needs $name, which is not installed" >&2
      exit 1
    fi
    real=$(readlink -f "$path")
    if pkg=$(dpkg-query -S "$real" 2>/dev/null || dpkg-query -S "$path" 2>/dev/null); then
      echo "${pkg%%:*}" >>"$out/packages.txt.tmp"
    else
      # not packaged: copy the soname link and the file it points to
      case "$real" in /usr/local/cuda*) dest=$out/cuda-lib64 ;; *) dest=$out/lib ;; esac
      cp -a "$path" "$dest/"
      [ "$real" = "$(readlink -f "$dest/$(basename "$path")")" ] || cp -a "$real" "$dest/"
    fi
  done
done
# libc6 is in every base image; a package "a, b" (diversions) keeps its first name.
sed 's/,.*//' "$out/packages.txt.tmp" | grep -vx 'libc6' | sort -u >"$out/packages.txt"
rm "$out/packages.txt.tmp"
echo "runtime-libs: $(wc -l <"$out/packages.txt") packages, $(ls "$out/lib" "$out/cuda-lib64" | grep -c '\.so') unpackaged files"
