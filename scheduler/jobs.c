/* The job registry: paella:job:{id} hashes (docs/queues.md) and the scheduler's own indexes.
 * Every transition is one Lua script, so Redis applies it atomically and the AOF records it
 * whole; a crash never leaves a job in the hash but neither waiting in its owner's queue nor on
 * a lane's stream, or the reverse (dispatch.c). Key names come from worker/redis_keys.h. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "scheduler/jobs_internal.h"

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void jobs_new_id(char *out, size_t cap) {
  unsigned char r[13];
  if (RAND_bytes(r, sizeof r) != 1) {
    /* The CSPRNG failing is near impossible; time + address still gives unique ids. */
    uint64_t t = (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)out;
    memcpy(r, &t, sizeof t);
  }
  int n = snprintf(out, cap, "j-");
  for (size_t i = 0; i < sizeof r && (size_t)n + 2 < cap; i++) n += snprintf(out + n, cap - (size_t)n, "%02x", r[i]);
}

bool jobs_is_final(const char *s) {
  return !strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "canceled");
}

/* KEYS: job hash, lane stream, idempotency hash ("-": none), owner index, owner active set,
 *       deadlines, lane ring. ARGV: id, job msgpack, now, owner, max_active, body sha, idem
 *       ttl, batch, index, deadline_ms, queue prefix, group, depth, lane name.
 * The job waits in its owner's queue of its lane and is dispatched at once when the lane has
 * room (SCHED_WAIT_LUA). Returns {0, id} created, {1, id} existing, {2, id} key reused with
 * another body, {3, ""} over quota. */
static const char SUBMIT_LUA[] =
    SCHED_WAIT_LUA
    "if KEYS[3] ~= '-' then\n"
    "  local prev = redis.call('HMGET', KEYS[3], 'id', 'sha')\n"
    "  if prev[1] then\n"
    "    if prev[2] ~= ARGV[6] then return {2, prev[1]} end\n"
    "    return {1, prev[1]}\n"
    "  end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {1, ARGV[1]} end\n"
    "if redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[5]) then return {3, ''} end\n"
    "redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', '0', 'updated_ms', ARGV[3],\n"
    "  'created_ms', ARGV[3], 'owner', ARGV[4], 'job', ARGV[2], 'lane', ARGV[14])\n"
    "if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'batch', ARGV[8], 'index', ARGV[9]) end\n"
    "redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])\n"
    "redis.call('SADD', KEYS[5], ARGV[1])\n"
    "if tonumber(ARGV[10]) > 0 then\n"
    "  redis.call('HSET', KEYS[1], 'deadline_ms', ARGV[10])\n"
    "  redis.call('ZADD', KEYS[6], ARGV[10], ARGV[1])\n"
    "end\n"
    "if KEYS[3] ~= '-' then\n"
    "  redis.call('HSET', KEYS[3], 'id', ARGV[1], 'sha', ARGV[6])\n"
    "  redis.call('EXPIRE', KEYS[3], ARGV[7])\n"
    "end\n"
    "wait_push(KEYS[7], ARGV[11], ARGV[4], ARGV[1], false)\n"
    "dispatch(KEYS[2], KEYS[7], ARGV[11], ARGV[12], ARGV[13])\n"
    "return {0, ARGV[1]}\n";

