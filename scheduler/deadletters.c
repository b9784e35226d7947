/* The dead-letter stream {stream}:dead (docs/queues.md): entries written by workers (jobs
 * they could not decode or that crashed them too often) and by the tracker (jobs whose
 * retries ran out). Listing pages newest first; requeue puts the job back with its attempts
 * reset and deletes the dead entry, in one script. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/jobs_internal.h"

int dlq_bury(const sched_config *c, const char *job_id, const char *code, const char *message) {
  redisReply *h = NULL;
  int rc = jobs_fetch(c, job_id, &h);
  if (rc) return rc;
  size_t len = 0;
  const char *job = jobs_field(h, "job", &len), *att = jobs_field(h, "attempts", NULL);
  const char *entry = jobs_field(h, "entry", NULL);
  pa_key k = pa_key_dead(c->redis.stream);
  const char *dead = k.s;
  const char *argv[] = {"XADD", dead, "*", "job", job ? job : "", "id", job_id, "code", code, "field", "",
                        "message", message, "deliveries", att ? att : "0", "entry", entry ? entry : ""};
  size_t lens[17];
  for (int i = 0; i < 17; i++) lens[i] = argv[i] == job && job ? len : strlen(argv[i]);
  redisReply *r = sched_cmd(c, 17, argv, lens);
  rc = r && r->type == REDIS_REPLY_STRING ? PA_OK : pa_fail(PA_ERR_IO, "XADD %s failed", dead);
  if (r) freeReplyObject(r);
  freeReplyObject(h);
  return rc;
}

static json_t *dead_entry_json(const redisReply *e) {
  json_t *o = json_object();
  json_object_set_new(o, "id", json_string(e->element[0]->str));
  const redisReply *f = e->element[1];
  for (size_t i = 0; i + 1 < f->elements; i += 2) {
    const char *k = f->element[i]->str;
    const redisReply *v = f->element[i + 1];
    if (!strcmp(k, "job")) {
      pw_job job;
      pw_error err;
      char *text = NULL;
      pw_job_init(&job);
      if (pw_job_decode(v->str, v->len, &job, &err) == 0 && pw_job_to_json(&job, 0, &text, &err) == 0)
        json_object_set_new(o, "job", json_loads(text, 0, NULL));
      else
        json_object_set_new(o, "job", json_null()); /* unreadable bytes: not shown */
      free(text);
      pw_job_free(&job);
    } else if (!strcmp(k, "id")) {
      json_object_set_new(o, "job_id", json_stringn_nocheck(v->str, v->len));
    } else if (!strcmp(k, "deliveries") || !strcmp(k, "last_attempt")) {
      json_object_set_new(o, k, json_integer(strtoll(v->str, NULL, 10)));
    } else {
      json_t *s = json_stringn(v->str, v->len);
      json_object_set_new(o, k, s ? s : json_null());
    }
  }
  return o;
}

static bool valid_entry_id(const char *s) {
  size_t n = strspn(s, "0123456789");
  return n > 0 && n < 21 && s[n] == '-' && strspn(s + n + 1, "0123456789") == strlen(s + n + 1) && s[n + 1];
}

int dlq_list(const sched_config *c, const char *cursor, int limit, char **json) {
  pa_key k = pa_key_dead(c->redis.stream);
  const char *dead = k.s;
  char max[48];
  if (cursor && *cursor && !valid_entry_id(cursor)) return pa_fail(PA_ERR_INVALID, "bad cursor");
  snprintf(max, sizeof max, cursor && *cursor ? "(%s" : "+", cursor);
  redisReply *r = sched_cmdf(c, "XREVRANGE %s %s - COUNT %d", dead, max, limit);
  if (!r || r->type != REDIS_REPLY_ARRAY) {
    if (r) freeReplyObject(r);
    return pa_fail(PA_ERR_IO, "XREVRANGE %s failed", dead);
  }
  json_t *items = json_array();
  for (size_t i = 0; i < r->elements; i++) json_array_append_new(items, dead_entry_json(r->element[i]));
  json_t *page = json_object();
  json_object_set_new(page, "data", items);
  json_object_set_new(page, "next_cursor", r->elements == (size_t)limit
                                               ? json_string(r->element[r->elements - 1]->element[0]->str)
                                               : json_null());
  freeReplyObject(r);
  *json = json_dumps(page, JSON_COMPACT);
  json_decref(page);
  return *json ? PA_OK : pa_fail(PA_ERR_NOMEM, "list dead letters");
}

