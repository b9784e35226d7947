#!/usr/bin/env bash
# Soak: N tiny jobs (32 px, 1 step, argmax, 1 prior step) through the real scheduler and
# worker(s) against a private redis-server, sampling Redis memory every few seconds into a
# CSV, to show that Redis reaches a plateau (retention: --job-ttl, stream trimming, dead
# letters capped) instead of growing with every job.
#   scripts/soak.sh [-n JOBS] [-c CLIENTS] [-w WORKERS] [-i SAMPLE_S] [-t JOB_TTL_S]
#                   [-p PROMPTS] [-o CSV] [-b BUILD_DIR] [-k] [-m MAX_GROWTH_BYTES] [-d DEPTH]
# Defaults: 20000 jobs, 4 concurrent clients (each submits with 'Prefer: wait' and waits for
# its job, so the queue stays short and memory measures retention, not backlog), 1 worker,
# a sample every 5 s, --job-ttl 60, 97 distinct prompts (each leaves 2 embedding-cache entries
# for the cache's own TTL), soak.csv in the current directory, ./build, the scheduler's
# --dispatch-depth 64. Jobs cycle through priorities 5, 9 and 0, so all three lanes
# (docs/queues.md) are used and trimmed; a DEPTH below the clients' count makes jobs wait in
# their owner's queue before dispatch.
# -k (check, for ctest): after the last job, wait until the retention has run (the longer of
# the job TTL and the scheduler's 60 s events window, + 20 s) and fail unless no job record,
# owner index entry, waiting queue or expiry entry is left, each stream (every lane and the
# events) keeps at most its last delivered entry, and
# used_memory is within MAX_GROWTH_BYTES of the baseline taken before the first job
# (default 1 MiB: the prompts' embedding-cache entries, cached scripts).
# CSV columns: t_s, jobs_done, used_memory, dbsize, job_keys, index_len, stream_len (the
# longest lane), events_len, wait_keys (owner queues and rings), expiring (retention's zset).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=20000 clients=4 workers=1 interval=5 ttl=60 csv=soak.csv build=$root/build check=0 max_growth=$((1 << 20)) prompts=97 depth=64
while getopts "n:c:w:i:t:p:o:b:km:d:" opt; do
  case $opt in
  n) jobs=$OPTARG ;; c) clients=$OPTARG ;; w) workers=$OPTARG ;; i) interval=$OPTARG ;; t) ttl=$OPTARG ;;
  p) prompts=$OPTARG ;; o) csv=$OPTARG ;; b) build=$OPTARG ;; k) check=1 ;; m) max_growth=$OPTARG ;; d) depth=$OPTARG ;;
  *) sed -n 2,22p "$0" >&2; exit 2 ;;
  esac
done
for bin in paella-scheduler paella-worker; do
  [ -x "$build/$bin" ] || { echo "soak: $build/$bin is missing (build first)" >&2; exit 2; }
done
command -v redis-server >/dev/null && command -v python3 >/dev/null || { echo "soak: needs redis-server and python3" >&2; exit 2; }

