#!/usr/bin/env bash
# run.sh of the GPU bundle (scripts/gpu-bundle.sh copies this file into the bundle).
#
#   run.sh PROGRAM [ARGS...]   run bin/PROGRAM (test_cuda, bench_cuda) with the bundle's libraries
#   run.sh --libs              ldd of every bundled binary under the same library path, each
#                              library classed bundle / system / cuda; exits 1 when one comes
#                              from anywhere else or is missing (the bundle's self-containment proof)
#
# The first lines always say where the CUDA libraries the binaries need (cuda-libs.txt) were
# found: the bundle carries none of them, they come from this machine's own toolkit
# ($CUDA_HOME, /usr/local/cuda*, then the loader's cache, then the nvidia wheels of a Python
# installation, e.g. PyTorch's). The non-CUDA libraries travel xz-compressed (lib.tar.xz, about
# a fifth of their size) and are unpacked once into a folder under /tmp named by their checksum.
#
# Exit status: the program's, or 4 when a CUDA library cannot be found (nothing can run).
set -uo pipefail
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The only libraries a bundled binary may take from the machine it runs on.
system_lib_re='^(linux-vdso\.so|ld-linux[-a-z0-9_]*\.so|libc\.so|libm\.so|libmvec\.so|libpthread\.so|libdl\.so|librt\.so|libgcc_s\.so|libstdc\+\+\.so)'
cuda_lib_re='^lib(cuda|cudart|cublas|cublasLt|nvJitLink|nvrtc)\.so'

say() { echo "run.sh: $*" >&2; }

# The bundled libraries: lib.tar.xz unpacked into /tmp/paella-gpu-lib.<checksum> (atomically: a
# concurrent run.sh may be unpacking the same archive).
unpack_libs() {
  local archive="$bundle/lib.tar.xz"
  [[ -f $archive ]] || { libdir="$bundle/lib"; return 0; }
  local sum
  sum=$(cksum <"$archive" | cut -d' ' -f1)
  libdir="${TMPDIR:-/tmp}/paella-gpu-lib.$sum"
  [[ -d $libdir ]] && return 0
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/paella-gpu-lib.XXXXXX") || return 1
  if command -v xz >/dev/null; then
    tar -C "$tmp" -xJf "$archive" || { rm -rf "$tmp"; return 1; }
  else # no xz-utils: Python's tarfile reads xz too
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$archive" "$tmp" ||
      { rm -rf "$tmp"; return 1; }
  fi
  mv -T "$tmp/lib" "$libdir" 2>/dev/null || true # another run.sh won the race: its copy is identical
  rm -rf "$tmp"
  [[ -d $libdir ]]
}

# Folders that may hold the CUDA toolkit's libraries, most specific first.
cuda_candidates() {
  local d
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-*; do
    [[ -n $d ]] || continue
    echo "$d/lib64"
    echo "$d/lib"
    for t in "$d"/targets/*/lib; do echo "$t"; done
  done
}

# Python wheels' copies (nvidia-cublas, nvidia-cuda-runtime: nvidia/<part>/lib, nvidia/cu13/lib).
wheel_candidates() {
  command -v python3 >/dev/null || return 0
  local sp
  python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null |
    while read -r sp; do
      for d in "$sp"/nvidia/*/lib "$sp"/torch/lib; do [[ -d $d ]] && echo "$d"; done
    done
}

# find_cuda: sets cuda_path (folders to add to LD_LIBRARY_PATH); prints one line per library.
find_cuda() {
  cuda_path=""
  cuda_missing=0
  local lib dir where
  local -a cands
  mapfile -t cands < <(cuda_candidates)
  for lib in $(cat "$bundle/cuda-libs.txt" 2>/dev/null); do
    where=""
    for dir in "${cands[@]}"; do
      [[ -e $dir/$lib ]] && { where=$dir; break; }
    done
    if [[ -z $where ]] && ldconfig -p 2>/dev/null | grep -q "[[:space:]]$lib "; then
      say "$lib <- the loader's cache ($(ldconfig -p | grep "[[:space:]]$lib " | head -1 | sed 's/.*=> //'))"
      continue
    fi
    if [[ -z $where ]]; then
      for dir in $(wheel_candidates); do
        [[ -e $dir/$lib ]] && { where=$dir; break; }
      done
    fi
    if [[ -z $where ]]; then
      say "$lib NOT FOUND (searched \$CUDA_HOME, \$CUDA_PATH, /usr/local/cuda*, the loader's cache, Python nvidia wheels)"
      cuda_missing=1
      continue
    fi
    say "$lib <- $where"
    [[ ":$cuda_path:" == *":$where:"* ]] || cuda_path="${cuda_path:+$cuda_path:}$where"
  done
  say "glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2) here; the bundle needs $(cat "$bundle/glibc-needed.txt" 2>/dev/null || echo '?')"
}

# ldd of each bundled binary, each library classed; returns 1 on any library from elsewhere.
check_libs() {
  local bin line name path kind bad=0
  for bin in "$bundle"/bin/*; do
    echo "== ldd $(basename "$bin") (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    while read -r line; do
      name=${line%% *}
      path=""
      [[ $line == *"=> "* ]] && path=${line#*=> } && path=${path%% (*}
      [[ $line == /* ]] && path=${line%% (*} && name=$(basename "$path")
      if [[ $path == "$libdir"/* ]]; then
        kind=bundle
      elif [[ $name =~ $cuda_lib_re ]]; then
        kind=cuda
      elif [[ $name =~ $system_lib_re ]]; then
        kind=system
      elif [[ $path == "not found" ]]; then
        kind=MISSING bad=1
      else
        kind=EXTRA bad=1
      fi
      printf '  %-8s %-24s %s\n' "$kind" "$name" "${path:-(kernel)}"
    done < <(ldd "$bin" | sed 's/^[[:space:]]*//')
  done
  return $bad
}

unpack_libs || { say "cannot unpack $bundle/lib.tar.xz"; exit 4; }
find_cuda
export LD_LIBRARY_PATH="$libdir${cuda_path:+:$cuda_path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [[ ${1:-} == --libs ]]; then
  check_libs
  exit $?
fi
[[ $# -ge 1 ]] || { say "usage: run.sh PROGRAM [ARGS...] | run.sh --libs"; exit 2; }
((cuda_missing)) && exit 4
prog="$1"
shift
[[ -f $bundle/bin/$prog ]] || { say "no bin/$prog in $bundle"; exit 2; }
[[ -x $bundle/bin/$prog ]] || chmod +x "$bundle/bin/$prog" # a copy that lost the mode bits
cd "$bundle" || exit 2 # test_cuda reads its goldens from ./golden
exec "$bundle/bin/$prog" "$@"
