/* The tracker: consumes the workers' events ({stream}:events, consumer group events_group),
 * keeps the job state machine in the hashes, retries failed attempts with exponential
 * backoff, dead-letters jobs that used up their attempts, and a reaper that enforces
 * deadlines and running-time limits. A second reader fans every event out to this process's
 * waiters (SSE, Prefer: wait) without a group, so every replica sees every event.
 *
 * State machine (status field; "cancel" and "cancel_reason" ride along). Each transition has
 * one writer, one script (the table in docs/queues.md):
 *   -> queued                    SUBMIT_LUA (jobs.c): waits in its owner's queue of its lane
 *   queued: waiting -> on the lane's stream   dispatch() of SCHED_WAIT_LUA (dispatch.c)
 *   queued -> running            the worker's start event script; START_LUA here only books it
 *   queued -> canceled           CANCEL_LUA: the worker acks the entry unrun (never XDEL'd)
 *   queued -> failed             DEADLINE_LUA: deadline passed before a worker took it
 *   running -> succeeded|failed|canceled   the worker's result script (first result wins)
 *   failed (retryable) -> queued RETRY_LUA, attempts < max_attempts, after backoff_ms * 2^attempts;
 *                                REQUEUE_LUA puts it back in its owner's queue when due
 *   failed (retryable, last) -> failed + an entry in {stream}:dead   FINAL_LUA (+ dlq_bury)
 *   dead letter -> queued        REQUEUE_DEAD_LUA (deadletters.c)
 * A job is settled when finished_ms is set: the tracker did its bookkeeping. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scheduler/jobs_internal.h"

struct sched_tracker {
  const sched_config *c;
  pthread_t consumer, fanout, reaper;
  int started; /* threads started, for stop */
  sched_kafka *kafka; /* the forwarder and the bridge of a Kafka queue (kafka.c), else NULL */
  atomic_bool stop;
};

static bool retryable(pw_code code) {
  return code == PW_E_IO || code == PW_E_STORAGE || code == PW_E_GPU || code == PW_E_INTERNAL ||
         code == PW_E_NO_MEMORY || code == PW_E_INPUT_FETCH;
}

/* ---- state transitions (Lua) -------------------------------------------------------- */

/* queued -> running has one writer, the worker's start event script (docs/queues.md): the
 * tracker only books a job the worker marked running. A late start event of an earlier attempt
 * (the job already retried, so queued again) changes nothing.
 * KEYS: job hash, running zset. ARGV: now, id. */
static const char START_LUA[] =
    "if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end\n"
    "redis.call('HSETNX', KEYS[1], 'started_ms', ARGV[1])\n"
    "redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[2])\n"
    "return 1\n";

/* KEYS: job hash. ARGV: now, stage, step, total. */
static const char PROGRESS_LUA[] =
    "local s = redis.call('HGET', KEYS[1], 'status')\n"
    "if s ~= 'queued' and s ~= 'running' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'updated_ms', ARGV[1], 'stage', ARGV[2], 'step', ARGV[3], 'total', ARGV[4])\n"
    "return 1\n";

/* The latest preview of a running job. KEYS: job hash. ARGV: now, URL, step, total. */
static const char PREVIEW_LUA[] =
    "local s = redis.call('HGET', KEYS[1], 'status')\n"
    "if s ~= 'queued' and s ~= 'running' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'updated_ms', ARGV[1], 'preview_url', ARGV[2], 'preview_step', ARGV[3],\n"
    "  'preview_total', ARGV[4])\n"
    "return 1\n";

/* KEYS: job hash, retry zset, running zset. ARGV: now, id, due. Only a job that
 * is still final (not canceled/requeued meanwhile) goes back to queued. */
static const char RETRY_LUA[] =
    "local s = redis.call('HGET', KEYS[1], 'status')\n"
    "if s ~= 'failed' and s ~= 'canceled' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_ms', ARGV[1],\n"
    "  'cancel', '0', 'cancel_reason', '', 'retry_at_ms', ARGV[3])\n"
    "redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])\n"
    "redis.call('ZREM', KEYS[3], ARGV[2])\n"
    "return 1\n";

