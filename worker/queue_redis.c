/* The Redis Streams transport (queue.h; every key in docs/queues.md, named by redis_keys.h).
 *
 * One consumer group on each lane's stream (high, normal, low: the job's priority). claim()
 * first takes over entries that another consumer left idle past the lease (XAUTOCLAIM: a
 * crashed worker's jobs), then reads new ones (XREADGROUP ... >), in both cases the highest
 * lane first: a lower lane is read only when the higher ones have nothing. The state changes
 * that must not be split by a crash (the final status + result + event, a dead letter + its XACK) each run as one Lua script: atomic like
 * MULTI, and able to skip the write when the job is already final, which keeps a re-run of a
 * job whose result was recorded (the worker died before XACK) from recording it twice. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "worker/admission.h"
#include "worker/outbox.h"
#include "worker/queue.h"
#include "worker/redis_keys.h"
#include "worker/redis_url.h"

#define RQ_MAX_ARGS 32
#define RQ_IO_TIMEOUT_S 60 /* longer than any BLOCK we issue (claim caps it at 30 s) */
#define RQ_MAX_BLOCK_MS 30000

typedef struct {
  redisContext *c;
  pa_redis_url r; /* host, credentials, db, stream, group, events_maxlen */
  char consumer[256];
  pa_key lanes[PA_LANES]; /* the lanes' streams, highest first */
  pa_key events, dead;
  int lease_ms, max_deliveries;
  char cursor[PA_LANES][64]; /* XAUTOCLAIM positions, so successive claims walk each whole PEL */
  pa_key outbox;      /* {stream}:webhooks: message ids by due time */
  pa_key hook_prefix; /* {stream}:webhook: + message id: the message hash */
  /* Entries a blocking read over several lanes returned beyond what claim() asked for (one
   * per lane at most): already pending for us, handed out first by the next claim. */
  pa_delivery stash[PA_LANES];
  int n_stash;
  char *url_text;     /* for clone */
} rq;

typedef struct {
  int n;
  const char *v[RQ_MAX_ARGS];
  size_t l[RQ_MAX_ARGS];
  char num[RQ_MAX_ARGS][24];
} rq_args;

static void arg_bin(rq_args *a, const void *s, size_t n) {
  a->v[a->n] = s;
  a->l[a->n++] = n;
}
static void arg(rq_args *a, const char *s) { arg_bin(a, s, strlen(s)); }
static void arg_int(rq_args *a, long long x) {
  snprintf(a->num[a->n], sizeof a->num[0], "%lld", x);
  arg(a, a->num[a->n]);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- connection --------------------------------------------------------------------- */

static int rq_connect(rq *q) {
  return pa_redis_connect(&q->r, 5000, RQ_IO_TIMEOUT_S * 1000, &q->c);
}

static void rq_drop(rq *q) {
  pa_redis_free(q->c);
  q->c = NULL;
}

static redisReply *raw_cmd(rq *q, const rq_args *a) {
  return redisCommandArgv(q->c, a->n, (const char **)a->v, a->l);
}

/* Runs a command, reconnecting first when the previous one broke the connection (a Redis
 * restart or failover must not kill the worker). Never retries a command whose fate is
 * unknown. Returns the reply, or NULL with pa_fail set (I/O failure or an error reply). */
static redisReply *rq_cmd(rq *q, const rq_args *a) {
  if (!q->c) {
    if (rq_connect(q)) return NULL;
  }
  redisReply *r = raw_cmd(q, a);
  if (!r) {
    pa_fail(PA_ERR_IO, "redis %.*s: %s", (int)a->l[0], a->v[0], q->c->errstr);
    rq_drop(q);
    return NULL;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    pa_fail(PA_ERR_IO, "redis %.*s: %s", (int)a->l[0], a->v[0], r->str);
    freeReplyObject(r);
    return NULL;
  }
  return r;
}

static int rq_create_group(rq *q) {
  for (int lane = 0; lane < PA_LANES; lane++) {
    rq_args a = {0};
    arg(&a, "XGROUP");
    arg(&a, "CREATE");
    arg(&a, q->lanes[lane].s);
    arg(&a, q->r.group);
    arg(&a, "0"); /* entries added before the group existed are jobs too */
    arg(&a, "MKSTREAM");
    redisReply *r = rq_cmd(q, &a);
    if (r) freeReplyObject(r);
    else if (!strstr(pa_errmsg(), "BUSYGROUP")) return PA_ERR_IO;
  }
  return PA_OK;
}

/* ---- entries ------------------------------------------------------------------------ */

static const redisReply *field_value(const redisReply *fields, const char *name) {
  if (!fields || fields->type != REDIS_REPLY_ARRAY) return NULL;
  for (size_t i = 0; i + 1 < fields->elements; i += 2) {
    const redisReply *k = fields->element[i];
    if (k->type == REDIS_REPLY_STRING && !strcmp(k->str, name)) return fields->element[i + 1];
  }
  return NULL;
}

/* [id, [field, value, ...]] -> delivery; an entry without a `job` field gets an empty payload
 * (which fails to decode and goes to the dead letters like any other malformed job). */
static int entry_to_delivery(const redisReply *e, int lane, int deliveries, pa_delivery *d) {
  memset(d, 0, sizeof *d);
  if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
    return pa_fail(PA_ERR_FORMAT, "redis: unexpected stream entry shape");
  const redisReply *id = e->element[0], *job = field_value(e->element[1], "job");
  if (id->len >= sizeof d->handle) return pa_fail(PA_ERR_FORMAT, "redis: entry id too long");
  memcpy(d->handle, id->str, id->len + 1);
  size_t len = job && job->type == REDIS_REPLY_STRING ? job->len : 0;
  if (!(d->payload = malloc(len ? len : 1))) return pa_fail(PA_ERR_NOMEM, "out of memory");
  if (len) memcpy(d->payload, job->str, len);
  d->len = len;
  d->deliveries = deliveries;
  d->lane = lane;
  return PA_OK;
}

/* XPENDING stream group id id 1 -> [[id, consumer, idle, count]] */
static int delivery_count(rq *q, int lane, const char *id, int *count) {
  rq_args a = {0};
  arg(&a, "XPENDING");
  arg(&a, q->lanes[lane].s);
  arg(&a, q->r.group);
  arg(&a, "IDLE");
  arg(&a, "0");
  arg(&a, id);
  arg(&a, id);
  arg(&a, "1");
  redisReply *r = rq_cmd(q, &a);
  if (!r) return PA_ERR_IO;
  int rc = PA_OK;
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 || r->element[0]->type != REDIS_REPLY_ARRAY ||
      r->element[0]->elements != 4 || r->element[0]->element[3]->type != REDIS_REPLY_INTEGER)
    rc = pa_fail(PA_ERR_FORMAT, "redis XPENDING %s: entry not pending", id);
  else
    *count = (int)r->element[0]->element[3]->integer;
  freeReplyObject(r);
  return rc;
}

