/* The scheduler in front of a Kafka fleet (docs/queues.md, "The scheduler on Kafka").
 *
 * The registry stays in Redis (hashes, the owners' queues, the lanes, {stream}:events and
 * :dead): a Kafka-native registry would need a compacted topic plus a local state store per
 * replica to answer a status read, where Redis already gives the atomic scripts every
 * transition is written with. Kafka carries only what the workers exchange:
 *
 *   forwarder: the lanes' streams are the jobs topic's outbox. Fair dispatch moves jobs onto
 *              them as on Redis; this thread reads them as the consumer group {group} (the role
 *              Redis workers play), highest lane first, produces each job to {topic} (key = job
 *              id) with the idempotent producer and XACKs the entry only after the delivery
 *              report. A crash in between leaves the entry pending: it is produced again
 *              (XAUTOCLAIM after FORWARD_RECLAIM_MS), and a duplicate job id costs one
 *              idempotent re-run. Kafka cannot reorder a topic, so fair share and priorities
 *              are kept by handing over only a window: jobs produced and not yet started are
 *              booked in {stream}:sched:kafka (by produce time) and the forwarder reads the
 *              lanes only while fewer than --dispatch-depth are; the rest wait in their
 *              owners' queues and enter round-robin, as on Redis.
 *   bridge:    a consumer of {topic}.events and {topic}.dead in the group events_group. Each
 *              record is applied to Redis by one script that does what the Redis worker's
 *              event, result and dead-letter scripts do (status running / final result, first
 *              result wins, XADD to {stream}:events or :dead); its offset is stored only
 *              after that script ran, so a scheduler crash re-applies, never skips, a record.
 *   cancel:    a cancel record (key = job id) on the compacted {topic}.control, beside the
 *              registry's own mark (jobs.c). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "scheduler/jobs_internal.h"
#include "worker/kafka_topics.h"

#define FORWARD_BATCH 64
#define FORWARD_RECLAIM_MS 30000 /* an outbox entry pending this long (a dead replica's) is re-sent */

struct sched_kafka {
  const sched_config *c;
  rd_kafka_t *producer, *consumer;
  pthread_t forwarder, bridge;
  int started;
  atomic_bool stop;
};

/* The one instance of this process: jobs_cancel (API threads) produces through its producer. */
static sched_kafka *g_kafka;

/* ---- clients ---------------------------------------------------------------------------- */

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value) {
  char err[256];
  if (rd_kafka_conf_set(conf, key, value, err, sizeof err) != RD_KAFKA_CONF_OK)
    return pa_fail(PA_ERR_INVALID, "kafka: %s=%s: %s", key, value, err);
  return PA_OK;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  (void)rk, (void)opaque;
  fprintf(stderr, "paella-scheduler kafka: %s: %s\n", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* Each produced message carries a pointer to its int: 1 delivered, -1 failed. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk, (void)opaque;
  if (m->_private) *(int *)m->_private = m->err ? -1 : 1;
}

/* defaults: key, value pairs, NULL-terminated; the URL's properties come after them. */
static int client_new(const sched_config *c, rd_kafka_type_t type, const char *const *defaults, rd_kafka_t **out) {
  const pa_kafka_url *u = &c->kafka.url;
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  int rc;
  if (!conf) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  if ((rc = conf_set(conf, "bootstrap.servers", u->brokers)) || (rc = conf_set(conf, "client.id", c->consumer)))
    goto fail;
  for (int i = 0; defaults[i]; i += 2)
    if ((rc = conf_set(conf, defaults[i], defaults[i + 1]))) goto fail;
  for (int i = 0; i < u->n_props; i++)
    if ((rc = conf_set(conf, u->prop_key[i], u->prop_value[i]))) goto fail;
  rd_kafka_conf_set_error_cb(conf, on_error);
  if (type == RD_KAFKA_PRODUCER) rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  if (!(*out = rd_kafka_new(type, conf, err, sizeof err))) {
    rc = pa_fail(PA_ERR_INVALID, "kafka: %s", err);
    goto fail;
  }
  return PA_OK;
fail:
  rd_kafka_conf_destroy(conf);
  return rc;
}

/* Serves delivery reports until every status is set. librdkafka reports every message, at the
 * latest after message.timeout.ms (60 s by default): the statuses live on the caller's stack,
 * so returning earlier would let a late report write to a dead frame. */
static void wait_delivered(rd_kafka_t *p, const int *status, int n) {
  for (;;) {
    bool done = true;
    for (int i = 0; i < n; i++) done &= status[i] != 0;
    if (done) return;
    rd_kafka_poll(p, 20);
  }
}

static int produce(rd_kafka_t *p, const char *topic, const char *key, const void *value, size_t len, int *status) {
  rd_kafka_resp_err_t e = rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
                                            RD_KAFKA_V_VALUE((void *)value, len),
                                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(status),
                                            RD_KAFKA_V_END);
  if (e) return pa_fail(PA_ERR_IO, "kafka: produce to %s: %s", topic, rd_kafka_err2str(e));
  return PA_OK;
}