/* Retention starts here, the one place a job becomes settled: its record and its webhook
 * delivery log expire job_ttl_s later (batch members stay until their batch is complete:
 * batch.c expires them with it), its entry in the owner's listing index is queued to go at
 * the same time (tracker_trim), and the stored job loses its inline inputs.
 * KEYS: job hash, running, deadlines, retry, owner active set (or "-"), deliveries list,
 * expiring zset. ARGV: now, id, rewritten status ('' = keep), rewritten result, ttl seconds
 * (0 = keep), owner ('' = none), the job without inline inputs ('' = keep). */
static const char FINAL_LUA[] =
    "if redis.call('HEXISTS', KEYS[1], 'finished_ms') == 1 then return 0 end\n"
    "if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4]) end\n"
    "if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'job', ARGV[7]) end\n"
    "redis.call('HSET', KEYS[1], 'finished_ms', ARGV[1], 'updated_ms', ARGV[1])\n"
    "if tonumber(ARGV[5]) > 0 and redis.call('HEXISTS', KEYS[1], 'batch') == 0 then\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[5])\n"
    "  redis.call('EXPIRE', KEYS[6], ARGV[5])\n"
    "  if ARGV[6] ~= '' then\n"
    "    redis.call('ZADD', KEYS[7], tonumber(ARGV[1]) + 1000 * tonumber(ARGV[5]), ARGV[2] .. ' ' .. ARGV[6])\n"
    "  end\n"
    "end\n"
    "redis.call('ZREM', KEYS[2], ARGV[2])\n"
    "redis.call('ZREM', KEYS[3], ARGV[2])\n"
    "redis.call('ZREM', KEYS[4], ARGV[2])\n"
    "if KEYS[5] ~= '-' then redis.call('SREM', KEYS[5], ARGV[2]) end\n"
    "return 1\n";

static int eval_int(const sched_config *c, const char *script, int nkeys, int nargs, const char **args,
                    const size_t *lens, long long *out) {
  redisReply *r = sched_eval(c, script, nkeys, nargs, args, lens);
  if (!r) return PA_ERR_IO;
  int rc = r->type == REDIS_REPLY_INTEGER ? PA_OK : PA_ERR_IO;
  if (out && rc == PA_OK) *out = r->integer;
  freeReplyObject(r);
  return rc;
}

static void on_start(const sched_config *c, const char *id) {
  sched_zsets z = sched_zsets_of(c);
  pa_key key = pa_key_job(id);
  char now[24];
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  const char *args[] = {key.s, z.running, now, id};
  eval_int(c, START_LUA, 2, 2, args, NULL, NULL);
}

static void on_progress(const sched_config *c, const char *id, const char *msg, size_t len) {
  pw_progress p;
  pw_error err;
  pw_progress_init(&p);
  if (pw_progress_decode(msg, len, &p, &err) == 0) {
    pa_key key = pa_key_job(id);
    char now[24], step[24], total[24];
    snprintf(now, sizeof now, "%" PRId64, now_ms());
    snprintf(step, sizeof step, "%" PRId64, p.step);
    snprintf(total, sizeof total, "%" PRId64, p.total);
    const char *args[] = {key.s, now, pw_stage_name(p.stage), step, total};
    eval_int(c, PROGRESS_LUA, 1, 4, args, NULL, NULL);
  }
  pw_progress_free(&p);
}

static void on_preview(const sched_config *c, const char *id, const char *msg, size_t len) {
  pw_progress p;
  pw_error err;
  pw_progress_init(&p);
  if (pw_progress_decode(msg, len, &p, &err) == 0 && p.preview) {
    pa_key key = pa_key_job(id);
    char now[24], step[24], total[24];
    snprintf(now, sizeof now, "%" PRId64, now_ms());
    snprintf(step, sizeof step, "%" PRId64, p.step);
    snprintf(total, sizeof total, "%" PRId64, p.total);
    const char *args[] = {key.s, now, p.preview, step, total};
    eval_int(c, PREVIEW_LUA, 1, 4, args, NULL, NULL);
  }
  pw_progress_free(&p);
}