/* Appends the entries of an array reply (nil = an entry deleted while pending: skipped). */
static int take_entries(rq *q, int lane, const redisReply *entries, int max, bool count_deliveries, pa_delivery *out,
                        int *n) {
  int rc = PA_OK;
  for (size_t i = 0; i < entries->elements && (*n < max || q->n_stash < PA_LANES); i++) {
    const redisReply *e = entries->element[i];
    if (e->type == REDIS_REPLY_NIL) continue;
    int deliveries = 1; /* read with '>': never delivered before */
    if (count_deliveries && e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
        e->element[0]->type == REDIS_REPLY_STRING && (rc = delivery_count(q, lane, e->element[0]->str, &deliveries)))
      return rc;
    if (*n < max) {
      PA_TRY(entry_to_delivery(e, lane, deliveries, &out[*n]));
      (*n)++;
    } else {
      PA_TRY(entry_to_delivery(e, lane, deliveries, &q->stash[q->n_stash]));
      q->n_stash++;
    }
  }
fail:
  return rc;
}

/* XAUTOCLAIM stream group consumer lease cursor COUNT k -> [cursor, [entries], (deleted)] */
static int rq_autoclaim(rq *q, int lane, int max, pa_delivery *out, int *n) {
  rq_args a = {0};
  char *cursor = q->cursor[lane];
  arg(&a, "XAUTOCLAIM");
  arg(&a, q->lanes[lane].s);
  arg(&a, q->r.group);
  arg(&a, q->consumer);
  arg_int(&a, q->lease_ms);
  arg(&a, cursor);
  arg(&a, "COUNT");
  arg_int(&a, max - *n);
  redisReply *r = rq_cmd(q, &a);
  if (!r) return PA_ERR_IO;
  int rc = PA_OK;
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[0]->type != REDIS_REPLY_STRING ||
      r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= sizeof q->cursor[lane]) {
    rc = pa_fail(PA_ERR_FORMAT, "redis XAUTOCLAIM: unexpected reply");
    goto fail;
  }
  memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
  rc = take_entries(q, lane, r->element[1], max, true, out, n);
fail:
  freeReplyObject(r);
  return rc;
}

/* The lane of a stream name in a reply; -1 when it is none of ours. */
static int lane_of_stream(const rq *q, const redisReply *name) {
  for (int lane = 0; name->type == REDIS_REPLY_STRING && lane < PA_LANES; lane++)
    if (!strcmp(name->str, q->lanes[lane].s)) return lane;
  return -1;
}