/* ---- forwarder: the lanes' streams -> {topic} --------------------------------------------- */

static const char *entry_field(const redisReply *fields, const char *name, size_t *len) {
  for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2)
    if (fields->element[i]->type == REDIS_REPLY_STRING && !strcmp(fields->element[i]->str, name)) {
      if (len) *len = fields->element[i + 1]->len;
      return fields->element[i + 1]->str;
    }
  return NULL;
}

/* A job settled while its entry waited in the outbox (canceled, past its deadline) is
 * acknowledged without producing it, as a Redis worker acknowledges it unrun. */
static bool settled(const sched_config *c, const char *id) {
  pa_key key = pa_key_job(id);
  redisReply *r = sched_cmdf(c, "HGET %s status", key.s);
  bool final = r && r->type == REDIS_REPLY_STRING && jobs_is_final(r->str);
  if (r) freeReplyObject(r);
  return final;
}

/* The handed-over window: ids produced to {topic} whose start (or end) no event has reported. */
static pa_key unstarted_key(const sched_config *c) { return pa_key_sched(c->redis.stream, "kafka"); }

/* entries: [[entry id, [field, value...]]...]. Produces them, then books and XACKs the delivered
 * ones. Returns the number handled. */
static int forward_entries(sched_kafka *k, const char *stream, const redisReply *entries) {
  const sched_config *c = k->c;
  int n = (int)entries->elements, status[FORWARD_BATCH] = {0};
  if (n > FORWARD_BATCH) n = FORWARD_BATCH;
  for (int i = 0; i < n; i++) {
    const redisReply *e = entries->element[i];
    size_t len = 0;
    const char *job = e->type == REDIS_REPLY_ARRAY && e->elements == 2 ? entry_field(e->element[1], "job", &len) : NULL;
    const char *id = job ? entry_field(e->element[1], "id", NULL) : NULL;
    if (!job || !id || settled(c, id)) status[i] = 2; /* nothing to send: acknowledge */
    else if (produce(k->producer, c->kafka.url.topic, id, job, len, &status[i])) {
      fprintf(stderr, "paella-scheduler: %s\n", pa_errmsg());
      status[i] = -1;
    }
  }
  wait_delivered(k->producer, status, n);
  pa_key unstarted = unstarted_key(c);
  for (int i = 0; i < n; i++) {
    if (status[i] < 0) fprintf(stderr, "paella-scheduler kafka: job not delivered; it stays in the outbox\n");
    if (status[i] <= 0) continue; /* stays pending: re-sent after FORWARD_RECLAIM_MS */
    const char *id = status[i] == 1 ? entry_field(entries->element[i]->element[1], "id", NULL) : NULL;
    redisReply *r = id ? sched_cmdf(c, "ZADD %s %lld %s", unstarted.s, (long long)now_ms(), id) : NULL;
    if (r) freeReplyObject(r);
    r = sched_cmdf(c, "XACK %s %s %s", stream, c->redis.group, entries->element[i]->element[0]->str);
    if (r) freeReplyObject(r);
  }
  return n;
}

/* One pass over the lanes, highest first: entries of a dead replica (or our own, stuck), then
 * new ones. Returns the entries handled, -1 when Redis failed. */