static void observe(const pw_result *r) {
  for (int s = 0; s < PW_STAGE_COUNT; s++)
    if (r->timings_ms[s] == r->timings_ms[s]) sched_metrics_observe(s, r->timings_ms[s] / 1000.0);
  if (r->total_ms == r->total_ms) sched_metrics_observe(PW_STAGE_COUNT, r->total_ms / 1000.0);
}

static int schedule_retry(const sched_config *c, const char *id, long attempts) {
  sched_zsets z = sched_zsets_of(c);
  pa_key key = pa_key_job(id);
  char now[24], due[24];
  int64_t t = now_ms();
  int64_t delay = (int64_t)c->backoff_ms << (attempts - 1 < 20 ? attempts - 1 : 20);
  snprintf(now, sizeof now, "%" PRId64, t);
  snprintf(due, sizeof due, "%" PRId64, t + delay);
  const char *args[] = {key.s, z.retry, z.running, now, id, due};
  long long ok = 0;
  int rc = eval_int(c, RETRY_LUA, 3, 3, args, NULL, &ok);
  if (rc == PA_OK && ok) sched_metrics_count(SCHED_M_RETRIED);
  return rc;
}

/* An inline input (image or mask bytes, up to 16 MiB each) is not kept once the job has
 * ended: the stored job then names it by digest, https://inline.invalid/sha256/<hex> (".invalid"
 * is reserved and never resolves), so the record still decodes and says what ran. The stream
 * entry goes with the reaper's trim of acknowledged entries. *out NULL: nothing to drop. */
static void drop_inline_inputs(const redisReply *h, uint8_t **out, size_t *out_len) {
  size_t len = 0;
  const char *bytes = jobs_field(h, "job", &len);
  pw_job job;
  pw_error err;
  *out = NULL;
  pw_job_init(&job);
  if (!bytes || pw_job_decode(bytes, len, &job, &err)) goto done;
  pw_image *inputs[] = {&job.image, &job.mask};
  bool dropped = false;
  for (int i = 0; i < 2; i++) {
    pw_image *im = inputs[i];
    if (!im->present || !im->data) continue;
    char hex[65], url[100];
    sha256_hex(im->data, im->len, hex);
    snprintf(url, sizeof url, "https://inline.invalid/sha256/%s", hex);
    free(im->data);
    im->data = NULL;
    im->len = 0;
    im->url = strdup(url);
    dropped = true;
    if (!im->url) goto done;
  }
  if (dropped && pw_job_encode(&job, out, out_len, &err)) *out = NULL;
done:
  pw_job_free(&job);
}

/* Records the end of a job: the bookkeeping, a rewritten Result when the scheduler decides
 * the outcome (deadline, attempts used up), metrics and the batch's shard accounting. */
static void settle(const sched_config *c, const char *id, const redisReply *h, const pw_result *res,
                   pw_status status, pw_code code, const char *message) {
  sched_zsets z = sched_zsets_of(c);
  uint8_t *mp = NULL;
  size_t mp_len = 0;
  bool rewrite = code != PW_OK;
  if (rewrite && jobs_final_result(id, status, code, message, &mp, &mp_len)) return;
  uint8_t *lean = NULL; /* the job without its inline inputs */
  size_t lean_len = 0;
  drop_inline_inputs(h, &lean, &lean_len);
  const char *owner = jobs_field(h, "owner", NULL);
  pa_key key = pa_key_job(id), deliveries = pa_key_job_deliveries(id);
  pa_key active = owner ? pa_key_owner_active(owner) : (pa_key){"-"};
  char now[24], ttl[16];
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  snprintf(ttl, sizeof ttl, "%d", c->job_ttl_s);
  const char *args[] = {key.s, z.running, z.deadlines, z.retry, active.s, deliveries.s, z.expiring,
                        now, id, rewrite ? pw_status_name(status) : "", rewrite ? (const char *)mp : "", ttl,
                        owner ? owner : "", lean ? (const char *)lean : ""};
  size_t lens[14];
  for (int i = 0; i < 14; i++) lens[i] = strlen(args[i]);
  lens[10] = rewrite ? mp_len : 0;
  lens[13] = lean ? lean_len : 0;
  long long first = 0;
  if (eval_int(c, FINAL_LUA, 7, 7, args, lens, &first) == PA_OK && first) {
    sched_metrics_count(status == PW_STATUS_SUCCEEDED ? SCHED_M_SUCCEEDED
                        : status == PW_STATUS_FAILED  ? SCHED_M_FAILED
                                                      : SCHED_M_CANCELED);
    if (res) observe(res);
    const char *batch = jobs_field(h, "batch", NULL), *index = jobs_field(h, "index", NULL);
    if (batch && *batch && index && batch_item_done(c, batch, strtol(index, NULL, 10), status == PW_STATUS_SUCCEEDED))
      fprintf(stderr, "paella-scheduler: batch %s: %s (retried in %d s)\n", batch, pa_errmsg(), BATCH_RETRY_MS / 1000);
  }
  free(lean);
  free(mp);
}