/* XREADGROUP GROUP g c COUNT k [BLOCK ms] STREAMS s... >... -> nil | [[stream, [entries]], ...]
 * over lanes [first, last]: one lane at a time without BLOCK (highest first), or all of them
 * while blocking (whichever gets an entry first wakes us). */
static int rq_read_new(rq *q, int first, int last, int max, int block_ms, pa_delivery *out, int *n) {
  rq_args a = {0};
  arg(&a, "XREADGROUP");
  arg(&a, "GROUP");
  arg(&a, q->r.group);
  arg(&a, q->consumer);
  arg(&a, "COUNT");
  arg_int(&a, max - *n);
  if (block_ms > 0) {
    arg(&a, "BLOCK");
    arg_int(&a, block_ms > RQ_MAX_BLOCK_MS ? RQ_MAX_BLOCK_MS : block_ms);
  }
  arg(&a, "STREAMS");
  for (int lane = first; lane <= last; lane++) arg(&a, q->lanes[lane].s);
  for (int lane = first; lane <= last; lane++) arg(&a, ">");
  redisReply *r = rq_cmd(q, &a);
  if (!r) return PA_ERR_IO;
  int rc = r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_ARRAY
               ? PA_OK : pa_fail(PA_ERR_FORMAT, "redis XREADGROUP: unexpected reply");
  for (size_t i = 0; !rc && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    const redisReply *s = r->element[i];
    int lane = s->type == REDIS_REPLY_ARRAY && s->elements == 2 ? lane_of_stream(q, s->element[0]) : -1;
    if (lane < 0 || s->element[1]->type != REDIS_REPLY_ARRAY) rc = pa_fail(PA_ERR_FORMAT, "redis XREADGROUP: unexpected reply");
    else rc = take_entries(q, lane, s->element[1], max, false, out, n);
  }
  freeReplyObject(r);
  return rc;
}

static int stash_take(rq *q, int max, pa_delivery *out, int *n);

static int rq_claim(pa_queue *qq, int max, int block_ms, pa_delivery *out, int *n) {
  rq *q = qq->impl;
  *n = 0;
  if (max < 1) return pa_fail(PA_ERR_INVALID, "claim: max must be >= 1");
  int rc = stash_take(q, max, out, n);
  for (int lane = 0; !rc && lane < PA_LANES && *n < max; lane++) rc = rq_autoclaim(q, lane, max, out, n);
  for (int lane = 0; !rc && lane < PA_LANES && *n < max; lane++) rc = rq_read_new(q, lane, lane, max, 0, out, n);
  if (!rc && !*n && block_ms > 0) {
    /* Idle: wait on every lane at once, one entry each (extras go to the stash), then fill
     * the rest highest lane first. */
    rc = rq_read_new(q, 0, PA_LANES - 1, 1, block_ms, out, n);
    if (!rc) rc = stash_take(q, max, out, n);
    for (int lane = 0; !rc && *n && lane < PA_LANES && *n < max; lane++) rc = rq_read_new(q, lane, lane, max, 0, out, n);
  }
  /* the stream or group was deleted under us (FLUSHALL, an operator): recreate it */
  if (rc && !*n && strstr(pa_errmsg(), "NOGROUP")) return rq_create_group(q);
  if (rc) {
    for (int i = 0; i < *n; i++) pa_delivery_clear(&out[i]);
    *n = 0; /* what we claimed stays pending and comes back after the lease */
  }
  return rc;
}

/* ---- scripts ------------------------------------------------------------------------ */

/* Fencing. An attempt is (entry, consumer, delivery count): every claim of an entry
 * (XREADGROUP, XAUTOCLAIM) adds one to its delivery count, and XCLAIM ... JUSTID (the renewal)
 * does not, so the count is a fencing token. Every side effect of an attempt runs in a script
 * that first checks the entry is still pending for this consumer with this count: a worker
 * that was frozen past its lease, while another took the entry over, writes nothing. */
#define OWNS_LUA                                                                     \
  "local function owns(stream, group, entry, consumer, count)\n"                     \
  "  local p = redis.call('XPENDING', stream, group, entry, entry, 1)\n"             \
  "  return #p == 1 and p[1][2] == consumer and p[1][4] == tonumber(count)\n"        \
  "end\n"

/* KEYS: stream. ARGV: group, consumer, entry, count. Renews only an entry this attempt still
 * owns: a plain XCLAIM would steal back an entry another worker legitimately reclaimed. */
static const char renew_lua[] =
    OWNS_LUA
    "if not owns(KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4]) then return 0 end\n"
    "redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')\n"
    "return 1\n";