static int forward_once(sched_kafka *k) {
  const sched_config *c = k->c;
  int total = 0;
  /* A booked job that never reports (its record lost with a topic's retention) frees its slot
   * after --job-timeout, so the window cannot close for good. */
  pa_key unstarted = unstarted_key(c);
  redisReply *r = sched_cmdf(c, "ZREMRANGEBYSCORE %s -inf %lld", unstarted.s,
                             (long long)(now_ms() - (int64_t)c->job_timeout_s * 1000));
  if (r) freeReplyObject(r);
  r = sched_cmdf(c, "ZCARD %s", unstarted.s);
  long long room = r && r->type == REDIS_REPLY_INTEGER ? c->dispatch_depth - r->integer : -1;
  if (r) freeReplyObject(r);
  if (!r) return -1;
  for (int lane = 0; lane < PA_LANES && !k->stop && room > 0; lane++) {
    pa_key stream = pa_key_lane(c->redis.stream, lane);
    int n = 0, count = room < FORWARD_BATCH ? (int)room : FORWARD_BATCH;
    r = sched_cmdf(c, "XAUTOCLAIM %s %s %s %d 0-0 COUNT %d", stream.s, c->redis.group, c->consumer,
                   FORWARD_RECLAIM_MS, count);
    if (!r) return -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_ARRAY)
      n += forward_entries(k, stream.s, r->element[1]);
    freeReplyObject(r);
    if (n < count) {
      r = sched_cmdf(c, "XREADGROUP GROUP %s %s COUNT %d STREAMS %s >", c->redis.group, c->consumer, count - n,
                     stream.s);
      if (!r) return -1;
      if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->elements == 2)
        n += forward_entries(k, stream.s, r->element[0]->element[1]);
      freeReplyObject(r);
    }
    total += n;
    room -= n;
  }
  return total;
}

static void *forwarder_main(void *arg) {
  sched_kafka *k = arg;
  while (!k->stop) {
    int n = forward_once(k);
    if (n > 0) dispatch_all(k->c, NULL); /* the lanes have room again */
    else usleep(n < 0 ? 200000 : 50000);
  }
  sched_redis_drop();
  return NULL;
}

/* ---- bridge: {topic}.events and {topic}.dead -> the registry -------------------------------- */

/* What the Redis worker's event and result scripts do (worker/queue_redis.c), unfenced: Kafka
 * fences a stale worker by its group generation. A start marks the job running unless final and
 * counts an attempt; a result is recorded only when none is (the first result wins, and a job
 * the scheduler settled - canceled, past its deadline - keeps its outcome).
 * A start or a result also frees the job's slot in the forwarder's window.
 * KEYS: events stream, job hash, window zset. ARGV: type, id, msg, now, maxlen, status of a result. */
static const char EVENT_LUA[] =
    "if ARGV[1] ~= 'progress' and ARGV[1] ~= 'preview' then redis.call('ZREM', KEYS[3], ARGV[2]) end\n"
    "local s = redis.call('HGET', KEYS[2], 'status')\n"
    "local final = s == 'succeeded' or s == 'failed' or s == 'canceled'\n"
    "if ARGV[1] == 'completed' or ARGV[1] == 'failed' then\n"
    "  if final then return 0 end\n"
    "  redis.call('HSET', KEYS[2], 'status', ARGV[6], 'result', ARGV[3], 'updated_ms', ARGV[4])\n"
    "elseif ARGV[1] == 'start' then\n"
    "  if not final then redis.call('HSET', KEYS[2], 'status', 'running', 'updated_ms', ARGV[4]) end\n"
    "  redis.call('HINCRBY', KEYS[2], 'attempts', 1)\n"
    "end\n"
    "redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'type', ARGV[1], 'id', ARGV[2], 'msg', ARGV[3])\n"
    "return 1\n";

static const char *header(const rd_kafka_message_t *m, const char *name, char *buf, size_t cap) {
  rd_kafka_headers_t *h = NULL;
  const void *v = NULL;
  size_t len = 0;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, name, &v, &len) || !v) return NULL;
  snprintf(buf, cap, "%.*s", (int)len, (const char *)v);
  return buf;
}