static void on_final(const sched_config *c, const char *id, const char *msg, size_t len) {
  pw_result res;
  pw_error err;
  redisReply *h = NULL;
  pw_result_init(&res);
  if (pw_result_decode(msg, len, &res, &err) != 0 || jobs_fetch(c, id, &h) != PA_OK) goto done;
  if (jobs_field(h, "finished_ms", NULL)) goto done; /* a duplicate event: already settled */
  const char *reason = jobs_field(h, "cancel_reason", NULL), *att = jobs_field(h, "attempts", NULL);
  /* Workers count attempts: each start event increments the field (docs/queues.md). */
  long attempts = att ? strtol(att, NULL, 10) : 1;
  if (attempts < 1) attempts = 1;
  reason = reason ? reason : "";
  if (res.status == PW_STATUS_CANCELED && !strcmp(reason, "deadline")) {
    settle(c, id, h, &res, PW_STATUS_FAILED, PW_E_DEADLINE, "the job's deadline passed while it ran");
  } else if ((res.status == PW_STATUS_FAILED && res.has_error && retryable(res.error_code)) ||
             (res.status == PW_STATUS_CANCELED && !strcmp(reason, "timeout"))) {
    if (attempts < c->max_attempts) {
      schedule_retry(c, id, attempts);
    } else {
      char m[PW_MAX_MESSAGE_TEXT];
      snprintf(m, sizeof m, "gave up after %ld attempts: %.900s", attempts,
               res.error_message ? res.error_message : "timed out");
      if (dlq_bury(c, id, pw_code_name(PW_E_TOO_MANY_ATTEMPTS), m) == PA_OK) sched_metrics_count(SCHED_M_DEAD);
      settle(c, id, h, &res, PW_STATUS_FAILED, PW_E_TOO_MANY_ATTEMPTS, m);
    }
  } else {
    settle(c, id, h, &res, res.status, PW_OK, NULL);
  }
done:
  if (h) freeReplyObject(h);
  pw_result_free(&res);
}

/* ---- the group consumer ------------------------------------------------------------- */

static const char *entry_field(const redisReply *fields, const char *name, size_t *len) {
  for (size_t i = 0; i + 1 < fields->elements; i += 2)
    if (!strcmp(fields->element[i]->str, name)) {
      if (len) *len = fields->element[i + 1]->len;
      return fields->element[i + 1]->str;
    }
  return NULL;
}

/* Returns true for a start event (a worker took an entry: its lane has room again). */
static bool process_entry(const sched_config *c, const redisReply *fields) {
  size_t len = 0;
  const char *type = entry_field(fields, "type", NULL), *id = entry_field(fields, "id", NULL);
  const char *msg = entry_field(fields, "msg", &len);
  if (!type || !id || strlen(id) > PW_MAX_ID_BYTES) return false;
  if (!strcmp(type, "start")) on_start(c, id);
  else if (!strcmp(type, "progress") && msg) on_progress(c, id, msg, len);
  else if (!strcmp(type, "preview") && msg) on_preview(c, id, msg, len);
  else if ((!strcmp(type, "completed") || !strcmp(type, "failed")) && msg) on_final(c, id, msg, len);
  return !strcmp(type, "start");
}

static void ensure_group(const sched_config *c, const char *events) {
  redisReply *r = sched_cmdf(c, "XGROUP CREATE %s %s 0 MKSTREAM", events, c->redis.events_group);
  if (r) freeReplyObject(r); /* BUSYGROUP: it exists */
}