/* KEYS: stream. ARGV: group, consumer, entry, count. */
static const char ack_lua[] =
    OWNS_LUA
    "if not owns(KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4]) then return 0 end\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "return 1\n";

/* KEYS: stream, outbox, message hash. ARGV: group, consumer, entry, count, then the message. */
static const char enqueue_lua[] =
    OWNS_LUA PA_OUTBOX_ENQUEUE_LUA
    "if not owns(KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4]) then return -1 end\n"
    "return enqueue(KEYS[2], KEYS[3], 5)\n";

/* KEYS: events, job hash. ARGV: type, job id, msg, worker, now, maxlen. A start event marks
 * the job running unless a result is already recorded (a duplicate run after a crash). */
static const char event_lua[] =
    "redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 'type', ARGV[1], 'id', ARGV[2], 'msg', ARGV[3])\n"
    "if ARGV[1] == 'start' then\n"
    "  local s = redis.call('HGET', KEYS[2], 'status')\n"
    "  if s ~= 'succeeded' and s ~= 'failed' and s ~= 'canceled' then\n"
    "    redis.call('HSET', KEYS[2], 'status', 'running', 'worker', ARGV[4], 'updated_ms', ARGV[5])\n"
    "  end\n"
    "  redis.call('HINCRBY', KEYS[2], 'attempts', 1)\n"
    "end\n"
    "return 1\n";

/* KEYS: job hash, events, stream, outbox, message hash. ARGV: status, result, job id, worker,
 * now, maxlen, event type, group, entry ("" = unfenced), count, has hook, then the message.
 * The first final result wins; later ones (re-runs) change nothing and add no event and no
 * webhook; a fenced attempt (-1) writes nothing at all. */
static const char result_lua[] =
    OWNS_LUA PA_OUTBOX_ENQUEUE_LUA
    "if ARGV[9] ~= '' and not owns(KEYS[3], ARGV[8], ARGV[9], ARGV[4], ARGV[10]) then return -1 end\n"
    "local s = redis.call('HGET', KEYS[1], 'status')\n"
    "if s == 'succeeded' or s == 'failed' or s == 'canceled' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'worker', ARGV[4], 'updated_ms', ARGV[5])\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'type', ARGV[7], 'id', ARGV[3], 'msg', ARGV[2])\n"
    "if ARGV[11] == '1' then enqueue(KEYS[4], KEYS[5], 12) end\n"
    "return 1\n";

/* KEYS: outbox. ARGV: now, lease until, message hash prefix. The earliest due message, taken
 * until `lease until`: [id, [field, value...]], [id] for a message whose hash is gone, or nil. */
static const char take_lua[] =
    "local m = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)\n"
    "if #m == 0 then return false end\n"
    "local h = redis.call('HGETALL', ARGV[3] .. m[1])\n"
    "if #h == 0 then redis.call('ZREM', KEYS[1], m[1]) return {m[1]} end\n"
    "redis.call('ZADD', KEYS[1], ARGV[2], m[1])\n"
    "return {m[1], h}\n";

/* The deliveries list expires with the job record (the scheduler's retention, docs/queues.md).
 * KEYS: outbox, message hash, the job's deliveries list, metrics hash, job hash. ARGV: msg id,
 * record ("" = none), retry at (0 = finished), attempted (1/0), counters "a,b", records kept. */
static const char settle_lua[] =
    "if ARGV[2] ~= '' then\n"
    "  redis.call('RPUSH', KEYS[3], ARGV[2])\n"
    "  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)\n"
    "  local ttl = redis.call('PTTL', KEYS[5])\n"
    "  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end\n"
    "end\n"
    "for c in string.gmatch(ARGV[5], '[^,]+') do redis.call('HINCRBY', KEYS[4], c, 1) end\n"
    "if ARGV[3] == '0' then\n"
    "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
    "  redis.call('DEL', KEYS[2])\n"
    "else\n"
    "  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])\n"
    "  if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[2], 'attempts', 1) end\n"
    "end\n"
    "return 1\n";

/* KEYS: stream, dead. ARGV: group, entry id, job bytes, code, field, message, deliveries,
 * job key prefix, consumer. Only while the attempt owns the entry; XACK first: when another worker already acknowledged the entry, nothing is
 * dead-lettered twice. The job id comes from the entry's `id` field (the bytes may not
 * decode). The last failure an attempt noted (note_lua) goes beside the code as last_code,
 * last_message, last_attempt: `too_many_attempts` alone does not say what to fix. */
