#!/usr/bin/env bash
# `paella generate` as a user runs it: valid PNGs, byte-identical reruns, seeds that matter,
# every editing mode, and bad input that exits non-zero with one line and writes nothing.
set -u
PAELLA=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; }

# the README's first command
"$PAELLA" generate "a red fox" --seed 7 -o "$dir/fox.png" -q 2>"$dir/err" && is_png "$dir/fox.png" && ok || bad "fox.png"
# the built-in model is trained: no warning, and its native 32x32 size by default (PNG IHDR)
[ ! -s "$dir/err" ] && ok || bad "unexpected stderr: $(cat "$dir/err")"
[ "$(od -An -tx1 -j16 -N8 "$dir/fox.png" | tr -d ' \n')" = "0000002000000020" ] && ok || bad "fox.png is not 32x32"
"$PAELLA" generate "a red fox" --seed 7 -o "$dir/fox2.png" -q 2>/dev/null
cmp -s "$dir/fox.png" "$dir/fox2.png" && ok || bad "same seed gave different files"
"$PAELLA" generate "a red fox" --seed 8 -o "$dir/fox3.png" -q 2>/dev/null
cmp -s "$dir/fox.png" "$dir/fox3.png" && bad "seeds 7 and 8 gave the same file" || ok

# --json summary and batches
out=$("$PAELLA" generate "a boat" -W 64 -H 96 --batch 2 --steps 3 --prior-steps 2 --json -o "$dir/b.png" 2>/dev/null)
echo "$out" | grep -q '"outputs":\["'"$dir"'/b-0.png","'"$dir"'/b-1.png"\]' && ok || bad "json outputs: $out"
echo "$out" | grep -q '"seed":0' && echo "$out" | grep -q '"denoise":' && ok || bad "json fields: $out"
is_png "$dir/b-0.png" && is_png "$dir/b-1.png" && ok || bad "batch files"

# every mode runs from the command line
fast="-W 64 -H 64 --steps 3 --prior-steps 2 -q"
"$PAELLA" generate "a cat" $fast -o "$dir/in.png" 2>/dev/null
"$PAELLA" generate "a cat" $fast --image "$dir/in.png" --strength 0.5 -o "$dir/i2i.png" 2>/dev/null && is_png "$dir/i2i.png" && ok || bad "img2img"
"$PAELLA" generate "a cat" $fast --image "$dir/in.png" --mask "$dir/in.png" -o "$dir/inp.png" 2>/dev/null && is_png "$dir/inp.png" && ok || bad "inpaint"
"$PAELLA" generate "a cat" --steps 3 --prior-steps 2 -q -W 128 -H 96 --image "$dir/in.png" --outpaint 32,16 -o "$dir/out.png" 2>/dev/null && is_png "$dir/out.png" && ok || bad "outpaint"
"$PAELLA" generate "" $fast --image "$dir/in.png" --variation -o "$dir/var.png" 2>/dev/null && is_png "$dir/var.png" && ok || bad "variation"
"$PAELLA" generate "a cat" $fast --interpolate "a dog" --frames 3 --slerp -o "$dir/f.png" 2>/dev/null && is_png "$dir/f-2.png" && ok || bad "interpolation"
"$PAELLA" generate "a cat" $fast --bottom "a dog" --negative "blurry" --attn-weights 1.2,1,0.5 -o "$dir/tb.png" 2>/dev/null && is_png "$dir/tb.png" && ok || bad "regions"

# bad input: non-zero exit, exactly one line on stderr, no output file
expect_fail() {
  rm -f "$dir/bad.png" "$dir"/bad-*.png
  "$PAELLA" generate "$@" -o "$dir/bad.png" -q 2>"$dir/err"
  local rc=$?
  local lines
  lines=$(wc -l <"$dir/err")
  if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && ! ls "$dir"/bad*.png >/dev/null 2>&1; then ok; else bad "expected failure for: $* (rc=$rc, $lines lines: $(cat "$dir/err"))"; fi
}
printf 'not a png' >"$dir/junk.png"
expect_fail "a cat" --image "$dir/missing.png"
expect_fail "a cat" --image "$dir/junk.png"
expect_fail "a cat" --image "$dir/in.png" --mask "$dir/b-0.png"
expect_fail "a cat" -W 100
expect_fail "a cat" -W 4096
expect_fail ""
expect_fail "a cat" --interpolate ""
expect_fail "a cat" --no-such-option
expect_fail "a cat" --steps zero
expect_fail "a cat" --models "$dir/empty-models-dir"
"$PAELLA" generate --help | grep -q -- "--outpaint" && ok || bad "--help"

echo "cli_generate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