/* Reads one batch: first this consumer's own pending entries ("0": left by a crash of a
 * scheduler with the same name), then new ones (">"). Returns the entries handled. */
static int consume_once(const sched_config *c, const char *events, const char *from) {
  redisReply *r = sched_cmdf(c, "XREADGROUP GROUP %s %s COUNT 256 BLOCK 500 STREAMS %s %s", c->redis.events_group,
                             c->consumer, events, from);
  if (!r) return -1;
  int n = 0;
  bool started = false;
  if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "NOGROUP")) ensure_group(c, events);
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
    const redisReply *entries = r->element[0]->element[1];
    for (size_t i = 0; i < entries->elements; i++) {
      const redisReply *e = entries->element[i];
      if (e->elements == 2 && e->element[1]->type == REDIS_REPLY_ARRAY) started |= process_entry(c, e->element[1]);
      redisReply *ack = sched_cmdf(c, "XACK %s %s %s", events, c->redis.events_group, e->element[0]->str);
      if (ack) freeReplyObject(ack);
      n++;
    }
  }
  freeReplyObject(r);
  if (started) dispatch_all(c, NULL); /* refill the lanes now rather than at the next reaper pass */
  return n;
}

static void *consumer_main(void *arg) {
  sched_tracker *t = arg;
  pa_key k = pa_key_events(t->c->redis.stream);
  const char *events = k.s;
  ensure_group(t->c, events);
  while (!t->stop && consume_once(t->c, events, "0") > 0) {}
  while (!t->stop)
    if (consume_once(t->c, events, ">") < 0) usleep(200000); /* Redis away: retry */
  sched_redis_drop();
  return NULL;
}

/* ---- fan-out ------------------------------------------------------------------------ */

static char *event_json(const char *type, const char *msg, size_t len) {
  char *out = NULL;
  pw_error err;
  if (!strcmp(type, "completed") || !strcmp(type, "failed")) {
    pw_result r;
    pw_result_init(&r);
    if (pw_result_decode(msg, len, &r, &err) == 0) pw_result_to_json(&r, 0, &out, &err);
    pw_result_free(&r);
  } else {
    pw_progress p;
    pw_progress_init(&p);
    if (pw_progress_decode(msg, len, &p, &err) == 0) pw_progress_to_json(&p, 0, &out, &err);
    pw_progress_free(&p);
  }
  return out;
}

static void *fanout_main(void *arg) {
  sched_tracker *t = arg;
  pa_key k = pa_key_events(t->c->redis.stream);
  const char *events = k.s;
  char last[64] = "$";
  while (!t->stop) {
    redisReply *r = sched_cmdf(t->c, "XREAD COUNT 512 BLOCK 500 STREAMS %s %s", events, last);
    if (!r) {
      usleep(200000);
      continue;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
      const redisReply *entries = r->element[0]->element[1];
      for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        snprintf(last, sizeof last, "%s", e->element[0]->str);
        size_t len = 0;
        const char *type = entry_field(e->element[1], "type", NULL), *id = entry_field(e->element[1], "id", NULL);
        const char *msg = entry_field(e->element[1], "msg", &len);
        if (!type || !id) continue;
        char *json = msg ? event_json(type, msg, len) : NULL;
        hub_publish(id, type, json);
        free(json);
      }
    }
    freeReplyObject(r);
  }
  sched_redis_drop();
  return NULL;
}

/* ---- reaper ------------------------------------------------------------------------- */

/* A due retry goes back to the front of its owner's queue in its lane (it has waited its turn
 * once already) and is dispatched like any job.
 * KEYS: job hash, lane stream, retry zset, lane ring. ARGV: id, job msgpack, now, queue prefix,
 * group, depth. */
static const char REQUEUE_LUA[] =
    SCHED_WAIT_LUA
    "redis.call('ZREM', KEYS[3], ARGV[1])\n"
    "if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'job', ARGV[2], 'updated_ms', ARGV[3])\n"
    "wait_push(KEYS[4], ARGV[4], redis.call('HGET', KEYS[1], 'owner') or '', ARGV[1], true)\n"
    "dispatch(KEYS[2], KEYS[4], ARGV[4], ARGV[5], ARGV[6])\n"
    "return 1\n";