static const char dead_lua[] =
    OWNS_LUA
    "if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[9], ARGV[7]) then return 0 end\n"
    "if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
    "local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])\n"
    "local id = ''\n"
    "if #e > 0 then local f = e[1][2]\n"
    "  for i = 1, #f, 2 do if f[i] == 'id' then id = f[i + 1] end end end\n"
    "local entry = {'job', ARGV[3], 'id', id, 'code', ARGV[4], 'field', ARGV[5], 'message', ARGV[6],\n"
    "  'deliveries', ARGV[7], 'entry', ARGV[2]}\n"
    "if id ~= '' then\n"
    "  local last = redis.call('HMGET', ARGV[8] .. id, 'last_error_code', 'last_error_message', 'last_error_attempt')\n"
    "  if last[1] then\n"
    "    for i, k in ipairs({'last_code', 'last_message', 'last_attempt'}) do\n"
    "      table.insert(entry, k) table.insert(entry, last[i] or '') end\n"
    "  end\n"
    "end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(entry))\n"
    "return 1\n";

/* KEYS: job hash. ARGV: code, message, attempt (the delivery count). */
static const char note_lua[] =
    "redis.call('HSET', KEYS[1], 'last_error_code', ARGV[1], 'last_error_message', ARGV[2],\n"
    "  'last_error_attempt', ARGV[3])\n"
    "return 1\n";

/* EVAL script nkeys keys... args...: the integer result in *ret */
static int rq_eval(rq *q, rq_args *a, long long *ret) {
  redisReply *r = rq_cmd(q, a);
  if (!r) return PA_ERR_IO;
  int rc = PA_OK;
  if (r->type != REDIS_REPLY_INTEGER)
    rc = pa_fail(PA_ERR_FORMAT, "redis EVAL: unexpected reply type %d", r->type);
  else if (ret)
    *ret = r->integer;
  freeReplyObject(r);
  return rc;
}

static void eval_head(rq_args *a, const char *script, int nkeys) {
  arg(a, "EVAL");
  arg(a, script);
  arg_int(a, nkeys);
}


/* The fencing token's arguments (OWNS_LUA): group, consumer, entry, count. */
static void fence_args(rq *q, rq_args *a, const pa_delivery *d) {
  arg(a, q->r.group);
  arg(a, q->consumer);
  arg(a, d->handle);
  arg_int(a, d->deliveries);
}

/* Runs a fenced script on the job stream; 0 from it means the attempt lost its entry. */
static int fenced(rq *q, const char *script, const pa_delivery *d, const char *what) {
  rq_args a = {0};
  long long owned = 0;
  eval_head(&a, script, 1);
  arg(&a, q->lanes[d->lane].s);
  fence_args(q, &a, d);
  int rc = rq_eval(q, &a, &owned);
  if (!rc && !owned)
    rc = pa_fail(PA_ERR_NOTFOUND, "%s: entry %s (delivery %d) is no longer this attempt's (reclaimed or acknowledged)",
                 what, d->handle, d->deliveries);
  return rc;
}

static int rq_renew(pa_queue *qq, const pa_delivery *d) { return fenced(qq->impl, renew_lua, d, "lease renewal"); }

/* Hands out stashed entries, each renewed first: one that waited past its lease while this
 * worker was busy may have been reclaimed by another (the renewal is refused), and is dropped. */
static int stash_take(rq *q, int max, pa_delivery *out, int *n) {
  while (q->n_stash > 0 && *n < max) {
    pa_delivery d = q->stash[--q->n_stash];
    int rc = fenced(q, renew_lua, &d, "stashed entry");
    if (rc == PA_OK) out[(*n)++] = d;
    else pa_delivery_clear(&d);
    if (rc && rc != PA_ERR_NOTFOUND) return rc;
  }
  return PA_OK;
}

static int rq_publish_event(pa_queue *qq, const char *job_id, const char *type, const uint8_t *msg, size_t len) {
  rq *q = qq->impl;
  rq_args a = {0};
  pa_key key = pa_key_job(job_id);
  eval_head(&a, event_lua, 2);
  arg(&a, q->events.s);
  arg(&a, key.s);
  arg(&a, type);
  arg(&a, job_id);
  arg_bin(&a, msg, len);
  arg(&a, q->consumer);
  arg_int(&a, now_ms());
  arg_int(&a, q->r.events_maxlen);
  return rq_eval(q, &a, NULL);
}

/* The message's arguments (PA_OUTBOX_ENQUEUE_LUA): msg id, job id, event, url, secret id, has secret
 * id, body, now. */
static void hook_args(rq_args *a, const pa_webhook_msg *m) {
  arg(a, m->msg_id);
  arg(a, m->job_id);
  arg(a, m->event);
  arg(a, m->url);
  arg(a, m->secret_id ? m->secret_id : "");
  arg(a, m->secret_id ? "1" : "0");
  arg(a, m->body);
  arg_int(a, now_ms());
}


