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
echo "$out" | grep -q '"outputs":\["'"$dir"'/b-00.png","'"$dir"'/b-01.png"\]' && ok || bad "json outputs: $out"
echo "$out" | grep -q '"seed":0' && echo "$out" | grep -q '"denoise":' && ok || bad "json fields: $out"
is_png "$dir/b-00.png" && is_png "$dir/b-01.png" && ok || bad "batch files"

# every mode runs from the command line
fast="-W 64 -H 64 --steps 3 --prior-steps 2 -q"
"$PAELLA" generate "a cat" $fast -o "$dir/in.png" 2>/dev/null
"$PAELLA" generate "a cat" $fast --image "$dir/in.png" --strength 0.5 -o "$dir/i2i.png" 2>/dev/null && is_png "$dir/i2i.png" && ok || bad "img2img"
"$PAELLA" generate "a cat" $fast --image "$dir/in.png" --mask "$dir/in.png" -o "$dir/inp.png" 2>/dev/null && is_png "$dir/inp.png" && ok || bad "inpaint"
"$PAELLA" generate "a cat" --steps 3 --prior-steps 2 -q -W 128 -H 96 --image "$dir/in.png" --outpaint 32,16 -o "$dir/out.png" 2>/dev/null && is_png "$dir/out.png" && ok || bad "outpaint"
"$PAELLA" generate "" $fast --image "$dir/in.png" --variation -o "$dir/var.png" 2>/dev/null && is_png "$dir/var.png" && ok || bad "variation"
"$PAELLA" generate "a cat" $fast --interpolate "a dog" --frames 3 --slerp -o "$dir/f.png" 2>/dev/null && is_png "$dir/f-02.png" && ok || bad "interpolation"
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
expect_fail "a cat" --image "$dir/in.png" --mask "$dir/b-00.png"
expect_fail "a cat" -W 100
expect_fail "a cat" -W 4096
expect_fail ""
expect_fail "a cat" --interpolate ""
expect_fail "a cat" --no-such-option
expect_fail "a cat" --steps zero
expect_fail "a cat" --models "$dir/empty-models-dir"
"$PAELLA" generate --help | grep -q -- "--outpaint" && ok || bad "--help"

# safe output paths: devices, FIFOs and directories are refused before any compute and stay
# as they were; - is stdout; numbered names are zero-padded and keep the extension
is_jpeg() { [ "$(head -c 3 "$1" | od -An -tx1 | tr -d ' \n')" = "ffd8ff" ]; }
is_webp() { [ "$(head -c 4 "$1")" = "RIFF" ] && [ "$(head -c 12 "$1" | tail -c 4)" = "WEBP" ]; }
refuse() { # refuse TARGET WHAT
  "$PAELLA" generate "a cat" $fast -o "$1" 2>"$dir/err"
  local rc=$?
  if [ $rc -eq 1 ] && grep -q "$1 is $2; refusing" "$dir/err"; then ok; else bad "-o $1: rc=$rc $(cat "$dir/err")"; fi
}
refuse /dev/full "a character device"
[ -c /dev/full ] && ok || bad "/dev/full is no longer a device"
refuse /dev/null "a character device"
[ -c /dev/null ] && ok || bad "/dev/null is no longer a device"
mkfifo "$dir/fifo"
refuse "$dir/fifo" "a FIFO"
[ -p "$dir/fifo" ] && ok || bad "the FIFO was replaced"
mkdir "$dir/sub"
refuse "$dir/sub" "a directory"
"$PAELLA" generate "a cat" $fast -o "$dir/nodir/x.png" 2>"$dir/err"; [ $? -eq 1 ] && grep -q "nodir" "$dir/err" && ok || bad "missing directory: $(cat "$dir/err")"
(cd "$dir" && "$PAELLA" generate "a cat" $fast -o - >"$dir/stdout.png" 2>/dev/null) && is_png "$dir/stdout.png" && [ ! -e "$dir/-" ] && ok || bad "-o - writes to stdout"
cmp -s "$dir/stdout.png" <("$PAELLA" generate "a cat" $fast -o - 2>/dev/null) && ok || bad "-o - is not deterministic"
"$PAELLA" generate "a cat" $fast --batch 2 -o - >/dev/null 2>"$dir/err"; [ $? -eq 2 ] && grep -q -- "-o: - writes one image" "$dir/err" && ok || bad "-o - with two images: $(cat "$dir/err")"
echo old >"$dir/exists.png"
"$PAELLA" generate "a cat" $fast -o "$dir/exists.png" 2>/dev/null && is_png "$dir/exists.png" && ok || bad "replacing a regular file"
ls -a "$dir" | grep -q '^\.paella-' && bad "a temporary file was left behind" || ok
"$PAELLA" generate "a cat" $fast --interpolate "a dog" --frames 11 -o "$dir/n/f.webp" 2>/dev/null; mkdir -p "$dir/n"
"$PAELLA" generate "a cat" $fast --interpolate "a dog" --frames 11 -o "$dir/n/f.webp" 2>/dev/null
[ "$(ls "$dir/n" | tr '\n' ' ')" = "f-00.webp f-01.webp f-02.webp f-03.webp f-04.webp f-05.webp f-06.webp f-07.webp f-08.webp f-09.webp f-10.webp " ] && ok || bad "numbering: $(ls "$dir/n")"
is_webp "$dir/n/f-10.webp" && ok || bad "frames are not WebP"
"$PAELLA" generate "a cat" $fast --batch 2 -o "$dir/noext" 2>/dev/null && is_png "$dir/noext-00.png" && ok || bad "numbered name without extension"