/* The job goes back to the end of its owner's queue in the lane of its priority.
 * KEYS: job hash, lane stream, dead stream, active set ("-"), lane ring. ARGV: id, job msgpack,
 * now, dead id, queue prefix, group, depth, lane name. */
static const char REQUEUE_DEAD_LUA[] =
    SCHED_WAIT_LUA
    "if redis.call('XDEL', KEYS[3], ARGV[4]) == 0 then return 0 end\n"
    "redis.call('HDEL', KEYS[1], 'finished_ms', 'result', 'cancel_reason', 'stage', 'step', 'total', 'started_ms',\n"
    "  'entry')\n"
    "redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', '0', 'cancel', '0', 'lane', ARGV[8],\n"
    "  'job', ARGV[2], 'updated_ms', ARGV[3])\n"
    "redis.call('HSETNX', KEYS[1], 'created_ms', ARGV[3])\n"
    "redis.call('PERSIST', KEYS[1])\n" /* live again: retention restarts when it ends */
    "if KEYS[4] ~= '-' then redis.call('SADD', KEYS[4], ARGV[1]) end\n"
    "wait_push(KEYS[5], ARGV[5], redis.call('HGET', KEYS[1], 'owner') or '', ARGV[1], false)\n"
    "dispatch(KEYS[2], KEYS[5], ARGV[5], ARGV[6], ARGV[7])\n"
    "return 1\n";

/* The dead entry's job, decoded and with its attempt count reset. */
static int dead_job(const sched_config *c, const char *entry_id, pw_job *job) {
  pa_key k = pa_key_dead(c->redis.stream);
  const char *dead = k.s;
  redisReply *r = sched_cmdf(c, "XRANGE %s %s %s", dead, entry_id, entry_id);
  if (!r) return PA_ERR_IO;
  int rc = pa_fail(PA_ERR_NOTFOUND, "no dead letter %s", entry_id);
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
    const redisReply *f = r->element[0]->element[1];
    rc = pa_fail(PA_ERR_FORMAT, "dead letter %s holds no readable job", entry_id);
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
      pw_error err;
      if (strcmp(f->element[i]->str, "job") != 0) continue;
      if (pw_job_decode(f->element[i + 1]->str, f->element[i + 1]->len, job, &err) == 0) {
        job->attempt = 0;
        rc = PA_OK;
      } else {
        rc = pa_fail(PA_ERR_FORMAT, "dead letter %s: %s (%s)", entry_id, err.message, err.field);
      }
    }
  }
  freeReplyObject(r);
  return rc;
}

int dlq_requeue(const sched_config *c, const char *entry_id, char *job_id, size_t cap) {
  if (!valid_entry_id(entry_id)) return pa_fail(PA_ERR_NOTFOUND, "no dead letter %s", entry_id);
  pw_job job;
  pw_error err;
  uint8_t *mp = NULL;
  size_t mp_len = 0;
  redisReply *owner = NULL;
  pw_job_init(&job);
  int rc = dead_job(c, entry_id, &job);
  if (rc) goto fail;
  if (pw_job_encode(&job, &mp, &mp_len, &err)) {
    rc = pa_fail(PA_ERR_FORMAT, "encode: %s", err.message);
    goto fail;
  }
  pa_key key = pa_key_job(job.id), dead = pa_key_dead(c->redis.stream);
  char now[24];
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  owner = sched_cmdf(c, "HGET %s owner", key.s);
  pa_key active = owner && owner->type == REDIS_REPLY_STRING ? pa_key_owner_active(owner->str) : (pa_key){"-"};
  int lane = pa_lane_of_priority(job.priority);
  sched_lane l = sched_lane_of(c, lane);
  const char *args[] = {key.s, l.stream.s, dead.s, active.s, l.ring.s, job.id, (const char *)mp, now, entry_id,
                        l.queue.s, c->redis.group, l.depth, pa_lane_name(lane)};
  size_t lens[13];
  for (int i = 0; i < 13; i++) lens[i] = strlen(args[i]);
  lens[6] = mp_len;
  redisReply *r = sched_eval(c, REQUEUE_DEAD_LUA, 5, 8, args, lens);
  if (!r || r->type != REDIS_REPLY_INTEGER) rc = PA_ERR_IO;
  else if (r->integer == 0) rc = pa_fail(PA_ERR_NOTFOUND, "no dead letter %s", entry_id);
  if (r) freeReplyObject(r);
  snprintf(job_id, cap, "%s", job.id);
fail:
  if (owner) freeReplyObject(owner);
  free(mp);
  pw_job_free(&job);
  return rc;
}