static int rq_record_result(pa_queue *qq, const pa_delivery *d, const char *job_id, const uint8_t *result, size_t len,
                            const pa_webhook_msg *hook) {
  rq *q = qq->impl;
  pw_result res;
  pw_error err;
  if (pw_result_decode(result, len, &res, &err)) {
    pw_result_free(&res);
    return pa_fail(PA_ERR_INVALID, "record_result %s: invalid Result: %s at '%s': %s", job_id,
                   pw_code_name(err.code), err.field, err.message);
  }
  const char *status = pw_status_name(res.status);
  const char *event = res.status == PW_STATUS_SUCCEEDED ? "completed" : "failed";
  pw_result_free(&res);
  rq_args a = {0};
  pa_key key = pa_key_job(job_id), hkey = pa_key_outbox_msg(q->r.stream, hook ? hook->msg_id : "-");
  eval_head(&a, result_lua, 5);
  arg(&a, key.s);
  arg(&a, q->events.s);
  arg(&a, q->lanes[d ? d->lane : PA_LANE_NORMAL].s);
  arg(&a, q->outbox.s);
  arg(&a, hkey.s);
  arg(&a, status);
  arg_bin(&a, result, len);
  arg(&a, job_id);
  arg(&a, q->consumer);
  arg_int(&a, now_ms());
  arg_int(&a, q->r.events_maxlen);
  arg(&a, event);
  arg(&a, q->r.group);
  arg(&a, d ? d->handle : "");
  arg_int(&a, d ? d->deliveries : 0);
  arg(&a, hook ? "1" : "0");
  if (hook) hook_args(&a, hook);
  long long ret = 0;
  int rc = rq_eval(q, &a, &ret);
  if (!rc && ret < 0)
    rc = pa_fail(PA_ERR_NOTFOUND, "result of %s not recorded: entry %s (delivery %d) is no longer this attempt's",
                 job_id, d->handle, d->deliveries);
  return rc;
}

static int rq_ack(pa_queue *qq, const pa_delivery *d) { return fenced(qq->impl, ack_lua, d, "ack"); }

static int rq_enqueue_webhook(pa_queue *qq, const pa_delivery *d, const pa_webhook_msg *m) {
  rq *q = qq->impl;
  rq_args a = {0};
  pa_key hkey = pa_key_outbox_msg(q->r.stream, m->msg_id);
  eval_head(&a, enqueue_lua, 3);
  arg(&a, q->lanes[d->lane].s);
  arg(&a, q->outbox.s);
  arg(&a, hkey.s);
  fence_args(q, &a, d);
  hook_args(&a, m);
  long long ret = 0;
  int rc = rq_eval(q, &a, &ret);
  if (!rc && ret < 0) rc = pa_fail(PA_ERR_NOTFOUND, "webhook %s not queued: the attempt lost its entry", m->msg_id);
  return rc;
}

/* [field, value, ...] of a message hash -> the item. */
static int item_from_hash(const redisReply *h, pa_outbox_item *it) {
  bool has_secret_id = false;
  for (size_t i = 0; i + 1 < h->elements; i += 2) {
    const char *k = h->element[i]->str, *v = h->element[i + 1]->str;
    char **dst = !strcmp(k, "job_id") ? &it->job_id : !strcmp(k, "event") ? &it->event : !strcmp(k, "url") ? &it->url
               : !strcmp(k, "secret_id") ? &it->secret_id : !strcmp(k, "body") ? &it->body : NULL;
    if (dst && !(*dst = strdup(v))) return pa_fail(PA_ERR_NOMEM, "out of memory");
    if (!strcmp(k, "has_secret_id")) has_secret_id = !strcmp(v, "1");
    if (!strcmp(k, "attempts")) it->attempts = atoi(v);
  }
  if (!has_secret_id) {
    free(it->secret_id);
    it->secret_id = NULL;
  }
  if (!it->job_id || !it->event || !it->url || !it->body) return pa_fail(PA_ERR_FORMAT, "outbox message incomplete");
  return PA_OK;
}

static int rq_outbox_take(pa_queue *qq, int lease_ms, pa_outbox_item *out, bool *got) {
  rq *q = qq->impl;
  rq_args a = {0};
  memset(out, 0, sizeof *out);
  *got = false;
  long long now = now_ms();
  eval_head(&a, take_lua, 1);
  arg(&a, q->outbox.s);
  arg_int(&a, now);
  arg_int(&a, now + lease_ms);
  arg(&a, q->hook_prefix.s);
  redisReply *r = rq_cmd(q, &a);
  if (!r) return PA_ERR_IO;
  int rc = PA_OK;
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
      r->element[1]->type == REDIS_REPLY_ARRAY) {
    if (!(out->msg_id = strdup(r->element[0]->str))) rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    else rc = item_from_hash(r->element[1], out);
    if (rc) pa_outbox_item_clear(out);
    else *got = true;
  } else if (r->type != REDIS_REPLY_NIL && r->type != REDIS_REPLY_ARRAY) {
    rc = pa_fail(PA_ERR_FORMAT, "redis: unexpected outbox reply");
  }
  freeReplyObject(r);
  return rc;
}