/* A queued job past its deadline is marked failed; its entry stays for a worker to acknowledge
 * unrun (never XDEL an unread entry: see CANCEL_LUA in jobs.c).
 * KEYS: job hash, stream, events, deadlines, retry. ARGV: id, now, failed result msgpack. */
static const char DEADLINE_LUA[] =
    "redis.call('ZREM', KEYS[4], ARGV[1])\n"
    "local h = redis.call('HMGET', KEYS[1], 'status', 'entry')\n"
    "if h[1] == 'queued' then\n"
    "  redis.call('ZREM', KEYS[5], ARGV[1])\n"
    "  redis.call('HSET', KEYS[1], 'status', 'failed', 'result', ARGV[3], 'updated_ms', ARGV[2])\n"
    "  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'type', 'failed', 'id', ARGV[1], 'msg', ARGV[3])\n"
    "  return 1\n"
    "elseif h[1] == 'running' then\n"
    "  redis.call('HSET', KEYS[1], 'cancel', '1', 'cancel_reason', 'deadline', 'updated_ms', ARGV[2])\n"
    "  return 2\n"
    "end\n"
    "return 0\n";

/* KEYS: job hash, running zset. ARGV: id, now. */
static const char TIMEOUT_LUA[] =
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'cancel', '1', 'cancel_reason', 'timeout', 'updated_ms', ARGV[2])\n"
    "return 1\n";

static redisReply *due(const sched_config *c, const char *zset, int64_t until) {
  redisReply *r = sched_cmdf(c, "ZRANGEBYSCORE %s -inf %" PRId64 " LIMIT 0 256", zset, until);
  if (r && r->type != REDIS_REPLY_ARRAY) {
    freeReplyObject(r);
    r = NULL;
  }
  return r;
}

static void requeue_one(const sched_config *c, const char *id, const char *now) {
  sched_zsets z = sched_zsets_of(c);
  redisReply *h = NULL;
  uint8_t *mp = NULL;
  size_t len = 0, mp_len = 0;
  pw_job job;
  pw_error err;
  pw_job_init(&job);
  pa_key key = pa_key_job(id);
  int lane = PA_LANE_NORMAL;
  if (jobs_fetch(c, id, &h) == PA_OK) {
    lane = sched_lane_of_hash(h);
    const char *bytes = jobs_field(h, "job", &len), *att = jobs_field(h, "attempts", NULL);
    if (bytes && pw_job_decode(bytes, len, &job, &err) == 0) {
      job.attempt = att ? strtol(att, NULL, 10) : 0;
      if (job.attempt > PW_ATTEMPT_MAX) job.attempt = PW_ATTEMPT_MAX;
      pw_job_encode(&job, &mp, &mp_len, &err);
    }
  }
  sched_lane l = sched_lane_of(c, lane);
  const char *args[] = {key.s, l.stream.s, z.retry, l.ring.s, id, mp ? (const char *)mp : "", now,
                        l.queue.s, c->redis.group, l.depth};
  size_t lens[10];
  for (int i = 0; i < 10; i++) lens[i] = i == 5 ? 0 : strlen(args[i]);
  lens[5] = mp ? mp_len : 0;
  if (mp) eval_int(c, REQUEUE_LUA, 4, 6, args, lens, NULL);
  else {
    redisReply *r = sched_cmdf(c, "ZREM %s %s", z.retry, id); /* unreadable: drop */
    if (r) freeReplyObject(r);
  }
  free(mp);
  pw_job_free(&job);
  if (h) freeReplyObject(h);
}

static void deadline_one(const sched_config *c, const char *id, const char *now) {
  sched_zsets z = sched_zsets_of(c);
  uint8_t *mp = NULL;
  size_t mp_len = 0;
  if (jobs_final_result(id, PW_STATUS_FAILED, PW_E_DEADLINE, "the job's deadline passed before it ran", &mp, &mp_len))
    return;
  pa_key key = pa_key_job(id), events = pa_key_events(c->redis.stream);
  const char *args[] = {key.s, c->redis.stream, events.s, z.deadlines, z.retry, id, now, (const char *)mp};
  size_t lens[8];
  for (int i = 0; i < 8; i++) lens[i] = strlen(args[i]);
  lens[7] = mp_len;
  long long outcome = 0;
  eval_int(c, DEADLINE_LUA, 5, 3, args, lens, &outcome);
  /* A running job's cancel flag reaches Kafka workers as a cancel record (no retry follows a
   * deadline, so the record cannot cancel a later attempt; a timeout's retry would be). */
  if (outcome == 2 && c->kafka.on && sched_kafka_cancel(c, id))
    fprintf(stderr, "paella-scheduler: deadline of %s: %s\n", id, pa_errmsg());
  free(mp);
}