# formats: from the extension or --format, --quality; parameters embedded in every format
"$PAELLA" generate "a <red> fox" $fast --seed 5 -o "$dir/o.jpg" 2>/dev/null && is_jpeg "$dir/o.jpg" && ok || bad "-o x.jpg is not JPEG"
"$PAELLA" generate "a <red> fox" $fast --seed 5 -o "$dir/o.webp" 2>/dev/null && is_webp "$dir/o.webp" && ok || bad "-o x.webp is not WebP"
"$PAELLA" generate "a <red> fox" $fast --seed 5 --format jpeg --quality 40 -o "$dir/o40" 2>/dev/null && is_jpeg "$dir/o40" && ok || bad "--format jpeg"
[ "$(stat -c %s "$dir/o40")" -lt "$(stat -c %s "$dir/o.jpg")" ] && ok || bad "--quality 40 is not smaller than 90"
for f in o.jpg o.webp o40 stdout.png; do
  p=$("$PAELLA" info "$dir/$f")
  echo "$p" | grep -q '"steps":3' && echo "$p" | grep -q '"paella_version":' && ok || bad "params of $f: $p"
done
"$PAELLA" info "$dir/o.webp" | grep -q '"prompt":"a <red> fox"' && "$PAELLA" info "$dir/o.webp" | grep -q '"seed":5' && ok || bad "webp params"
"$PAELLA" info "$dir/o40" | grep -q '"output_quality":40' && ok || bad "jpeg quality param"
"$PAELLA" info "$dir/exists.png" | grep -q '"seed":0' && ok || bad "png params"
"$PAELLA" generate "a cat" $fast -o "$dir/x.gif" 2>"$dir/err"; [ $? -eq 2 ] && grep -q "unknown image extension" "$dir/err" && ok || bad ".gif: $(cat "$dir/err")"
"$PAELLA" generate "a cat" $fast -o "$dir/x.png" --format webp 2>"$dir/err"; [ $? -eq 2 ] && ok || bad "--format against the extension"
# JPEG and WebP inputs
"$PAELLA" generate "a cat" $fast --image "$dir/o.jpg" -o "$dir/fromjpg.png" 2>/dev/null && is_png "$dir/fromjpg.png" && ok || bad "JPEG input"
"$PAELLA" generate "a cat" $fast --image "$dir/o.webp" --mask "$dir/o.jpg" -o "$dir/fromwebp.png" 2>/dev/null && ok || bad "WebP input"

# --preview FILE: rewritten atomically with a small PNG of the tokens while denoising (the
# longer side scaled to 64 px), reported in --json; refused like -o for devices; the image
# itself does not change
png_size() { od -An -tx1 -j16 -N8 "$1" | tr -d ' \n'; }
out=$("$PAELLA" generate "a cat" -W 128 -H 96 --steps 4 --prior-steps 2 --seed 4 --preview "$dir/prev.png" --json -o "$dir/pv.png" 2>"$dir/err")
is_png "$dir/prev.png" && [ "$(png_size "$dir/prev.png")" = "0000004000000030" ] && ok || bad "preview is not a 64x48 PNG: $(png_size "$dir/prev.png") $(cat "$dir/err")"
echo "$out" | grep -q '"previews":[1-9]' && ok || bad "--json previews: $out"
ls -a "$dir" | grep -q '^\.paella-' && bad "a temporary preview file was left behind" || ok
"$PAELLA" generate "a cat" -W 128 -H 96 --steps 4 --prior-steps 2 --seed 4 -q -o "$dir/nopv.png" 2>/dev/null
cmp -s "$dir/pv.png" "$dir/nopv.png" && ok || bad "--preview changed the image"
"$PAELLA" generate "a cat" $fast --preview /dev/full -o "$dir/u.png" 2>"$dir/err"; [ $? -eq 1 ] && grep -q "refusing" "$dir/err" && [ ! -e "$dir/u.png" ] && [ -c /dev/full ] && ok || bad "--preview /dev/full: $(cat "$dir/err")"

# option errors name the option and its range; exit 2 for usage, 1 for runtime failures
usage_err() { # usage_err "expected message" args...
  local want=$1
  shift
  "$PAELLA" generate "$@" -o "$dir/u.png" 2>"$dir/err"
  local rc=$?
  if [ $rc -eq 2 ] && grep -qF -- "$want" "$dir/err" && [ ! -e "$dir/u.png" ]; then ok; else bad "$*: rc=$rc $(cat "$dir/err")"; fi
}
usage_err "--steps: 101 is out of range 1..100" "a cat" --steps 101
usage_err "--batch: 17 is out of range 1..16" "a cat" --batch 17
usage_err "--cfg: 100 is out of range 0..30" "a cat" --cfg 100
usage_err "--seed: 'x' is not an integer" "a cat" --seed x
usage_err "--quality: 101 is out of range 1..100" "a cat" --quality 101
usage_err "--t-end: t_end must be below t_start" "a cat" --t-start 0.3 --t-end 0.5
usage_err "--prior-sampler: 'foo' is not one of ddpm, ddim" "a cat" --prior-sampler foo
usage_err "PROMPT: 100000 bytes, the limit is 4096" "$(head -c 100000 /dev/zero | tr '\0' a)"
usage_err "--no-such-option: unknown option" "a cat" --no-such-option
usage_err "--preview-every: 101 is out of range 0..100" "a cat" --preview-every 101
"$PAELLA" generate "a cat" --image "$dir/missing.png" -o "$dir/u.png" 2>/dev/null; [ $? -eq 1 ] && ok || bad "a missing input file is exit 1"

echo "cli_generate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