dir=$(mktemp -d /tmp/paella-soak-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  [ -n "${PAELLA_KEEP_TMP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly yes \
  --maxmemory-policy noeviction --daemonize no >"$dir/redis.log" 2>&1 &
pids+=($!)
rcli() { redis-cli -p "$rport" "$@"; }
for _ in $(seq 100); do rcli PING >/dev/null 2>&1 && break; sleep 0.1; done
rcli PING >/dev/null || { echo "soak: redis-server did not start" >&2; exit 1; }

queue="redis://127.0.0.1:$rport/0"
mkdir -p "$dir/shards" "$dir/out"
"$build/paella-scheduler" --queue "$queue" --storage "file://$dir/shards" --listen 127.0.0.1:0 \
  --job-ttl "$ttl" --dispatch-depth "$depth" >"$dir/scheduler.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$dir/scheduler.log" && break; sleep 0.1; done
sport=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/scheduler.log")
[ -n "$sport" ] || { echo "soak: the scheduler did not start:" >&2; cat "$dir/scheduler.log" >&2; exit 1; }
for i in $(seq "$workers"); do
  OMP_NUM_THREADS=1 "$build/paella-worker" --queue "$queue" --storage "file://$dir/out" --poll-ms 200 \
    --progress-ms 3600000 --log-level warn >"$dir/worker$i.log" 2>&1 &
  pids+=($!)
done

# One line per sample; jobs_done is what the submitter has seen finish so far.
echo "t_s,jobs_done,used_memory,dbsize,job_keys,index_len,stream_len,events_len,wait_keys,expiring" >"$csv"
echo 0 >"$dir/done"
sample() {
  local t=$1 mem keys jk slen wk
  mem=$(rcli INFO memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
  keys=$(rcli DBSIZE)
  jk=$(rcli EVAL "return #redis.call('KEYS', 'paella:job:*')" 0)
  wk=$(rcli EVAL "return #redis.call('KEYS', 'paella:jobs:wait:*')" 0)
  slen=$(rcli EVAL "local m = 0
    for _, k in ipairs(KEYS) do m = math.max(m, redis.call('XLEN', k)) end
    return m" 3 paella:jobs paella:jobs:lane:high paella:jobs:lane:low)
  echo "$t,$(cat "$dir/done"),$mem,$keys,$jk,$(rcli ZCARD paella:owner:anonymous:jobs),$slen," \
    "$(rcli XLEN paella:jobs:events),$wk,$(rcli ZCARD paella:jobs:sched:expiring)" | tr -d ' ' >>"$csv"
}
start=$(date +%s)
(while true; do sample $(($(date +%s) - start)); sleep "$interval"; done) &
sampler=$!
pids+=($sampler)

# The clients: each POSTs a job with 'Prefer: wait=60' and takes the next once it settled.
python3 - "$sport" "$jobs" "$clients" "$dir/done" "$prompts" <<'EOF'
import http.client, json, sys, threading, time
port, total, clients, done_file, prompts = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
lock = threading.Lock()
state = {"next": 0, "ok": 0, "bad": 0}
def body(i):
    return json.dumps({"prompt": "soak %d" % (i % prompts), "width": 32, "height": 32, "steps": 1, "seed": i,
                       "sampling": "argmax", "prior": {"steps": 1}, "priority": (5, 9, 0)[i % 3]})
def client():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while True:
        with lock:
            i = state["next"]
            if i >= total: return
            state["next"] += 1
        status = None
        for _ in range(5):
            try:
                conn.request("POST", "/v1/jobs", body(i), {"Content-Type": "application/json", "Prefer": "wait=60"})
                r = conn.getresponse()
                status = json.loads(r.read()).get("status")
                if r.status in (200, 202): break
            except Exception:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                time.sleep(1)
        with lock:
            state["ok" if status == "succeeded" else "bad"] += 1
            if (state["ok"] + state["bad"]) % 100 == 0:
                with open(done_file, "w") as f: f.write(str(state["ok"] + state["bad"]))
threads = [threading.Thread(target=client) for _ in range(clients)]
t0 = time.time()
for t in threads: t.start()
for t in threads: t.join()
with open(done_file, "w") as f: f.write(str(state["ok"] + state["bad"]))
dt = time.time() - t0
print("soak: %d jobs in %.0f s (%.1f jobs/s): %d succeeded, %d not" % (total, dt, total / dt, state["ok"], state["bad"]))
sys.exit(0 if state["bad"] == 0 else 1)
EOF
rc=$?
sample $(($(date +%s) - start))
if [ "$check" = 1 ]; then
  base=$(awk -F, 'NR == 2 { print $3 }' "$csv") # before the first job
  wait_s=$((ttl > 60 ? ttl : 60))
  sleep $((wait_s + 20))
  sample $(($(date +%s) - start))
  IFS=, read -r _ _ mem _ jk idx slen elen wk exp <<<"$(tail -1 "$csv")"
  echo "soak check: used_memory $base before, $mem after retention; job records $jk, index $idx," \
    "longest lane $slen, events $elen, waiting queues $wk, expiring $exp"
  if [ "$jk" != 0 ] || [ "$idx" != 0 ] || [ "$elen" -gt 1 ] || [ "$slen" -gt 1 ] || [ "$wk" != 0 ] ||
    [ "$exp" != 0 ] || [ $((mem - base)) -gt "$max_growth" ]; then
    echo "soak check: FAILED (something was kept, or memory grew by $((mem - base)) > $max_growth bytes)" >&2
    rc=1
  fi
fi
kill "$sampler" 2>/dev/null
awk -F, 'NR > 1 { if ($3 > max) max = $3 } END { print "soak: peak used_memory " max " bytes" }' "$csv"
exit $rc