int jobs_submit(const sched_config *c, const pw_job *job, const char *owner, int max_active,
                const char *body_sha, const char *batch, long index, submit_outcome *outcome,
                char *existing_id, size_t existing_cap) {
  uint8_t *mp = NULL;
  size_t mp_len = 0;
  pw_error perr;
  redisReply *r = NULL;
  int rc = PA_OK;
  if (pw_job_encode(job, &mp, &mp_len, &perr))
    return pa_fail(PA_ERR_INVALID, "encode job: %s (%s)", perr.message, perr.field);
  pa_key k_job = pa_key_job(job->id), k_index = pa_key_owner_jobs(owner), k_active = pa_key_owner_active(owner);
  pa_key k_idem = job->idempotency_key ? pa_key_idempotency(owner, job->idempotency_key) : (pa_key){"-"};
  sched_zsets z = sched_zsets_of(c);
  int lane = pa_lane_of_priority(job->priority);
  sched_lane l = sched_lane_of(c, lane);
  char now[24], maxa[24], ttl[24], idx[24], deadline[24];
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  snprintf(maxa, sizeof maxa, "%d", max_active);
  snprintf(ttl, sizeof ttl, "%d", c->idempotency_ttl_s);
  snprintf(idx, sizeof idx, "%ld", index);
  snprintf(deadline, sizeof deadline, "%" PRId64, job->deadline_ms);
  const char *args[] = {k_job.s, l.stream.s, k_idem.s, k_index.s, k_active.s, z.deadlines, l.ring.s,
                        job->id, (const char *)mp, now, owner, maxa, body_sha ? body_sha : "", ttl,
                        batch ? batch : "", idx, deadline, l.queue.s, c->redis.group, l.depth, pa_lane_name(lane)};
  enum { NARGS = sizeof args / sizeof args[0] };
  size_t lens[NARGS];
  for (int i = 0; i < NARGS; i++) lens[i] = strlen(args[i]);
  lens[8] = mp_len;
  r = sched_eval(c, SUBMIT_LUA, 7, NARGS - 7, args, lens);
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_INTEGER) {
    rc = r ? pa_fail(PA_ERR_IO, "submit: unexpected reply") : PA_ERR_IO;
    goto fail;
  }
  *outcome = (submit_outcome)r->element[0]->integer;
  if (existing_id && r->element[1]->type == REDIS_REPLY_STRING)
    snprintf(existing_id, existing_cap, "%s", r->element[1]->str);
fail:
  if (r) freeReplyObject(r);
  free(mp);
  return rc;
}

/* ---- rendering ---------------------------------------------------------------------- */

static const char *field_of(const redisReply *h, const char *name, size_t *len) {
  for (size_t i = 0; i + 1 < h->elements; i += 2)
    if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, name) == 0) {
      if (len) *len = h->element[i + 1]->len;
      return h->element[i + 1]->str;
    }
  return NULL;
}

static void set_int_field(json_t *o, const char *key, const redisReply *h, const char *name) {
  const char *v = field_of(h, name, NULL);
  if (v && *v) json_object_set_new(o, key, json_integer(strtoll(v, NULL, 10)));
}

/* The Result (msgpack) -> JSON object, or NULL when absent/unreadable. */
static json_t *result_json(const char *mp, size_t len) {
  pw_result res;
  pw_error err;
  char *text = NULL;
  json_t *out = NULL;
  pw_result_init(&res);
  if (pw_result_decode(mp, len, &res, &err) == 0 && pw_result_to_json(&res, 0, &text, &err) == 0)
    out = json_loads(text, 0, NULL);
  free(text);
  pw_result_free(&res);
  return out;
}

static json_t *progress_json(const redisReply *h) {
  const char *stage = field_of(h, "stage", NULL);
  if (!stage) return NULL;
  json_t *p = json_object();
  json_object_set_new(p, "stage", json_string(stage));
  set_int_field(p, "step", h, "step");
  set_int_field(p, "total", h, "total");
  return p;
}

