/* Helpers shared by the scheduler's registry code (jobs.c, tracker.c, batch.c, deadletters.c). */
#ifndef PAELLA_SCHEDULER_JOBS_INTERNAL_H
#define PAELLA_SCHEDULER_JOBS_INTERNAL_H

#include <jansson.h>
#include <stdio.h>

#include "scheduler/sched.h"

int64_t now_ms(void);

/* The live workers' advertised limits (fleet.c): how many are live, how many differ from
 * c->limits, and (out, may be NULL) a JSON array of those that differ: worker, reason, limits. */
int sched_fleet(const sched_config *c, json_t **out, int *live, int *mismatched);

/* The scheduler's own sorted sets, namespaced by the jobs stream so that two deployments
 * (or tests) sharing one Redis never reap each other's jobs. */
typedef struct {
  char retry[PA_KEY_MAX];     /* job id by the time its retry is due */
  char running[PA_KEY_MAX];   /* job id by the time it started */
  char deadlines[PA_KEY_MAX]; /* job id by its deadline_ms */
  char expiring[PA_KEY_MAX];  /* "ID OWNER" by when the job's record expires: its owner index entry goes then */
} sched_zsets;

static inline sched_zsets sched_zsets_of(const sched_config *c) {
  sched_zsets z;
  snprintf(z.retry, sizeof z.retry, "%s", pa_key_sched(c->redis.stream, "retry").s);
  snprintf(z.running, sizeof z.running, "%s", pa_key_sched(c->redis.stream, "running").s);
  snprintf(z.deadlines, sizeof z.deadlines, "%s", pa_key_sched(c->redis.stream, "deadlines").s);
  snprintf(z.expiring, sizeof z.expiring, "%s", pa_key_sched(c->redis.stream, "expiring").s);
  return z;
}

/* ---- lanes and fair dispatch (dispatch.c; docs/queues.md) ----------------------------- */
/* What a script needs to put a job on a lane: the lane's stream and waiting ring (KEYS), the
 * owners' queue prefix, the workers' group and the depth (ARGV). */
typedef struct {
  pa_key stream, ring, queue;
  char depth[16];
} sched_lane;

sched_lane sched_lane_of(const sched_config *c, int lane);
/* The lane a job hash was submitted to (field `lane`; normal when absent: jobs enqueued
 * before lanes existed). */
int sched_lane_of_hash(const redisReply *h);

/* Lua functions for every script that queues a job (the one writer of the lanes' streams):
 *   wait_push(ring, queue prefix, owner, id, front): the job waits in its owner's queue of the
 *     lane (at the front for a retry), and the owner joins the lane's ring if it was absent;
 *   dispatch(stream, ring, queue prefix, group, depth): while the lane's stream holds fewer
 *     than depth undelivered entries, take the next owner of the ring (round robin), pop its
 *     oldest job and XADD it, if the job is still queued and waiting (a canceled or expired
 *     job is dropped here: it never reaches a stream). Returns the number moved.
 * Invariant: an owner is in a lane's ring iff its queue there is not empty; `waiting` = 1 on
 * the job hash iff its id is in a queue and not yet on a stream. */
#define SCHED_WAIT_LUA                                                                            \
  "local function wait_push(ring, qprefix, owner, id, front)\n"                                    \
  "  local q = qprefix .. owner\n"                                                                 \
  "  local n\n"                                                                                    \
  "  if front then n = redis.call('LPUSH', q, id) else n = redis.call('RPUSH', q, id) end\n"      \
  "  if n == 1 then redis.call('RPUSH', ring, owner) end\n"                                        \
  "  redis.call('HSET', '" PA_KEY_JOB_PREFIX "' .. id, 'waiting', '1')\n"                          \
  "end\n"                                                                                          \
  "local function unread(stream, group, depth)\n"                                                  \
  "  if redis.call('EXISTS', stream) == 0 then return 0 end\n"                                     \
  "  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do\n"                               \
  "    local f = {}\n"                                                                             \
  "    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end\n"                                               \
  "    if f['name'] == group then\n"                                                               \
  "      if type(f['lag']) == 'number' then return f['lag'] end\n"                                 \
  "      return #redis.call('XRANGE', stream, '(' .. f['last-delivered-id'], '+', 'COUNT', depth)\n" \
  "    end\n"                                                                                      \
  "  end\n"                                                                                        \
  "  return redis.call('XLEN', stream)\n"                                                          \
  "end\n"                                                                                          \
  "local function dispatch(stream, ring, qprefix, group, depth)\n"                                 \
  "  depth = tonumber(depth)\n"                                                                    \
  "  local room = depth - unread(stream, group, depth)\n"                                          \
  "  local moved, budget = 0, room + 256\n"                                                        \
  "  while room > 0 and budget > 0 do\n"                                                           \
  "    budget = budget - 1\n"                                                                      \
  "    local owner = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')\n"                           \
  "    if not owner then break end\n"                                                              \
  "    local q = qprefix .. owner\n"                                                               \
  "    local id = redis.call('LPOP', q)\n"                                                         \
  "    if redis.call('LLEN', q) == 0 then redis.call('LREM', ring, -1, owner) end\n"               \
  "    if id then\n"                                                                               \
  "      local jk = '" PA_KEY_JOB_PREFIX "' .. id\n"                                               \
  "      local h = redis.call('HMGET', jk, 'status', 'job', 'waiting')\n"                          \
  "      if h[1] == 'queued' and h[2] and h[3] == '1' then\n"                                      \
  "        local e = redis.call('XADD', stream, '*', 'job', h[2], 'id', id)\n"                     \
  "        redis.call('HSET', jk, 'entry', e, 'waiting', '0')\n"                                   \
  "        room = room - 1\n"                                                                      \
  "        moved = moved + 1\n"                                                                    \
  "      end\n"                                                                                    \
  "    end\n"                                                                                      \
  "  end\n"                                                                                        \
  "  return moved\n"                                                                               \
  "end\n"
/* HGETALL paella:job:{id}; PA_ERR_NOTFOUND when absent. */
int jobs_fetch(const sched_config *c, const char *id, redisReply **out);
/* A field of an HGETALL reply, NULL when absent. */
const char *jobs_field(const redisReply *h, const char *name, size_t *len);
json_t *jobs_resource(const char *id, const redisReply *h);
/* A final Result (msgpack) for jobs the scheduler ends itself (cancel, deadline). */
int jobs_final_result(const char *id, pw_status st, pw_code code, const char *msg, uint8_t **mp, size_t *len);

#endif