static int bridge_event(const sched_config *c, const rd_kafka_message_t *m, const char *id) {
  char type[32], status[16] = "";
  if (!header(m, "type", type, sizeof type)) return PA_OK; /* not ours: skip */
  if (!strcmp(type, "completed") || !strcmp(type, "failed") || !strcmp(type, "canceled")) {
    pw_result res;
    pw_error err;
    pw_result_init(&res);
    int bad = pw_result_decode(m->payload, m->len, &res, &err);
    if (!bad) snprintf(status, sizeof status, "%s", pw_status_name(res.status));
    /* Redis events name a result completed or failed; the Result says which outcome */
    if (!bad) snprintf(type, sizeof type, "%s", res.status == PW_STATUS_SUCCEEDED ? "completed" : "failed");
    pw_result_free(&res);
    if (bad) return PA_OK; /* an unreadable result cannot settle anything */
  }
  pa_key events = pa_key_events(c->redis.stream), job = pa_key_job(id), window = unstarted_key(c);
  char now[24], maxlen[24];
  snprintf(now, sizeof now, "%" PRId64, now_ms());
  snprintf(maxlen, sizeof maxlen, "%ld", c->redis.events_maxlen);
  const char *args[] = {events.s, job.s, window.s, type, id, m->payload ? (const char *)m->payload : "", now, maxlen,
                        status};
  size_t lens[9];
  for (int i = 0; i < 9; i++) lens[i] = strlen(args[i]);
  lens[5] = m->payload ? m->len : 0;
  redisReply *r = sched_eval(c, EVENT_LUA, 3, 6, args, lens);
  int rc = r && r->type == REDIS_REPLY_INTEGER ? PA_OK : PA_ERR_IO;
  if (r) freeReplyObject(r);
  return rc;
}

/* A dead letter as the Redis worker writes it ({stream}:dead, fields of docs/queues.md); the
 * entry field names the record: kafka:PARTITION:OFFSET. */
static int bridge_dead(const sched_config *c, const rd_kafka_message_t *m, const char *id) {
  static const char *const names[] = {"code", "field", "message", "deliveries", "last_code", "last_message",
                                      "last_attempt"};
  enum { N = sizeof names / sizeof *names };
  char values[N][1024], entry[64];
  pa_key dead = pa_key_dead(c->redis.stream);
  snprintf(entry, sizeof entry, "kafka:%" PRId32 ":%" PRId64, m->partition, m->offset);
  const char *argv[8 + 2 * N] = {"XADD", dead.s, "*", "job", m->payload ? (const char *)m->payload : "", "id", id};
  size_t lens[8 + 2 * N];
  int n = 7;
  for (int i = 0; i < N; i++) {
    bool have = header(m, names[i], values[i], sizeof values[i]) != NULL;
    if (!have && i >= 4) continue; /* last_*: only when the worker noted a failure before */
    if (!have) values[i][0] = 0;
    argv[n++] = names[i];
    argv[n++] = values[i];
  }
  argv[n++] = "entry";
  argv[n++] = entry;
  for (int i = 0; i < n; i++) lens[i] = strlen(argv[i]);
  lens[4] = m->payload ? m->len : 0;
  redisReply *r = sched_cmd(c, n, argv, lens);
  int rc = r && r->type == REDIS_REPLY_STRING ? PA_OK : PA_ERR_IO;
  if (r) freeReplyObject(r);
  pa_key window = unstarted_key(c);
  if (rc == PA_OK && (r = sched_cmdf(c, "ZREM %s %s", window.s, id))) freeReplyObject(r);
  return rc;
}

static int bridge_one(sched_kafka *k, const rd_kafka_message_t *m) {
  char id[PW_MAX_ID_BYTES + 1];
  if (!m->key || m->key_len == 0 || m->key_len > PW_MAX_ID_BYTES) return PA_OK; /* no job id: nothing to apply */
  snprintf(id, sizeof id, "%.*s", (int)m->key_len, (const char *)m->key);
  const char *topic = rd_kafka_topic_name(m->rkt);
  size_t tl = strlen(topic), sl = strlen(PA_KAFKA_DEAD_SUFFIX);
  bool dead = tl > sl && !strcmp(topic + tl - sl, PA_KAFKA_DEAD_SUFFIX);
  return dead ? bridge_dead(k->c, m, id) : bridge_event(k->c, m, id);
}