json_t *jobs_resource(const char *id, const redisReply *h) {
  json_t *o = json_object();
  const char *status = field_of(h, "status", NULL), *v;
  size_t len = 0;
  json_object_set_new(o, "id", json_string(id));
  json_object_set_new(o, "status", json_string(status ? status : "queued"));
  set_int_field(o, "attempts", h, "attempts");
  json_t *t = json_object();
  set_int_field(t, "created_ms", h, "created_ms");
  set_int_field(t, "started_ms", h, "started_ms");
  set_int_field(t, "finished_ms", h, "finished_ms");
  set_int_field(t, "updated_ms", h, "updated_ms");
  set_int_field(t, "deadline_ms", h, "deadline_ms");
  json_object_set_new(o, "times", t);
  if ((v = field_of(h, "cancel", NULL)) && !strcmp(v, "1")) json_object_set_new(o, "cancel_requested", json_true());
  json_t *p = progress_json(h);
  if (p) json_object_set_new(o, "progress", p);
  if ((v = field_of(h, "preview_url", NULL)) && *v) { /* the latest preview (preview_every) */
    /* a presigned URL (S3) or the key from the store's root (GET .../preview serves it) */
    bool is_url = !strncmp(v, "https://", 8) || !strncmp(v, "http://", 7) || !strncmp(v, "file://", 7);
    json_t *pv = json_pack("{s:s}", is_url ? "url" : "key", v);
    set_int_field(pv, "step", h, "preview_step");
    set_int_field(pv, "total", h, "preview_total");
    json_object_set_new(o, "preview", pv);
  }
  if ((v = field_of(h, "batch", NULL)) && *v) {
    json_t *b = json_object();
    json_object_set_new(b, "id", json_string(v));
    set_int_field(b, "index", h, "index");
    json_object_set_new(o, "batch", b);
  }
  if ((v = field_of(h, "result", &len)) && len) {
    json_t *res = result_json(v, len);
    if (res) {
      json_t *e = json_object_get(res, "error");
      if (e) json_object_set(o, "error", e);
      json_t *tm = json_object_get(res, "timings_ms");
      if (tm) json_object_set(o, "timings_ms", tm);
      json_object_set_new(o, "result", res);
    }
  }
  return o;
}

int jobs_fetch(const sched_config *c, const char *id, redisReply **out) {
  pa_key k = pa_key_job(id);
  const char *key = k.s;
  const char *argv[] = {"HGETALL", key};
  redisReply *r = sched_cmd(c, 2, argv, NULL);
  if (!r) return PA_ERR_IO;
  if (r->type != REDIS_REPLY_ARRAY) {
    freeReplyObject(r);
    return pa_fail(PA_ERR_IO, "HGETALL %s: unexpected reply", key);
  }
  if (r->elements == 0) {
    freeReplyObject(r);
    return pa_fail(PA_ERR_NOTFOUND, "no job %s", id); /* unknown, or expired (--job-ttl after it ended) */
  }
  *out = r;
  return PA_OK;
}

const char *jobs_field(const redisReply *h, const char *name, size_t *len) { return field_of(h, name, len); }

int jobs_render(const sched_config *c, const char *id, const char *owner, char **json, char *status,
                size_t status_cap) {
  redisReply *h = NULL;
  int rc = jobs_fetch(c, id, &h);
  if (rc) return rc;
  const char *o = field_of(h, "owner", NULL);
  if (owner && (!o || strcmp(o, owner) != 0)) {
    freeReplyObject(h);
    return pa_fail(PA_ERR_NOTFOUND, "no job %s", id); /* another key's job: do not reveal it */
  }
  json_t *res = jobs_resource(id, h);
  if (status) {
    const char *s = field_of(h, "status", NULL);
    /* "settled": final and seen by the tracker (retry decided, bookkeeping done). */
    const char *fin = field_of(h, "finished_ms", NULL);
    snprintf(status, status_cap, "%s%s", s ? s : "queued", s && jobs_is_final(s) && !fin ? "?" : "");
  }
  *json = json_dumps(res, JSON_COMPACT);
  json_decref(res);
  freeReplyObject(h);
  return *json ? PA_OK : pa_fail(PA_ERR_NOMEM, "render job");
}

/* ---- cancel ------------------------------------------------------------------------- */

/* A queued job's stream entry is not deleted: XDEL of an entry no consumer has read breaks the
 * group's lag (null in Redis 7.0-7.2, what KEDA wakes workers by). The final status marks it;
 * the worker that claims it sees the job settled and acknowledges it without running it. A job
 * still waiting in its owner's queue (not yet dispatched) is dropped by the dispatcher.
 * KEYS: job hash, stream, events stream, retry zset. ARGV: now, owner ('' any), id, result.
 * {-1} unknown, {0, status} already final, {1} canceled while queued, {2} flag set (running). */