#define DELIVERY_RECORDS_KEPT 100 /* per job: the newest attempts (GET /v1/jobs/{id}/deliveries) */

static int rq_outbox_settle(pa_queue *qq, const pa_outbox_item *it, const char *record_json, long long retry_at_ms,
                            bool attempted, const char *counters) {
  rq *q = qq->impl;
  rq_args a = {0};
  pa_key hkey = pa_key_outbox_msg(q->r.stream, it->msg_id), list = pa_key_job_deliveries(it->job_id),
         job = pa_key_job(it->job_id);
  eval_head(&a, settle_lua, 5);
  arg(&a, q->outbox.s);
  arg(&a, hkey.s);
  arg(&a, list.s);
  arg(&a, PA_KEY_METRICS);
  arg(&a, job.s);
  arg(&a, it->msg_id);
  arg(&a, record_json ? record_json : "");
  arg_int(&a, retry_at_ms);
  arg(&a, attempted ? "1" : "0");
  arg(&a, counters ? counters : "");
  arg_int(&a, DELIVERY_RECORDS_KEPT);
  return rq_eval(q, &a, NULL);
}

static int rq_dead_letter(pa_queue *qq, const pa_delivery *d, const char *code, const char *field,
                          const char *message) {
  rq *q = qq->impl;
  rq_args a = {0};
  eval_head(&a, dead_lua, 2);
  arg(&a, q->lanes[d->lane].s);
  arg(&a, q->dead.s);
  arg(&a, q->r.group);
  arg(&a, d->handle);
  arg_bin(&a, d->payload ? (const void *)d->payload : "", d->len);
  arg(&a, code ? code : "");
  arg(&a, field ? field : "");
  arg(&a, message ? message : "");
  arg_int(&a, d->deliveries);
  arg(&a, PA_KEY_JOB_PREFIX);
  arg(&a, q->consumer);
  return rq_eval(q, &a, NULL);
}

static int rq_note_failure(pa_queue *qq, const pa_delivery *d, const char *job_id, const char *code,
                           const char *message) {
  rq *q = qq->impl;
  rq_args a = {0};
  pa_key key = pa_key_job(job_id);
  eval_head(&a, note_lua, 1);
  arg(&a, key.s);
  arg(&a, code);
  arg(&a, message);
  arg_int(&a, d->deliveries);
  return rq_eval(q, &a, NULL);
}

/* HGET paella:job:{id} field, compared with `values` (NULL-terminated); false when absent
 * or when Redis fails. */
static bool job_field_in(rq *q, const char *job_id, const char *field, const char *const *values) {
  rq_args a = {0};
  pa_key key = pa_key_job(job_id);
  arg(&a, "HGET");
  arg(&a, key.s);
  arg(&a, field);
  redisReply *r = rq_cmd(q, &a);
  bool in = false;
  for (int i = 0; r && r->type == REDIS_REPLY_STRING && values[i] && !in; i++) in = !strcmp(r->str, values[i]);
  freeReplyObject(r);
  return in;
}

/* A failed lookup reads as "not canceled": the job keeps running rather than dying on a blip. */
static bool rq_is_canceled(pa_queue *qq, const char *job_id) {
  static const char *const yes[] = {"1", NULL};
  return job_field_in(qq->impl, job_id, "cancel", yes);
}

/* A failed lookup reads as "not settled": the job runs, and its result write stays first-wins. */
static bool rq_is_settled(pa_queue *qq, const char *job_id) {
  static const char *const final[] = {"succeeded", "failed", "canceled", NULL};
  return job_field_in(qq->impl, job_id, "status", final);
}

static int rq_add_counters(pa_queue *qq, const char *const *names, const long long *deltas, int n) {
  rq *q = qq->impl;
  for (int i = 0; i < n; i++) {
    if (!deltas[i]) continue;
    rq_args a = {0};
    arg(&a, "HINCRBY");
    arg(&a, PA_KEY_METRICS);
    arg(&a, names[i]);
    arg_int(&a, deltas[i]);
    redisReply *r = rq_cmd(q, &a);
    if (!r) return PA_ERR_IO;
    bool ok = r->type == REDIS_REPLY_INTEGER;
    freeReplyObject(r);
    if (!ok) return pa_fail(PA_ERR_IO, "redis: HINCRBY " PA_KEY_METRICS " %s failed", names[i]);
  }
  return PA_OK;
}