static void *bridge_main(void *arg) {
  sched_kafka *k = arg;
  while (!k->stop) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, 200);
    if (!m) continue;
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        fprintf(stderr, "paella-scheduler kafka: consume: %s\n", rd_kafka_message_errstr(m));
      rd_kafka_message_destroy(m);
      continue;
    }
    /* Redis away: keep the record (its offset unstored) and retry it; later records wait. */
    while (!k->stop && bridge_one(k, m) != PA_OK) usleep(200000);
    if (!k->stop) rd_kafka_offset_store(m->rkt, m->partition, m->offset); /* commits offset + 1 */
    rd_kafka_message_destroy(m);
  }
  sched_redis_drop();
  return NULL;
}

/* ---- lifecycle -------------------------------------------------------------------------- */

static int consumer_new(sched_kafka *k) {
  const sched_config *c = k->c;
  const char *const defaults[] = {"group.id", c->kafka.url.events_group, "enable.auto.commit", "true",
                                  "enable.auto.offset.store", "false",
                                  /* events produced before the first scheduler joined still count */
                                  "auto.offset.reset", "earliest", NULL};
  int rc = client_new(c, RD_KAFKA_CONSUMER, defaults, &k->consumer);
  if (rc) return rc;
  rd_kafka_poll_set_consumer(k->consumer);
  char events[300], dead[300];
  snprintf(events, sizeof events, "%s" PA_KAFKA_EVENTS_SUFFIX, c->kafka.url.topic);
  snprintf(dead, sizeof dead, "%s" PA_KAFKA_DEAD_SUFFIX, c->kafka.url.topic);
  rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(2);
  if (!sub) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  rd_kafka_topic_partition_list_add(sub, events, RD_KAFKA_PARTITION_UA);
  rd_kafka_topic_partition_list_add(sub, dead, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t err = rd_kafka_subscribe(k->consumer, sub);
  rd_kafka_topic_partition_list_destroy(sub);
  if (err) return pa_fail(PA_ERR_IO, "kafka: subscribe %s, %s: %s", events, dead, rd_kafka_err2str(err));
  return PA_OK;
}

int sched_kafka_start(const sched_config *c, sched_kafka **out) {
  *out = NULL;
  sched_kafka *k = calloc(1, sizeof *k);
  if (!k) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  k->c = c;
  static const char *const producer_defaults[] = {"enable.idempotence", "true", "message.timeout.ms", "60000",
                                                  "linger.ms", "5", NULL};
  int rc = client_new(c, RD_KAFKA_PRODUCER, producer_defaults, &k->producer);
  if (!rc) rc = consumer_new(k);
  if (rc) goto fail;
  g_kafka = k;
  if (pthread_create(&k->forwarder, NULL, forwarder_main, k) == 0) k->started++;
  if (k->started == 1 && pthread_create(&k->bridge, NULL, bridge_main, k) == 0) k->started++;
  if (k->started < 2) {
    rc = pa_fail(PA_ERR_NOMEM, "kafka: pthread_create failed");
    goto fail;
  }
  *out = k;
  return PA_OK;
fail:
  sched_kafka_stop(k);
  return rc;
}

void sched_kafka_stop(sched_kafka *k) {
  if (!k) return;
  k->stop = true;
  if (k->started > 0) pthread_join(k->forwarder, NULL);
  if (k->started > 1) pthread_join(k->bridge, NULL);
  if (g_kafka == k) g_kafka = NULL;
  if (k->consumer) {
    rd_kafka_consumer_close(k->consumer); /* commits the offsets stored so far */
    rd_kafka_destroy(k->consumer);
  }
  if (k->producer) {
    rd_kafka_flush(k->producer, 10000);
    rd_kafka_destroy(k->producer);
  }
  free(k);
}

int sched_kafka_cancel(const sched_config *c, const char *job_id) {
  sched_kafka *k = g_kafka;
  if (!k) return pa_fail(PA_ERR_IO, "kafka: the scheduler's Kafka clients are not running");
  char topic[300];
  int status = 0;
  snprintf(topic, sizeof topic, "%s" PA_KAFKA_CONTROL_SUFFIX, c->kafka.url.topic);
  int rc = produce(k->producer, topic, job_id, PA_KAFKA_CANCEL_VALUE, strlen(PA_KAFKA_CANCEL_VALUE), &status);
  if (rc) return rc;
  wait_delivered(k->producer, &status, 1);
  if (status < 0)
    return pa_fail(PA_ERR_IO, "kafka: the cancel record of %s was not delivered to %s", job_id, topic);
  return PA_OK;
}