static const char CANCEL_LUA[] =
    "local h = redis.call('HMGET', KEYS[1], 'status', 'owner', 'entry')\n"
    "if not h[1] then return {-1, ''} end\n"
    "if ARGV[2] ~= '' and h[2] ~= ARGV[2] then return {-1, ''} end\n"
    "if h[1] == 'queued' then\n"
    "  redis.call('ZREM', KEYS[4], ARGV[3])\n"
    "  redis.call('HSET', KEYS[1], 'status', 'canceled', 'cancel', '1', 'updated_ms', ARGV[1],\n"
    "    'result', ARGV[4])\n"
    "  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'type', 'failed', 'id', ARGV[3],\n"
    "    'msg', ARGV[4])\n"
    "  return {1, 'canceled'}\n"
    "elseif h[1] == 'running' then\n"
    "  redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_ms', ARGV[1])\n"
    "  return {2, 'running'}\n"
    "end\n"
    "return {0, h[1]}\n";

int jobs_final_result(const char *id, pw_status st, pw_code code, const char *msg, uint8_t **mp, size_t *len) {
  pw_result r;
  pw_error err;
  pw_result_init(&r);
  r.job_id = strdup(id);
  r.status = st;
  if (code != PW_OK) {
    r.has_error = 1;
    r.error_code = code;
    r.error_message = strdup(msg);
  }
  int rc = (!r.job_id || (code != PW_OK && !r.error_message)) ? pa_fail(PA_ERR_NOMEM, "result")
           : pw_result_encode(&r, mp, len, &err) ? pa_fail(PA_ERR_INVALID, "encode result: %s", err.message)
                                                  : PA_OK;
  pw_result_free(&r);
  return rc;
}

int jobs_cancel(const sched_config *c, const char *id, const char *owner, char *state, size_t cap) {
  uint8_t *mp = NULL;
  size_t mp_len = 0;
  redisReply *r = NULL;
  int rc = jobs_final_result(id, PW_STATUS_CANCELED, PW_E_CANCELED, "canceled by a client", &mp, &mp_len);
  if (rc) return rc;
  pa_key k_job = pa_key_job(id), k_events = pa_key_events(c->redis.stream);
  char now[24];
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  sched_zsets z = sched_zsets_of(c);
  const char *args[] = {k_job.s, c->redis.stream, k_events.s, z.retry, now, owner ? owner : "", id, (const char *)mp};
  size_t lens[8];
  for (int i = 0; i < 8; i++) lens[i] = strlen(args[i]);
  lens[7] = mp_len;
  r = sched_eval(c, CANCEL_LUA, 4, 4, args, lens);
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
    rc = r ? pa_fail(PA_ERR_IO, "cancel: unexpected reply") : PA_ERR_IO;
    goto fail;
  }
  long long outcome = r->element[0]->integer;
  snprintf(state, cap, "%s", r->element[1]->str ? r->element[1]->str : "");
  if (outcome < 0) rc = pa_fail(PA_ERR_NOTFOUND, "no job %s", id);
  /* On Kafka the workers learn of a cancel from {topic}.control, not from the hash: a queued job
   * may already be on the jobs topic, a running one checks the record between steps. A repeated
   * cancel produces the record again (compaction keeps one), so a client retrying after a 503
   * (brokers away) gets it written. */
  else if (outcome == 0 && c->kafka.on && !strcmp(state, "canceled") && sched_kafka_cancel(c, id)) rc = PA_ERR_IO;
  else if (outcome == 0) rc = pa_fail(PA_ERR_INVALID, "job %s is already %s", id, state);
  else if (c->kafka.on) rc = sched_kafka_cancel(c, id);
fail:
  if (r) freeReplyObject(r);
  free(mp);
  return rc;
}