/* KEYS: workers zset, caps hash. ARGV: consumer, record, now ms, ttl ms. Both keys expire
 * with the last advertisement, so a fleet scaled to zero leaves nothing behind. */
static const char ADVERTISE_LUA[] =
    "local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])\n"
    "for _, w in ipairs(gone) do redis.call('HDEL', KEYS[2], w) end\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])\n"
    "redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])\n"
    "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[4])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[4])\n"
    "return 1\n";

static int rq_advertise(pa_queue *qq, const char *record, long long ttl_ms) {
  rq *q = qq->impl;
  pa_key workers = pa_key_workers(q->r.stream), caps = pa_key_worker_caps(q->r.stream);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  rq_args a = {0};
  arg(&a, "EVAL");
  arg(&a, ADVERTISE_LUA);
  arg(&a, "2");
  arg(&a, workers.s);
  arg(&a, caps.s);
  arg(&a, q->consumer);
  arg(&a, record);
  arg_int(&a, (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
  arg_int(&a, ttl_ms);
  redisReply *r = rq_cmd(q, &a);
  if (!r) return PA_ERR_IO;
  bool ok = r->type == REDIS_REPLY_INTEGER;
  freeReplyObject(r);
  return ok ? PA_OK : pa_fail(PA_ERR_IO, "redis: advertising the worker's limits failed");
}

static int rq_noop(pa_queue *qq) {
  (void)qq;
  return PA_OK;
}

static void rq_close(pa_queue *qq) {
  if (!qq) return;
  rq *q = qq->impl;
  if (q) {
    rq_drop(q);
    for (int i = 0; i < q->n_stash; i++) pa_delivery_clear(&q->stash[i]);
    free(q->url_text);
  }
  free(q);
  free(qq);
}

static int rq_clone(pa_queue *qq, pa_queue **out) {
  rq *q = qq->impl;
  pa_queue_options o = {.consumer = q->consumer, .lease_ms = q->lease_ms, .max_deliveries = q->max_deliveries};
  return pa_queue_open_redis(q->url_text, &o, out);
}

static const pa_queue_ops rq_ops = {
    .claim = rq_claim, .renew = rq_renew, .publish_event = rq_publish_event, .record_result = rq_record_result,
    .ack = rq_ack, .dead_letter = rq_dead_letter, .note_failure = rq_note_failure, .is_settled = rq_is_settled,
    .is_canceled = rq_is_canceled,
    .pause = rq_noop, .resume = rq_noop, .close = rq_close, .clone = rq_clone, .enqueue_webhook = rq_enqueue_webhook,
    .outbox_take = rq_outbox_take, .outbox_settle = rq_outbox_settle, .add_counters = rq_add_counters,
    .advertise = rq_advertise};

/* ---- open --------------------------------------------------------------------------- */

static int parse_config(rq *q, const char *url, const pa_queue_options *o) {
  int rc = pa_redis_url_parse(url, &q->r);
  if (rc) return rc;
  for (int lane = 0; lane < PA_LANES; lane++) {
    q->lanes[lane] = pa_key_lane(q->r.stream, lane);
    snprintf(q->cursor[lane], sizeof q->cursor[lane], "0-0");
  }
  q->events = pa_key_events(q->r.stream);
  q->dead = pa_key_dead(q->r.stream);
  q->outbox = pa_key_outbox(q->r.stream);
  q->hook_prefix = pa_key_outbox_msg(q->r.stream, NULL);
  if (!(q->url_text = strdup(url))) return pa_fail(PA_ERR_NOMEM, "out of memory");
  if (o && o->consumer && o->consumer[0]) {
    snprintf(q->consumer, sizeof q->consumer, "%s", o->consumer);
  } else {
    char host[200] = "worker";
    gethostname(host, sizeof host - 1);
    snprintf(q->consumer, sizeof q->consumer, "%s-%d", host, (int)getpid());
  }
  q->lease_ms = o && o->lease_ms > 0 ? o->lease_ms : 60000;
  q->max_deliveries = o && o->max_deliveries > 0 ? o->max_deliveries : 5;
  return PA_OK;
}

int pa_queue_open_redis(const char *url, const pa_queue_options *o, pa_queue **out) {
  *out = NULL;
  int rc = PA_OK;
  pa_queue *qq = calloc(1, sizeof *qq);
  rq *q = calloc(1, sizeof *q);
  if (!qq || !q) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  qq->ops = &rq_ops;
  qq->impl = q;
  PA_TRY(parse_config(q, url, o));
  PA_TRY(rq_create_group(q));
  *out = qq;
  return PA_OK;
fail:
  if (qq && q) rq_close(qq);
  else {
    free(q);
    free(qq);
  }
  return rc;
}
