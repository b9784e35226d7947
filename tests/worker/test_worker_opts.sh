#!/bin/bash
# paella-worker's option errors: each names the option (and the environment variable) and the
# allowed values, and exits 2, as `paella` and `paella-scheduler` do. No server is needed: the
# command line is checked before anything is contacted.
W=${1:?usage: test_worker_opts.sh PATH/TO/paella-worker}
pass=0 fail=0
check() { # check NAME WANT_RC WANT_TEXT -- command...
  local name=$1 want_rc=$2 want=$3; shift 4
  local out rc
  out=$("$@" 2>&1 >/dev/null); rc=$?
  if [ "$rc" = "$want_rc" ] && [[ "$out" == *"$want"* ]]; then pass=$((pass + 1))
  else fail=$((fail + 1)); echo "FAIL $name: rc $rc, '$out' (want rc $want_rc, '$want')"; fi
}
Q="--queue redis://127.0.0.1:1/0 --storage file:///nonexistent"
check max-batch 2 "paella-worker: --max-batch: 100000 is out of range 1..64" -- $W $Q --max-batch 100000
check max-batch= 2 "paella-worker: --max-batch: 100000 is out of range 1..64" -- $W $Q --max-batch=100000
check max-side 2 "--max-side: 100000 is out of range 32..16384" -- $W $Q --max-side 100000
check threads 2 "--threads: 0 is out of range 1.." -- $W $Q --threads 0
check not-int 2 "--poll-ms: 'abc' is not an integer (allowed 10..30000)" -- $W $Q --poll-ms abc
check device 2 "--device: 'tpu' is not allowed (allowed cpu|cuda)" -- $W $Q --device tpu
check log-level 2 "--log-level: 'loud' is not allowed (allowed debug|info|warn|error)" -- $W $Q --log-level loud
check env 2 "paella-worker: PAELLA_MAX_BATCH (--max-batch): 100000 is out of range 1..64" \
  -- env PAELLA_MAX_BATCH=100000 $W $Q
check env-device 2 "PAELLA_DEVICE (--device): 'tpu' is not allowed (allowed cpu|cuda)" -- env PAELLA_DEVICE=tpu $W $Q
check unknown 2 "paella-worker: unknown option '--bogus'" -- $W $Q --bogus
check unknown-last 2 "paella-worker: unknown option '--bogus'" -- $W --bogus
check missing 2 "paella-worker: --max-batch needs a value" -- $W $Q --max-batch
echo "worker options: $pass passed, $fail failed"
[ "$fail" = 0 ]