/* ---- listing ------------------------------------------------------------------------ */

/* Pages walk the owner's index newest first by created_ms. Many jobs share a millisecond,
 * so the cursor is "SCORE-K": resume at SCORE (inclusive) after the K members with exactly
 * that score already returned. A status filter skips non-matching jobs, reading at most ten
 * pages' worth of hashes per request so one call stays bounded. */
typedef struct {
  char score[32];
  long same;
} list_pos;

static int parse_cursor(const char *cursor, list_pos *p) {
  snprintf(p->score, sizeof p->score, "+inf");
  p->same = 0;
  if (!cursor || !*cursor) return PA_OK;
  char *end;
  long long s = strtoll(cursor, &end, 10);
  if (end == cursor || *end != '-') return pa_fail(PA_ERR_INVALID, "bad cursor");
  long k = strtol(end + 1, &end, 10);
  if (*end || k < 0 || s < 0) return pa_fail(PA_ERR_INVALID, "bad cursor");
  snprintf(p->score, sizeof p->score, "%lld", s);
  p->same = k;
  return PA_OK;
}

/* Reads up to `limit` index entries after *p, appends matching jobs to items, advances *p.
 * Returns the number of index entries read (-1 on a Redis error). */
static int list_step(const sched_config *c, const char *k_index, const char *status, int limit,
                     list_pos *p, json_t *items) {
  char count[16], offset[24];
  snprintf(count, sizeof count, "%d", limit);
  snprintf(offset, sizeof offset, "%ld", p->same);
  const char *argv[] = {"ZREVRANGEBYSCORE", k_index, p->score, "-inf", "WITHSCORES", "LIMIT", offset, count};
  redisReply *r = sched_cmd(c, 8, argv, NULL);
  if (!r || r->type != REDIS_REPLY_ARRAY) {
    if (r) freeReplyObject(r);
    return -1;
  }
  int n = (int)(r->elements / 2);
  for (int i = 0; i < n; i++) {
    const char *id = r->element[2 * i]->str, *score = r->element[2 * i + 1]->str;
    if (strcmp(score, p->score) == 0) p->same++;
    else {
      snprintf(p->score, sizeof p->score, "%s", score);
      p->same = 1;
    }
    redisReply *h = NULL;
    if (jobs_fetch(c, id, &h)) continue; /* expired or removed since */
    const char *s = field_of(h, "status", NULL);
    if (!status || (s && strcmp(s, status) == 0)) json_array_append_new(items, jobs_resource(id, h));
    freeReplyObject(h);
    if (json_array_size(items) == (size_t)limit && i + 1 < n) {
      n = i + 1; /* stop exactly after the last returned item */
      break;
    }
  }
  freeReplyObject(r);
  return n;
}

int jobs_list(const sched_config *c, const char *owner, const char *status, const char *cursor,
              int limit, char **json) {
  pa_key index = pa_key_owner_jobs(owner);
  const char *k_index = index.s;
  list_pos pos;
  int rc = parse_cursor(cursor, &pos);
  if (rc) return rc;
  json_t *items = json_array();
  bool more = true;
  for (int round = 0; round < 10 && json_array_size(items) < (size_t)limit; round++) {
    int want = limit - (int)json_array_size(items);
    int n = list_step(c, k_index, status, want, &pos, items);
    if (n < 0) {
      json_decref(items);
      return pa_fail(PA_ERR_IO, "list jobs: redis");
    }
    if (n < want) {
      more = false; /* the index is exhausted */
      break;
    }
  }
  json_t *page = json_object();
  json_object_set_new(page, "data", items);
  char next[64];
  snprintf(next, sizeof next, "%s-%ld", pos.score, pos.same);
  json_object_set_new(page, "next_cursor", more && strcmp(pos.score, "+inf") ? json_string(next) : json_null());
  *json = json_dumps(page, JSON_COMPACT);
  json_decref(page);
  return *json ? PA_OK : pa_fail(PA_ERR_NOMEM, "list jobs");
}