int tracker_reap(const sched_config *c) {
  sched_zsets z = sched_zsets_of(c);
  int64_t t = now_ms();
  char now[24];
  snprintf(now, sizeof now, "%" PRId64, t);
  redisReply *r = due(c, z.retry, t);
  if (!r) return PA_ERR_IO;
  for (size_t i = 0; i < r->elements; i++) requeue_one(c, r->element[i]->str, now);
  freeReplyObject(r);
  if (!(r = due(c, z.deadlines, t))) return PA_ERR_IO;
  for (size_t i = 0; i < r->elements; i++) deadline_one(c, r->element[i]->str, now);
  freeReplyObject(r);
  if (!(r = due(c, z.running, t - (int64_t)c->job_timeout_s * 1000))) return PA_ERR_IO;
  for (size_t i = 0; i < r->elements; i++) {
    pa_key key = pa_key_job(r->element[i]->str);
    const char *args[] = {key.s, z.running, r->element[i]->str, now};
    eval_int(c, TIMEOUT_LUA, 2, 2, args, NULL, NULL);
  }
  freeReplyObject(r);
  batch_retry_due(c);
  return PA_OK;
}

/* Acknowledged entries go: each lane's stream keeps everything from the oldest entry some group
 * still needs (its oldest pending entry, else the first one after its last delivered one) and
 * nothing older, so no unread entry is ever removed (the lag stays exact: XTRIM leaves no
 * tombstone, docs/queues.md) and an ended job's entry (inline input bytes included) is gone
 * within one trim period even when no later job is read from its lane. Jobs still waiting in
 * their owners' queues (dispatch.c) are on no stream yet, so trimming never touches them. The
 * events stream is trimmed the same way, but keeps at least the last EVENTS_KEEP_MS: every
 * scheduler replica's fan-out (SSE, Prefer: wait) reads it without a group, a little behind
 * the tracker's group. Dead letters keep the newest dead_letters_max.
 * Owner index entries go once their job's record is gone (at most 1000 a pass): a record that
 * lives on (a dead letter requeued: PERSIST, waiting or running again) keeps its entry, and
 * one not expired yet (another replica's clock) is looked at again when Redis expires it.
 * Atomic per call, so a group's position cannot move in between.
 * KEYS: dead stream, events stream, expiring zset, the lanes' streams. ARGV: dead letters kept,
 * now (ms), owner index key prefix and suffix. Returns entries trimmed from the lanes. */
