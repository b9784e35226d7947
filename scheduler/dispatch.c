/* Priorities and fair share (docs/queues.md). A job's priority picks a lane (three streams that
 * workers read highest first, worker/redis_keys.h); inside a lane, jobs wait in one queue per
 * API key and enter the lane's stream round-robin over the keys, only while the stream holds
 * fewer than --dispatch-depth undelivered entries. So one key's 10,000 queued jobs put at most
 * `depth` entries ahead of another key's next job, and the stream's lag (what KEDA reads)
 * stays > 0 whenever anything waits.
 *
 * Every move is one Lua script (SCHED_WAIT_LUA): a job is in its owner's queue or on the
 * stream, never both, never neither, whatever crashes. Submissions dispatch at once; the
 * reaper (every 200 ms) and the tracker (after workers' start events) refill the lanes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/jobs_internal.h"

sched_lane sched_lane_of(const sched_config *c, int lane) {
  sched_lane l;
  l.stream = pa_key_lane(c->redis.stream, lane);
  l.ring = pa_key_wait_ring(c->redis.stream, lane);
  l.queue = pa_key_wait_queue_prefix(c->redis.stream, lane);
  snprintf(l.depth, sizeof l.depth, "%d", c->dispatch_depth);
  return l;
}

int sched_lane_of_hash(const redisReply *h) {
  const char *v = jobs_field(h, "lane", NULL);
  for (int lane = 0; v && lane < PA_LANES; lane++)
    if (!strcmp(v, pa_lane_name(lane))) return lane;
  return PA_LANE_NORMAL;
}

int dispatch_ensure_lanes(const sched_config *c) {
  int rc = PA_OK;
  for (int lane = 0; lane < PA_LANES; lane++) {
    pa_key stream = pa_key_lane(c->redis.stream, lane);
    redisReply *r = sched_cmdf(c, "XGROUP CREATE %s %s 0 MKSTREAM", stream.s, c->redis.group);
    if (!r) rc = PA_ERR_IO;
    else if (r->type == REDIS_REPLY_ERROR && !strstr(r->str, "BUSYGROUP"))
      rc = pa_fail(PA_ERR_IO, "XGROUP CREATE %s: %s", stream.s, r->str);
    if (r) freeReplyObject(r);
  }
  return rc;
}

/* KEYS: lane stream, ring. ARGV: queue prefix, group, depth. */
static const char DISPATCH_LUA[] = SCHED_WAIT_LUA "return dispatch(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])\n";

int dispatch_all(const sched_config *c, long long *moved) {
  int rc = PA_OK;
  if (moved) *moved = 0;
  for (int lane = 0; lane < PA_LANES; lane++) {
    sched_lane l = sched_lane_of(c, lane);
    const char *args[] = {l.stream.s, l.ring.s, l.queue.s, c->redis.group, l.depth};
    redisReply *r = sched_eval(c, DISPATCH_LUA, 2, 3, args, NULL);
    if (r && r->type == REDIS_REPLY_INTEGER) {
      if (moved) *moved += r->integer;
    } else {
      rc = r ? pa_fail(PA_ERR_IO, "dispatch %s: unexpected reply", pa_lane_name(lane)) : PA_ERR_IO;
    }
    if (r) freeReplyObject(r);
  }
  return rc;
}

/* KEYS: ring. ARGV: queue prefix. The ids in every owner's queue (canceled ones included
 * until dispatch drops them). */
static const char WAITING_LUA[] =
    "local n = 0\n"
    "for _, owner in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do\n"
    "  n = n + redis.call('LLEN', ARGV[1] .. owner)\n"
    "end\n"
    "return n\n";

int dispatch_waiting(const sched_config *c, long long per_lane[PA_LANES], long long *total) {
  *total = 0;
  for (int lane = 0; lane < PA_LANES; lane++) {
    sched_lane l = sched_lane_of(c, lane);
    const char *args[] = {l.ring.s, l.queue.s};
    redisReply *r = sched_eval(c, WAITING_LUA, 1, 1, args, NULL);
    long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r) freeReplyObject(r);
    if (n < 0) return r ? pa_fail(PA_ERR_IO, "waiting %s: unexpected reply", pa_lane_name(lane)) : PA_ERR_IO;
    if (per_lane) per_lane[lane] = n;
    *total += n;
  }
  return PA_OK;
}
