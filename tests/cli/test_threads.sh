#!/usr/bin/env bash
# A seed fixes the image whatever the thread count (docs/determinism.md): the same job with
# --threads 1, 2, 3 and 4, and with OMP_NUM_THREADS=3 and no flag, gives the same bytes.
# The job is 4 images (seeds 7..10) at the built-in model's 32 px: before the CPU backend
# partitioned its GEMMs itself, 2 threads changed image 0 and 3 threads image 1.
set -u
PAELLA=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
job=("a red fox" --seed 7 --batch 4 -q)

for t in 1 2 3 4; do
  out=$("$PAELLA" generate "${job[@]}" --threads $t --json -o "$dir/t$t.png" 2>"$dir/err") || bad "--threads $t: $(cat "$dir/err")"
  echo "$out" | grep -q "\"threads\":$t[,}]" && ok || bad "--threads $t: the summary says $out"
done
OMP_NUM_THREADS=3 "$PAELLA" generate "${job[@]}" -o "$dir/env.png" 2>"$dir/err" || bad "OMP_NUM_THREADS=3: $(cat "$dir/err")"
for i in 00 01 02 03; do
  [ -s "$dir/t1-$i.png" ] && ok || bad "image $i missing"
  for run in t2 t3 t4 env; do
    cmp -s "$dir/t1-$i.png" "$dir/$run-$i.png" && ok || bad "image $i: $run differs from 1 thread"
  done
done
# the seeds still matter: the four images are not all one
[ "$(cat "$dir"/t1-0*.png | md5sum)" != "$(cat "$dir"/t1-00.png "$dir"/t1-00.png "$dir"/t1-00.png "$dir"/t1-00.png | md5sum)" ] && ok || bad "four seeds gave one image"

# a bad count is a usage error naming the option, and writes nothing
for v in 0 257 two; do
  "$PAELLA" generate "a cat" --threads $v -q -o "$dir/bad.png" 2>"$dir/err"
  rc=$?
  [ $rc -eq 2 ] && grep -q -- "--threads" "$dir/err" && [ ! -e "$dir/bad.png" ] && ok || bad "--threads $v: rc=$rc $(cat "$dir/err")"
done
"$PAELLA" generate --help | grep -q -- "--threads N" && ok || bad "--help has no --threads"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