#define EVENTS_KEEP_MS "60000"
static const char TRIM_LUA[] =
    "local function older(a, b)\n"
    "  local am, as = string.match(a, '(%d+)-(%d+)')\n"
    "  local bm, bs = string.match(b, '(%d+)-(%d+)')\n"
    "  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)\n"
    "  return am < bm or (am == bm and as < bs)\n"
    "end\n"
    "local function keep_of(stream)\n"
    "  local keep = nil\n"
    "  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do\n"
    "    local f = {}\n"
    "    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end\n"
    "    local id\n"
    "    if f['pending'] > 0 then id = redis.call('XPENDING', stream, f['name'])[2]\n"
    "    else\n" /* just past the last delivered entry: it is acknowledged too */
    "      local ms, seq = string.match(f['last-delivered-id'], '(%d+)-(%d+)')\n"
    "      id = ms .. '-' .. string.format('%d', tonumber(seq) + 1)\n"
    "    end\n"
    "    if not keep or older(id, keep) then keep = id end\n"
    "  end\n"
    "  return keep\n"
    "end\n"
    "local now = tonumber(ARGV[2])\n"
    "redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])\n"
    "for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)) do\n"
    "  local id, owner = string.match(m, '^(%S+) (.*)$')\n"
    "  local ttl = id and redis.call('PTTL', '" PA_KEY_JOB_PREFIX "' .. id) or -2\n"
    "  if ttl >= 0 then\n" /* 0: it expires within the millisecond, not gone yet */
    "    redis.call('ZADD', KEYS[3], now + ttl + 1, m)\n"
    "  else\n"
    "    if ttl == -2 and id then redis.call('ZREM', ARGV[3] .. owner .. ARGV[4], id) end\n"
    "    redis.call('ZREM', KEYS[3], m)\n"
    "  end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  local floor = (now - " EVENTS_KEEP_MS ") .. '-0'\n"
    "  local keep = keep_of(KEYS[2])\n"
    "  if not keep or older(floor, keep) then keep = floor end\n"
    "  redis.call('XTRIM', KEYS[2], 'MINID', keep)\n"
    "end\n"
    "local trimmed = 0\n"
    "for i = 4, #KEYS do\n"
    "  if redis.call('EXISTS', KEYS[i]) == 1 then\n"
    "    local keep = keep_of(KEYS[i])\n"
    "    if keep then trimmed = trimmed + redis.call('XTRIM', KEYS[i], 'MINID', keep) end\n"
    "  end\n"
    "end\n"
    "return trimmed\n";

int tracker_trim(const sched_config *c, long long *trimmed) {
  sched_zsets z = sched_zsets_of(c);
  pa_key dead = pa_key_dead(c->redis.stream), events = pa_key_events(c->redis.stream);
  char keep[24], now[24];
  snprintf(keep, sizeof keep, "%d", c->dead_letters_max);
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  pa_key lanes[PA_LANES];
  const char *args[3 + PA_LANES + 4];
  int n = 0;
  args[n++] = dead.s;
  args[n++] = events.s;
  args[n++] = z.expiring;
  for (int lane = 0; lane < PA_LANES; lane++) {
    lanes[lane] = pa_key_lane(c->redis.stream, lane);
    args[n++] = lanes[lane].s;
  }
  args[n++] = keep;
  args[n++] = now;
  args[n++] = PA_KEY_OWNER_PREFIX;
  args[n++] = PA_KEY_OWNER_JOBS_SUFFIX;
  long long total = 0;
  int rc = eval_int(c, TRIM_LUA, 3 + PA_LANES, 4, args, NULL, &total);
  if (trimmed) *trimmed = total;
  return rc;
}

static void *reaper_main(void *arg) {
  sched_tracker *t = arg;
  for (unsigned pass = 0; !t->stop; pass++) {
    if (pass % 25 == 0) { /* every 5 s */
      dispatch_ensure_lanes(t->c);
      tracker_trim(t->c, NULL);
    }
    tracker_reap(t->c);
    dispatch_all(t->c, NULL);
    for (int i = 0; i < 4 && !t->stop; i++) usleep(50000); /* 200 ms between passes */
  }
  sched_redis_drop();
  return NULL;
}

int tracker_start(const sched_config *c, sched_tracker **out) {
  sched_tracker *t = calloc(1, sizeof *t);
  if (!t) return pa_fail(PA_ERR_NOMEM, "tracker");
  t->c = c;
  if (c->kafka.on) {
    int rc = sched_kafka_start(c, &t->kafka);
    if (rc) {
      free(t);
      return rc;
    }
  }
  void *(*mains[3])(void *) = {consumer_main, fanout_main, reaper_main};
  pthread_t *threads[3] = {&t->consumer, &t->fanout, &t->reaper};
  for (int i = 0; i < 3; i++) {
    if (pthread_create(threads[i], NULL, mains[i], t) != 0) {
      tracker_stop(t);
      return pa_fail(PA_ERR_NOMEM, "tracker: pthread_create failed");
    }
    t->started++;
  }
  *out = t;
  return PA_OK;
}

void tracker_stop(sched_tracker *t) {
  if (!t) return;
  t->stop = true;
  pthread_t *threads[3] = {&t->consumer, &t->fanout, &t->reaper};
  for (int i = 0; i < t->started; i++) pthread_join(*threads[i], NULL);
  sched_kafka_stop(t->kafka);
  free(t);
}
