/* The Kafka transport of the queue contract (worker/queue.h); docs/queues.md "Kafka details".
 *
 * One high-level consumer (group {group}, subscribed to {topic}) and one idempotent producer
 * (results, progress, dead letters, retries, attempt records). Offsets are auto-committed, but
 * only offsets we stored ourselves (enable.auto.offset.store=false), and we store one only after
 * the job's result, dead letter or re-produced retry was acknowledged by the brokers: a worker
 * that dies mid-job never committed past it, so the group delivers it again.
 *
 * Kafka commits a watermark, not individual messages: storing offset 8 of a partition also
 * "acknowledges" 5 and 6. With several jobs of one partition in flight and acked out of order,
 * we therefore store the lowest offset still in flight or held (or one past the highest
 * claimed), never more. Every operation takes one recursive lock: librdkafka calls our
 * rebalance, error and delivery callbacks from inside poll calls we make while holding it.
 *
 * Kafka keeps no per-message state, so two compacted topics carry what Redis keeps in hashes;
 * a third consumer handle (the watcher, no group membership) reads both from the beginning:
 * - {topic}.control: key = job id, any non-null value = cancel requested (a tombstone withdraws
 *   it). is_canceled reads the watcher's set; claim first catches the watcher up to the
 *   topics' high watermarks, so a cancel produced before a job is claimed is always seen.
 * - {topic}.attempts: key = "<origin partition>:<origin offset>/<job id>", value = deliveries
 *   so far (decimal). claim writes the new count (and waits for it) before handing a job out,
 *   so a worker killed mid-job leaves the count behind for the next one; the key gets a
 *   tombstone once the job is settled. A transient failure re-produces the job to {topic}
 *   with headers deliveries, origin, last_code/last_message/last_attempt and not_before (now +
 *   lease_ms: the retry delay), then stores the old offset: the count follows the job. */
#include "worker/queue_kafka.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "proto/proto.h"
#include "worker/kafka_topics.h"
#include "worker/kafka_url.h"

#define KQ_MAX_SEEN 4096 /* delivery counters kept (oldest dropped first) */

/* A claimed message whose job has not been acked yet. */
typedef struct {
  int32_t partition;
  int64_t offset;
  char *key; /* the job id the producer used as key (kept for the dead letter) */
  size_t key_len;
  char *akey;   /* its key in {topic}.attempts */
  char *origin; /* "partition:offset" of the job's first record (kept across retries) */
  char *last_code, *last_message, *last_attempt; /* the failure a retry carried (NULL: none) */
} kq_flight;

/* A recorded delivery count from {topic}.attempts. */
typedef struct {
  char *akey;
  int count;
} kq_count;

/* A partition of a watched topic and how far the watcher has read it. */
typedef struct {
  const char *topic; /* k->control_topic or k->attempts_topic */
  int32_t partition;
  int64_t next; /* one past the last record read (-1: none yet) */
} kq_watched;

/* How often this instance handed out one message (re-deliveries after a rebalance). */
typedef struct {
  int32_t partition;
  int64_t offset;
  int count;
} kq_seen;

/* Per assigned partition: one past the highest claimed offset and the last stored offset. */
typedef struct {
  int32_t partition;
  int64_t next, stored;
} kq_part;

/* Filled by the delivery report of one produced message. */
typedef struct {
  int done;
  rd_kafka_resp_err_t err;
} kq_dr;

typedef struct {
  rd_kafka_t *consumer, *producer;
  char *topic, *events_topic, *dead_topic;
  pthread_mutex_t mu;
  int mu_ok;
  bool paused;
  kq_flight *flights;
  size_t n_flights, cap_flights;
  kq_seen *seen;
  size_t n_seen, cap_seen;
  kq_part *parts;
  size_t n_parts, cap_parts;
  rd_kafka_message_t **stash; /* polled while a job ran (renew); handed out by the next claim */
  size_t n_stash, cap_stash;
  char fatal[512];            /* non-empty once librdkafka reported a fatal error */
  pa_kafka_stats stats;
  /* the watcher: {topic}.control and {topic}.attempts, read from the beginning, no group */
  rd_kafka_t *watcher;
  char *control_topic, *attempts_topic;
  kq_watched *watched;
  size_t n_watched;
  char **cancels;             /* job ids with a cancel record */
  size_t n_cancels, cap_cancels;
  kq_count *counts;           /* attempts key -> deliveries recorded */
  size_t n_counts, cap_counts;
  int retry_ms;               /* not_before delay of a re-produced retry (lease_ms) */
} kq;

static const pa_queue_ops kq_ops;

/* ---- small helpers --------------------------------------------------------------------- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return PA_OK;
  size_t n = *cap ? *cap * 2 : 16;
  while (n < need) n *= 2;
  void *p = realloc(*arr, n * elem);
  if (!p) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  *arr = p;
  *cap = n;
  return PA_OK;
}

static char *dup_n(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

static void lock(kq *k) { pthread_mutex_lock(&k->mu); }
static void unlock(kq *k) { pthread_mutex_unlock(&k->mu); }

/* ---- bookkeeping: flights, delivery counts, partitions, stash ---------------------------- */

static long flight_find(const kq *k, int32_t p, int64_t off) {
  for (size_t i = 0; i < k->n_flights; i++)
    if (k->flights[i].partition == p && k->flights[i].offset == off) return (long)i;
  return -1;
}

static void flight_remove(kq *k, size_t i) {
  kq_flight *f = &k->flights[i];
  free(f->key);
  free(f->akey);
  free(f->origin);
  free(f->last_code);
  free(f->last_message);
  free(f->last_attempt);
  k->flights[i] = k->flights[--k->n_flights];
}

/* A header's value as a NUL-terminated string (malloc'd; NULL when absent, too long or out of
 * memory). */
static char *header_str(const rd_kafka_message_t *m, const char *name) {
  rd_kafka_headers_t *h;
  const void *v;
  size_t n;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, name, &v, &n) || !v || n > 4096) return NULL;
  return dup_n(v, n);
}

/* A header holding a non-negative decimal integer; -1 when absent or unreadable. */
static int64_t header_i64(const rd_kafka_message_t *m, const char *name) {
  rd_kafka_headers_t *h;
  const void *v;
  size_t n;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, name, &v, &n) || !v || n == 0 || n > 18)
    return -1;
  int64_t x = 0;
  for (size_t i = 0; i < n; i++) {
    char c = ((const char *)v)[i];
    if (c < '0' || c > '9') return -1;
    x = x * 10 + (c - '0');
  }
  return x;
}

static int flight_add(kq *k, const rd_kafka_message_t *m, const char *origin, const char *akey) {
  int rc;
  long i = flight_find(k, m->partition, m->offset);
  if (i >= 0) flight_remove(k, (size_t)i); /* a re-fetch after a seek: one record per offset */
  PA_TRY(grow((void **)&k->flights, &k->cap_flights, k->n_flights + 1, sizeof *k->flights));
  kq_flight *f = &k->flights[k->n_flights++];
  memset(f, 0, sizeof *f);
  f->partition = m->partition;
  f->offset = m->offset;
  f->key = dup_n(m->key ? m->key : "", m->key ? m->key_len : 0);
  f->key_len = m->key ? m->key_len : 0;
  f->akey = strdup(akey);
  f->origin = strdup(origin);
  f->last_code = header_str(m, "last_code");
  f->last_message = header_str(m, "last_message");
  f->last_attempt = header_str(m, "last_attempt");
  if (!f->key || !f->akey || !f->origin) {
    flight_remove(k, k->n_flights - 1);
    return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  }
  return PA_OK;
fail:
  return rc;
}

/* Local deliveries of (p, off) so far (0: none). */
static int seen_count(const kq *k, int32_t p, int64_t off) {
  for (size_t i = 0; i < k->n_seen; i++)
    if (k->seen[i].partition == p && k->seen[i].offset == off) return k->seen[i].count;
  return 0;
}

/* Counts one more local delivery of (p, off); returns the count (0 on allocation failure). */
static int seen_bump(kq *k, int32_t p, int64_t off) {
  for (size_t i = 0; i < k->n_seen; i++)
    if (k->seen[i].partition == p && k->seen[i].offset == off) return ++k->seen[i].count;
  if (k->n_seen == KQ_MAX_SEEN) { /* bounded: entries of partitions now owned elsewhere age out */
    memmove(k->seen, k->seen + KQ_MAX_SEEN / 2, (KQ_MAX_SEEN / 2) * sizeof *k->seen);
    k->n_seen = KQ_MAX_SEEN / 2;
  }
  if (grow((void **)&k->seen, &k->cap_seen, k->n_seen + 1, sizeof *k->seen) != PA_OK) return 0;
  k->seen[k->n_seen++] = (kq_seen){p, off, 1};
  return 1;
}

static void seen_remove(kq *k, int32_t p, int64_t off) {
  for (size_t i = 0; i < k->n_seen; i++)
    if (k->seen[i].partition == p && k->seen[i].offset == off) {
      memmove(k->seen + i, k->seen + i + 1, (k->n_seen - i - 1) * sizeof *k->seen);
      k->n_seen--;
      return;
    }
}

static kq_part *part_get(kq *k, int32_t p, bool create) {
  for (size_t i = 0; i < k->n_parts; i++)
    if (k->parts[i].partition == p) return &k->parts[i];
  if (!create || grow((void **)&k->parts, &k->cap_parts, k->n_parts + 1, sizeof *k->parts) != PA_OK)
    return NULL;
  k->parts[k->n_parts] = (kq_part){p, -1, -1};
  return &k->parts[k->n_parts++];
}

static bool in_list(const rd_kafka_topic_partition_list_t *l, const char *topic, int32_t p) {
  for (int i = 0; i < l->cnt; i++)
    if (l->elems[i].partition == p && strcmp(l->elems[i].topic, topic) == 0) return true;
  return false;
}

/* A partition given to or taken from us: its fetch position restarts at the committed offset,
 * so what we tracked for it (in-flight jobs, polled-but-unclaimed messages) no longer holds.
 * Delivery counts survive: they are how we notice the re-delivery when it comes back. */
static void forget_partitions(kq *k, const rd_kafka_topic_partition_list_t *l) {
  for (size_t i = k->n_flights; i-- > 0;)
    if (in_list(l, k->topic, k->flights[i].partition)) flight_remove(k, i);
  for (size_t i = k->n_parts; i-- > 0;)
    if (in_list(l, k->topic, k->parts[i].partition)) k->parts[i] = k->parts[--k->n_parts];
  size_t j = 0;
  for (size_t i = 0; i < k->n_stash; i++) {
    if (in_list(l, k->topic, k->stash[i]->partition))
      rd_kafka_message_destroy(k->stash[i]);
    else
      k->stash[j++] = k->stash[i];
  }
  k->n_stash = j;
}

/* ---- callbacks ------------------------------------------------------------------------- */

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  kq *k = opaque;
  lock(k);
  k->stats.errors++;
  if (err == RD_KAFKA_RESP_ERR__FATAL && !k->fatal[0]) {
    char buf[256];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof buf);
    snprintf(k->fatal, sizeof k->fatal, "%s: fatal error %s: %s", rd_kafka_name(rk), rd_kafka_err2name(orig), buf);
  }
  unlock(k);
  /* Transient errors (a broker down, a timed-out request) are retried by librdkafka; they are
   * printed for the operator, not returned. */
  fprintf(stderr, "paella kafka: %s: %s: %s\n", rd_kafka_name(rk), rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  kq *k = opaque;
  kq_dr *dr = m->_private;
  if (dr) {
    dr->err = m->err;
    dr->done = 1;
  } else if (m->err) { /* a progress event: not durable by contract, counted only */
    lock(k);
    k->stats.errors++;
    unlock(k);
  }
}

static void report_rebalance_error(kq *k, const char *what, const char *msg) {
  k->stats.errors++;
  fprintf(stderr, "paella kafka: rebalance: %s: %s\n", what, msg);
}

static void rebalance_assign(kq *k, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *l, bool coop) {
  forget_partitions(k, l);
  if (coop) {
    rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, l);
    if (e) {
      report_rebalance_error(k, "incremental assign", rd_kafka_error_string(e));
      rd_kafka_error_destroy(e);
      return;
    }
    k->stats.assigned += l->cnt;
  } else {
    rd_kafka_resp_err_t err = rd_kafka_assign(rk, l);
    if (err) return report_rebalance_error(k, "assign", rd_kafka_err2str(err));
    k->stats.assigned = l->cnt;
  }
  /* A job is still running: the new partitions must not fetch either. */
  if (k->paused) {
    rd_kafka_resp_err_t err = rd_kafka_pause_partitions(rk, l);
    if (err) report_rebalance_error(k, "pause", rd_kafka_err2str(err));
  }
}

static void rebalance_revoke(kq *k, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *l, bool coop) {
  /* Commit what was acknowledged before the partitions move: auto-commit runs on a timer, and
   * without this the next owner would re-run jobs whose results are already recorded. Not when
   * the assignment was lost (expelled from the group): the commit can only fail, and waiting
   * on it holds up the rejoin. */
  if (!rd_kafka_assignment_lost(rk)) {
    rd_kafka_resp_err_t cerr = rd_kafka_commit(rk, NULL, 0);
    if (cerr && cerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
      report_rebalance_error(k, "commit on revoke", rd_kafka_err2str(cerr));
  }
  forget_partitions(k, l);
  if (coop) {
    rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, l);
    if (e) {
      report_rebalance_error(k, "incremental unassign", rd_kafka_error_string(e));
      rd_kafka_error_destroy(e);
      return;
    }
    k->stats.assigned -= l->cnt;
  } else {
    rd_kafka_resp_err_t err = rd_kafka_assign(rk, NULL);
    if (err) return report_rebalance_error(k, "unassign", rd_kafka_err2str(err));
    k->stats.assigned = 0;
  }
}

/* Served from inside rd_kafka_consumer_poll / rd_kafka_consumer_close on our thread. Works with
 * both protocols: eager (the default range,roundrobin: everything is revoked, then reassigned)
 * and cooperative (partition.assignment.strategy=cooperative-sticky: only moved partitions). */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *l,
                         void *opaque) {
  kq *k = opaque;
  bool coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  lock(k);
  k->stats.rebalances++;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    rebalance_assign(k, rk, l, coop);
  } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
    rebalance_revoke(k, rk, l, coop);
  } else {
    report_rebalance_error(k, "error", rd_kafka_err2str(err));
    rebalance_revoke(k, rk, l, coop);
  }
  unlock(k);
}

/* ---- setup ----------------------------------------------------------------------------- */

static int conf_set(rd_kafka_conf_t *c, const char *key, const char *value) {
  char err[512];
  if (rd_kafka_conf_set(c, key, value, err, sizeof err) != RD_KAFKA_CONF_OK)
    return pa_fail(PA_ERR_INVALID, "kafka: %s=%s: %s", key, value, err);
  return PA_OK;
}

/* Common settings; the URL's properties come last so they override our defaults (but not the
 * reserved ones, refused by pa_kafka_url_parse). */
static int conf_new(kq *k, const pa_kafka_url *u, const char *client, const char *const *defaults,
                    rd_kafka_conf_t **out) {
  int rc;
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (!c) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  PA_TRY(conf_set(c, "bootstrap.servers", u->brokers));
  PA_TRY(conf_set(c, "client.id", client));
  for (int i = 0; defaults[i]; i += 2) PA_TRY(conf_set(c, defaults[i], defaults[i + 1]));
  for (int i = 0; i < u->n_props; i++) PA_TRY(conf_set(c, u->prop_key[i], u->prop_value[i]));
  rd_kafka_conf_set_error_cb(c, on_error);
  rd_kafka_conf_set_opaque(c, k);
  *out = c;
  return PA_OK;
fail:
  rd_kafka_conf_destroy(c);
  return rc;
}

static int handle_new(rd_kafka_type_t type, rd_kafka_conf_t *c, rd_kafka_t **out) {
  char err[512];
  *out = rd_kafka_new(type, c, err, sizeof err); /* takes c only on success */
  if (!*out) {
    rd_kafka_conf_destroy(c);
    return pa_fail(PA_ERR_INVALID, "kafka: creating the %s: %s", type == RD_KAFKA_PRODUCER ? "producer" : "consumer", err);
  }
  return PA_OK;
}

static int producer_new(kq *k, const pa_kafka_url *u, const char *client) {
  static const char *const defaults[] = {
      "enable.idempotence", "true", /* broker-side dedup of retried produce requests */
      "message.timeout.ms", "60000", "linger.ms", "5", NULL};
  rd_kafka_conf_t *c;
  int rc = conf_new(k, u, client, defaults, &c);
  if (rc != PA_OK) return rc;
  rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
  return handle_new(RD_KAFKA_PRODUCER, c, &k->producer);
}

static int consumer_new(kq *k, const pa_kafka_url *u, const char *client) {
  const char *const defaults[] = {
      "group.id", u->group, "enable.auto.commit", "true", "enable.auto.offset.store", "false",
      /* jobs submitted before the first worker joined must not be skipped */
      "auto.offset.reset", "earliest", "enable.partition.eof", "false", NULL};
  rd_kafka_conf_t *c;
  int rc = conf_new(k, u, client, defaults, &c);
  if (rc != PA_OK) return rc;
  rd_kafka_conf_set_rebalance_cb(c, on_rebalance);
  PA_TRY(handle_new(RD_KAFKA_CONSUMER, c, &k->consumer));
  rd_kafka_resp_err_t err = rd_kafka_poll_set_consumer(k->consumer); /* one queue: poll serves all */
  if (err) return pa_fail(PA_ERR_IO, "kafka: poll_set_consumer: %s", rd_kafka_err2str(err));
  rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
  if (!sub) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  rd_kafka_topic_partition_list_add(sub, k->topic, RD_KAFKA_PARTITION_UA);
  err = rd_kafka_subscribe(k->consumer, sub);
  rd_kafka_topic_partition_list_destroy(sub);
  if (err) return pa_fail(PA_ERR_IO, "kafka: subscribe %s: %s", k->topic, rd_kafka_err2str(err));
  return PA_OK;
fail:
  return rc;
}

/* The watcher: a consumer of {topic}.control and {topic}.attempts that is never a group member
 * (assign only, nothing committed; group.id is set only because librdkafka's consumer API wants
 * one). Its partitions are found lazily by watch_assign, so a worker starts while the brokers
 * are unreachable, as the job consumer does. */
static int watcher_new(kq *k, const pa_kafka_url *u, const char *client) {
  char id[160], group[300];
  snprintf(id, sizeof id, "%s-watch", client);
  snprintf(group, sizeof group, "%s.watch.%s", u->group, client);
  const char *const defaults[] = {"group.id", group, "enable.auto.commit", "false", "enable.partition.eof", "true",
                                  "fetch.wait.max.ms", "100", NULL};
  rd_kafka_conf_t *c;
  int rc = conf_new(k, u, id, defaults, &c);
  if (rc != PA_OK) return rc;
  PA_TRY(handle_new(RD_KAFKA_CONSUMER, c, &k->watcher));
  rd_kafka_resp_err_t err = rd_kafka_poll_set_consumer(k->watcher);
  if (err) return pa_fail(PA_ERR_IO, "kafka: poll_set_consumer (watcher): %s", rd_kafka_err2str(err));
  return PA_OK;
fail:
  return rc;
}

static void kq_destroy(kq *k) {
  if (!k) return;
  if (k->consumer) {
    /* Leaves the group and commits the offsets stored so far (auto commit); unacked jobs stay
     * uncommitted and go to another worker. */
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(k->consumer);
    if (err) fprintf(stderr, "paella kafka: consumer close: %s\n", rd_kafka_err2str(err));
    rd_kafka_destroy(k->consumer);
  }
  if (k->watcher) {
    rd_kafka_consumer_close(k->watcher); /* no group membership: nothing to commit */
    rd_kafka_destroy(k->watcher);
  }
  if (k->producer) {
    /* Progress events still queued; results were already waited for. */
    if (rd_kafka_flush(k->producer, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
      fprintf(stderr, "paella kafka: %d progress events undelivered at close\n", rd_kafka_outq_len(k->producer));
    rd_kafka_destroy(k->producer);
  }
  while (k->n_flights) flight_remove(k, k->n_flights - 1);
  for (size_t i = 0; i < k->n_stash; i++) rd_kafka_message_destroy(k->stash[i]);
  free(k->flights);
  free(k->seen);
  free(k->parts);
  free(k->stash);
  free(k->topic);
  free(k->events_topic);
  free(k->dead_topic);
  free(k->control_topic);
  free(k->attempts_topic);
  free(k->watched);
  for (size_t i = 0; i < k->n_cancels; i++) free(k->cancels[i]);
  free(k->cancels);
  for (size_t i = 0; i < k->n_counts; i++) free(k->counts[i].akey);
  free(k->counts);
  if (k->mu_ok) pthread_mutex_destroy(&k->mu);
  free(k);
}

/* *out = topic + suffix (worker/kafka_topics.h); -1 when out of memory. */
static int derived(const char *topic, const char *suffix, char **out) {
  size_t n = strlen(topic) + strlen(suffix) + 1;
  if (!(*out = malloc(n))) return -1;
  snprintf(*out, n, "%s%s", topic, suffix);
  return 0;
}

static int kq_alloc(const pa_kafka_url *u, const pa_queue_options *o, kq **out) {
  kq *k = calloc(1, sizeof *k);
  if (!k) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  *out = k;
  pthread_mutexattr_t a;
  if (pthread_mutexattr_init(&a) != 0) return pa_fail(PA_ERR_NOMEM, "kafka: mutexattr");
  int e = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
  if (e == 0) e = pthread_mutex_init(&k->mu, &a);
  pthread_mutexattr_destroy(&a);
  if (e != 0) return pa_fail(PA_ERR_NOMEM, "kafka: mutex init failed");
  k->mu_ok = 1;
  k->retry_ms = o && o->lease_ms > 0 ? o->lease_ms : 60000;
  k->topic = strdup(u->topic);
  if (!k->topic || derived(u->topic, PA_KAFKA_EVENTS_SUFFIX, &k->events_topic) ||
      derived(u->topic, PA_KAFKA_DEAD_SUFFIX, &k->dead_topic) ||
      derived(u->topic, PA_KAFKA_CONTROL_SUFFIX, &k->control_topic) ||
      derived(u->topic, PA_KAFKA_ATTEMPTS_SUFFIX, &k->attempts_topic))
    return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  return PA_OK;
}

int pa_queue_open_kafka(const char *url, const pa_queue_options *o, pa_queue **out) {
  int rc;
  pa_kafka_url u;
  kq *k = NULL;
  pa_queue *q = NULL;
  char client[128];
  *out = NULL;
  PA_TRY(pa_kafka_url_parse(url, &u));
  PA_TRY(kq_alloc(&u, o, &k));
  if (o && o->consumer && o->consumer[0]) {
    snprintf(client, sizeof client, "%s", o->consumer);
  } else {
    char host[64] = "worker";
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "worker");
    host[sizeof host - 1] = 0;
    snprintf(client, sizeof client, "%s-%ld", host, (long)getpid());
  }
  PA_TRY(producer_new(k, &u, client));
  PA_TRY(consumer_new(k, &u, client));
  PA_TRY(watcher_new(k, &u, client));
  q = calloc(1, sizeof *q);
  if (!q) {
    rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
    goto fail;
  }
  q->ops = &kq_ops;
  q->impl = k;
  *out = q;
  return PA_OK;
fail:
  kq_destroy(k);
  return rc;
}

/* ---- producing ------------------------------------------------------------------------- */

/* Queues one message; on success the headers belong to librdkafka. `dr` (may be NULL) receives
 * the delivery report. A full local queue is drained for up to ~5 s before giving up. */
static int produce(kq *k, const char *topic, const void *key, size_t klen, const void *val, size_t vlen,
                   rd_kafka_headers_t *hdrs, kq_dr *dr) {
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
  for (int tries = 0; tries < 50; tries++) {
    err = rd_kafka_producev(k->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, klen),
                            RD_KAFKA_V_VALUE((void *)val, vlen), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(dr), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
    rd_kafka_poll(k->producer, 100);
  }
  if (err) {
    if (hdrs) rd_kafka_headers_destroy(hdrs);
    return pa_fail(PA_ERR_IO, "kafka: produce to %s: %s", topic, rd_kafka_err2str(err));
  }
  return PA_OK;
}

static int stash_push(kq *k, rd_kafka_message_t *m) {
  int rc = grow((void **)&k->stash, &k->cap_stash, k->n_stash + 1, sizeof *k->stash);
  if (rc != PA_OK) {
    rd_kafka_message_destroy(m); /* not lost: its offset was never stored */
    return rc;
  }
  k->stash[k->n_stash++] = m;
  return PA_OK;
}

/* One consumer poll: a job message (or NULL). Rebalances and errors are served inside. */
static rd_kafka_message_t *poll_job(kq *k, int timeout_ms) {
  rd_kafka_message_t *m = rd_kafka_consumer_poll(k->consumer, timeout_ms);
  if (!m || !m->err) return m;
  if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
    k->stats.errors++;
    if (m->err == RD_KAFKA_RESP_ERR__FATAL && !k->fatal[0])
      snprintf(k->fatal, sizeof k->fatal, "consumer: %s", rd_kafka_message_errstr(m));
    else
      fprintf(stderr, "paella kafka: consumer: %s\n", rd_kafka_message_errstr(m));
  }
  rd_kafka_message_destroy(m);
  return NULL;
}

/* Serves the consumer (rebalances, max.poll.interval.ms) and the producer's delivery reports
 * while a job runs. A message polled here is kept for the next claim, not dropped: its fetch
 * position has moved past it, so it would otherwise wait for the next rebalance. */
static int keepalive(kq *k) {
  rd_kafka_poll(k->producer, 0);
  if (!k->consumer) return PA_OK; /* a producer-only handle (pa_queue_kafka_cancel) */
  rd_kafka_message_t *m = poll_job(k, 0);
  return m ? stash_push(k, m) : PA_OK;
}

static int wait_delivery(kq *k, kq_dr *dr, const char *what, const char *id) {
  /* librdkafka always reports within message.timeout.ms, so this loop ends. flush (not poll)
   * because it sends at once instead of waiting out linger.ms; it also waits for the progress
   * events queued before, which is harmless. */
  while (!dr->done) {
    rd_kafka_resp_err_t err = rd_kafka_flush(k->producer, 100);
    if (err && err != RD_KAFKA_RESP_ERR__TIMED_OUT)
      return pa_fail(PA_ERR_IO, "kafka: flush: %s", rd_kafka_err2str(err));
    int rc = keepalive(k);
    if (rc != PA_OK) return rc;
  }
  if (dr->err)
    return pa_fail(PA_ERR_IO, "kafka: %s of job %s not delivered: %s", what, id, rd_kafka_err2str(dr->err));
  return PA_OK;
}

static rd_kafka_headers_t *headers(const char *const *kv) {
  size_t n = 0;
  while (kv[2 * n]) n++;
  rd_kafka_headers_t *h = rd_kafka_headers_new(n);
  if (!h) return NULL;
  for (size_t i = 0; i < n; i++)
    if (rd_kafka_header_add(h, kv[2 * i], -1, kv[2 * i + 1] ? kv[2 * i + 1] : "", -1)) {
      rd_kafka_headers_destroy(h);
      return NULL;
    }
  return h;
}

static int check_fatal(kq *k) {
  return k->fatal[0] ? pa_fail(PA_ERR_IO, "kafka: %s", k->fatal) : PA_OK;
}

/* ---- delivery handles and offsets ------------------------------------------------------ */

static int handle_parse(const char *h, int32_t *p, int64_t *off) {
  long long pp, oo;
  int used = 0;
  if (sscanf(h, "%lld:%lld%n", &pp, &oo, &used) != 2 || h[used] != 0 || pp < 0 || pp > INT32_MAX || oo < 0)
    return pa_fail(PA_ERR_INVALID, "kafka: bad delivery handle \"%s\"", h);
  *p = (int32_t)pp;
  *off = oo;
  return PA_OK;
}

static int store_offset(kq *k, int32_t p, int64_t next) {
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  if (!l) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  rd_kafka_topic_partition_list_add(l, k->topic, p)->offset = next;
  rd_kafka_resp_err_t err = rd_kafka_offsets_store(k->consumer, l);
  if (!err) err = l->elems[0].err;
  rd_kafka_topic_partition_list_destroy(l);
  if (err)
    return pa_fail(PA_ERR_IO, "kafka: storing offset %s [%d] %" PRId64 ": %s", k->topic, (int)p, next,
                   rd_kafka_err2str(err));
  return PA_OK;
}

/* ---- the watcher: cancel records and delivery counts ------------------------------------ */

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long cancel_find(const kq *k, const char *id) {
  for (size_t i = 0; i < k->n_cancels; i++)
    if (strcmp(k->cancels[i], id) == 0) return (long)i;
  return -1;
}

static long count_find(const kq *k, const char *akey) {
  for (size_t i = 0; i < k->n_counts; i++)
    if (strcmp(k->counts[i].akey, akey) == 0) return (long)i;
  return -1;
}

static int count_get(const kq *k, const char *akey) {
  long i = count_find(k, akey);
  return i < 0 ? 0 : k->counts[i].count;
}

/* Counts only grow while a job lives (records are read in order; a tombstone ends them). */
static void count_raise(kq *k, const char *akey, int count) {
  long i = count_find(k, akey);
  if (i >= 0) {
    if (count > k->counts[i].count) k->counts[i].count = count;
    return;
  }
  char *key = strdup(akey);
  if (!key || grow((void **)&k->counts, &k->cap_counts, k->n_counts + 1, sizeof *k->counts) != PA_OK) {
    free(key); /* the count is only undercounted here, never lost from the topic */
    return;
  }
  k->counts[k->n_counts++] = (kq_count){key, count};
}

static void count_drop(kq *k, const char *akey) {
  long i = count_find(k, akey);
  if (i < 0) return;
  free(k->counts[i].akey);
  k->counts[i] = k->counts[--k->n_counts];
}

/* The watcher has read (p of topic) up to `next`. */
static void watch_advance(kq *k, const char *topic, int32_t p, int64_t next) {
  for (size_t i = 0; i < k->n_watched; i++)
    if (k->watched[i].partition == p && strcmp(k->watched[i].topic, topic) == 0 && next > k->watched[i].next)
      k->watched[i].next = next;
}

/* One record of a watched topic. */
static void watch_apply(kq *k, const rd_kafka_message_t *m) {
  const char *topic = rd_kafka_topic_name(m->rkt);
  watch_advance(k, topic, m->partition, m->offset + 1);
  char *key = dup_n(m->key ? m->key : "", m->key ? m->key_len : 0);
  if (!key) return;
  if (strcmp(topic, k->control_topic) == 0) {
    long i = cancel_find(k, key);
    if (!m->payload && i >= 0) { /* a tombstone: the cancel was withdrawn */
      free(k->cancels[i]);
      k->cancels[i] = k->cancels[--k->n_cancels];
    } else if (m->payload && i < 0 &&
               grow((void **)&k->cancels, &k->cap_cancels, k->n_cancels + 1, sizeof *k->cancels) == PA_OK) {
      k->cancels[k->n_cancels++] = key;
      k->stats.cancels++;
      key = NULL;
    }
  } else if (!m->payload) {
    count_drop(k, key);
  } else {
    char v[16] = {0};
    int c = 0;
    if (m->len < sizeof v) memcpy(v, m->payload, m->len);
    if (sscanf(v, "%d", &c) == 1 && c > 0) count_raise(k, key, c);
  }
  free(key);
}

/* Applies what the watcher has fetched, waiting up to timeout_ms for the first record. */
static void watch_drain(kq *k, int timeout_ms) {
  for (int wait = timeout_ms;; wait = 0) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->watcher, wait);
    if (!m) return;
    if (!m->err) {
      watch_apply(k, m);
    } else if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      /* at the end: also past records compaction removed from the tail, which a count of the
       * records read would never reach */
      if (m->rkt) watch_advance(k, rd_kafka_topic_name(m->rkt), m->partition, m->offset);
    } else {
      k->stats.errors++;
      fprintf(stderr, "paella kafka: watcher: %s\n", rd_kafka_message_errstr(m));
    }
    rd_kafka_message_destroy(m);
  }
}

/* The partitions of one watched topic, from the producer's metadata (a producer may have the
 * brokers auto-create the topic where they allow it; docs/queues.md says to create it
 * compacted). */
static int watch_topic(kq *k, const char *topic, rd_kafka_topic_partition_list_t *l) {
  rd_kafka_topic_t *t = rd_kafka_topic_new(k->producer, topic, NULL);
  if (!t) return pa_fail(PA_ERR_NOMEM, "kafka: topic handle %s", topic);
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
  int np = 0;
  for (int64_t end = now_ms() + 10000; np == 0;) {
    const struct rd_kafka_metadata *md = NULL;
    err = rd_kafka_metadata(k->producer, 0, t, &md, 5000);
    if (!err && md->topic_cnt == 1 && !(err = md->topics[0].err)) {
      np = md->topics[0].partition_cnt;
      for (int i = 0; i < np; i++)
        rd_kafka_topic_partition_list_add(l, topic, md->topics[0].partitions[i].id)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    }
    if (md) rd_kafka_metadata_destroy(md);
    if (np == 0 && now_ms() > end) break;
    if (np == 0) usleep(100 * 1000); /* being auto-created: leaders come a moment later */
  }
  rd_kafka_topic_destroy(t);
  if (np == 0)
    return pa_fail(PA_ERR_IO, "kafka: topic %s: %s (create it with cleanup.policy=compact: docs/queues.md)", topic,
                   rd_kafka_err2str(err ? err : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART));
  return PA_OK;
}

/* Assigns every partition of {topic}.control and {topic}.attempts to the watcher, from the
 * beginning. Once; a partition added to those topics later needs a worker restart. */
static int watch_assign(kq *k) {
  int rc;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
  if (!l) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  PA_TRY(watch_topic(k, k->control_topic, l));
  PA_TRY(watch_topic(k, k->attempts_topic, l));
  k->watched = calloc((size_t)l->cnt, sizeof *k->watched);
  if (!k->watched) {
    rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
    goto fail;
  }
  rd_kafka_resp_err_t err = rd_kafka_assign(k->watcher, l);
  if (err) {
    rc = pa_fail(PA_ERR_IO, "kafka: assigning the watcher: %s", rd_kafka_err2str(err));
    goto fail;
  }
  for (int i = 0; i < l->cnt; i++) {
    bool control = strcmp(l->elems[i].topic, k->control_topic) == 0;
    k->watched[i] = (kq_watched){control ? k->control_topic : k->attempts_topic, l->elems[i].partition, -1};
  }
  k->n_watched = (size_t)l->cnt;
  rc = PA_OK;
fail:
  if (rc != PA_OK) {
    free(k->watched);
    k->watched = NULL;
  }
  rd_kafka_topic_partition_list_destroy(l);
  return rc;
}

/* Reads the watched topics up to the high watermarks they have now: every cancel and attempt
 * record produced before this call is then applied. */
static int watch_sync(kq *k) {
  int rc;
  if (!k->n_watched) PA_TRY(watch_assign(k));
  int64_t *hi = calloc(k->n_watched, sizeof *hi);
  if (!hi) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  for (size_t i = 0; i < k->n_watched; i++) {
    int64_t lo = 0;
    rd_kafka_resp_err_t err =
        rd_kafka_query_watermark_offsets(k->watcher, k->watched[i].topic, k->watched[i].partition, &lo, &hi[i], 10000);
    if (err) {
      free(hi);
      return pa_fail(PA_ERR_IO, "kafka: watermarks of %s [%d]: %s", k->watched[i].topic, (int)k->watched[i].partition,
                     rd_kafka_err2str(err));
    }
    if (lo >= hi[i]) hi[i] = -1; /* empty (or all deleted): nothing to read */
  }
  rc = PA_OK;
  for (int64_t end = now_ms() + 30000;;) {
    size_t behind = 0;
    for (size_t i = 0; i < k->n_watched; i++) behind += k->watched[i].next < hi[i];
    if (!behind) break;
    if (now_ms() > end) {
      rc = pa_fail(PA_ERR_IO, "kafka: %s / %s not read to their end within 30 s (%zu partitions behind)",
                   k->control_topic, k->attempts_topic, behind);
      break;
    }
    watch_drain(k, 100);
  }
  free(hi);
  return rc;
fail:
  return rc;
}

/* Writes a tombstone for a settled job's delivery count (not awaited: a lost one only leaves a
 * small record for compaction to keep). */
static void count_tombstone(kq *k, const char *akey) {
  count_drop(k, akey);
  if (produce(k, k->attempts_topic, akey, strlen(akey), NULL, 0, NULL, NULL) != PA_OK)
    fprintf(stderr, "paella kafka: %s\n", pa_errmsg());
}

/* The job at (p, off) is settled (result, dead letter or retry durable): drop it from the
 * in-flight set and store the partition's new watermark if it moved. `done`: the job ends here
 * (its delivery count is dropped); a retry keeps it. */
static int settle(kq *k, int32_t p, int64_t off, bool done) {
  long i = flight_find(k, p, off);
  kq_part *pt = part_get(k, p, false);
  if (i < 0 || !pt)
    return pa_fail(PA_ERR_NOTFOUND,
                   "kafka: %s [%d] offset %" PRId64 " is not in flight here (partition revoked by a rebalance?); "
                   "it will be delivered again",
                   k->topic, (int)p, off);
  if (done) count_tombstone(k, k->flights[i].akey);
  flight_remove(k, (size_t)i);
  seen_remove(k, p, off);
  k->stats.acked++;
  int64_t mark = pt->next;
  for (size_t j = 0; j < k->n_flights; j++)
    if (k->flights[j].partition == p && k->flights[j].offset < mark) mark = k->flights[j].offset;
  for (size_t j = 0; j < k->n_stash; j++) /* held retries (not_before) and put-back messages */
    if (k->stash[j]->partition == p && k->stash[j]->offset < mark) mark = k->stash[j]->offset;
  if (mark <= pt->stored) return PA_OK; /* an older job of this partition is still running */
  int rc = store_offset(k, p, mark);
  if (rc == PA_OK) pt->stored = mark;
  return rc;
}

/* ---- the operations -------------------------------------------------------------------- */

static const char *result_type(const uint8_t *msg, size_t len) {
  pw_result r;
  pw_error err;
  pw_result_init(&r);
  const char *t = "result"; /* undecodable: still recorded, consumers see the raw bytes */
  if (pw_result_decode(msg, len, &r, &err) == 0)
    t = r.status == PW_STATUS_SUCCEEDED ? "completed" : r.status == PW_STATUS_FAILED ? "failed" : "canceled";
  pw_result_free(&r);
  return t;
}

/* After too_many_attempts, the last failure a retry carried goes beside the code (as on Redis). */
static int dead_produce(kq *k, const kq_flight *f, const uint8_t *payload, size_t len, int deliveries,
                        const char *code, const char *field, const char *message) {
  char n[16];
  snprintf(n, sizeof n, "%d", deliveries);
  bool last = f->last_code && strcmp(code, "too_many_attempts") == 0;
  const char *kv[] = {"code", code, "field", field, "message", message, "deliveries", n,
                      last ? "last_code" : NULL, f->last_code, "last_message", f->last_message,
                      "last_attempt", f->last_attempt, NULL};
  rd_kafka_headers_t *h = headers(kv);
  if (!h) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  kq_dr dr = {0};
  int rc = produce(k, k->dead_topic, f->key, f->key_len, payload, len, h, &dr);
  return rc == PA_OK ? wait_delivery(k, &dr, "dead letter", f->key) : rc;
}

/* Puts a message back for the next claim (its offset stays unstored meanwhile). */
static void unclaim(kq *k, rd_kafka_message_t *m) {
  if (stash_push(k, m) != PA_OK)
    fprintf(stderr, "paella kafka: %s (the message comes back after the next rebalance)\n", pa_errmsg());
}

/* One message being handed out by claim. */
typedef struct {
  rd_kafka_message_t *m;
  char origin[48];
  char *akey;
  int count, rc;
  kq_dr dr;
} kq_claiming;

/* The delivery count of a message: one more than the most of (the count recorded in
 * {topic}.attempts, the `deliveries` header a re-publisher set plus this instance's earlier
 * deliveries of the same offset), and the attempts record that makes it durable. */
static int count_and_record(kq *k, kq_claiming *c) {
  rd_kafka_message_t *m = c->m;
  char *origin = header_str(m, "origin");
  if (origin && strlen(origin) < sizeof c->origin && strchr(origin, ':'))
    snprintf(c->origin, sizeof c->origin, "%s", origin);
  else
    snprintf(c->origin, sizeof c->origin, "%d:%" PRId64, (int)m->partition, m->offset);
  free(origin);
  size_t ol = strlen(c->origin), kl = m->key ? m->key_len : 0;
  c->akey = malloc(ol + kl + 2);
  if (!c->akey) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  memcpy(c->akey, c->origin, ol);
  c->akey[ol] = '/';
  if (kl) memcpy(c->akey + ol + 1, m->key, kl);
  c->akey[ol + 1 + kl] = 0;
  int64_t hd = header_i64(m, "deliveries");
  int before = (int)(hd > 0 && hd < 1000000 ? hd : 0) + seen_count(k, m->partition, m->offset);
  int recorded = count_get(k, c->akey);
  c->count = (recorded > before ? recorded : before) + 1;
  char v[16];
  snprintf(v, sizeof v, "%d", c->count);
  int rc = check_fatal(k);
  if (rc == PA_OK) rc = produce(k, k->attempts_topic, c->akey, strlen(c->akey), v, strlen(v), NULL, &c->dr);
  return rc;
}

/* The attempt record is durable: m becomes delivery d. */
static int take(kq *k, kq_claiming *c, pa_delivery *d) {
  rd_kafka_message_t *m = c->m;
  kq_part *pt = part_get(k, m->partition, true);
  if (!pt || seen_bump(k, m->partition, m->offset) == 0) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  memset(d, 0, sizeof *d);
  d->payload = malloc(m->len ? m->len : 1);
  if (!d->payload) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  int rc = flight_add(k, m, c->origin, c->akey);
  if (rc != PA_OK) {
    pa_delivery_clear(d);
    return rc;
  }
  count_raise(k, c->akey, c->count);
  if (c->count > 1) k->stats.redeliveries++;
  k->stats.claimed++;
  if (m->offset + 1 > pt->next) pt->next = m->offset + 1;
  snprintf(d->handle, sizeof d->handle, "%d:%" PRId64, (int)m->partition, m->offset);
  if (m->len) memcpy(d->payload, m->payload, m->len);
  d->len = m->len;
  d->deliveries = c->count;
  return PA_OK;
}

/* Counts the polled messages, makes the counts durable, hands out those whose count is. The
 * watcher is caught up first, so the counts (and is_canceled) include every record written
 * before. A message that cannot be handed out is put back for the next claim. */
static int hand_out(kq *k, rd_kafka_message_t **msgs, int got, pa_delivery *out, int *n) {
  int rc = watch_sync(k);
  kq_claiming *c = rc == PA_OK ? calloc((size_t)got, sizeof *c) : NULL;
  if (rc == PA_OK && !c) rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  if (rc != PA_OK) {
    for (int i = 0; i < got; i++) unclaim(k, msgs[i]);
    return rc;
  }
  for (int i = 0; i < got; i++) {
    c[i].m = msgs[i];
    c[i].rc = count_and_record(k, &c[i]);
  }
  for (int i = 0; i < got; i++) {
    if (c[i].rc == PA_OK) c[i].rc = wait_delivery(k, &c[i].dr, "attempt count", c[i].akey);
    if (c[i].rc == PA_OK) c[i].rc = take(k, &c[i], &out[*n]);
    if (c[i].rc == PA_OK) {
      (*n)++;
      rd_kafka_message_destroy(c[i].m);
    } else {
      rc = c[i].rc;
      unclaim(k, c[i].m);
    }
    free(c[i].akey);
  }
  free(c);
  return rc;
}

/* The next message to hand out: a held one whose not_before has come, else a fetched one (a
 * fetched retry that is not due yet is held). NULL: none within timeout_ms. */
static rd_kafka_message_t *next_message(kq *k, int timeout_ms) {
  int64_t now = wall_ms(), soonest = -1;
  for (size_t i = 0; i < k->n_stash; i++) {
    int64_t due = header_i64(k->stash[i], "not_before");
    if (due <= now) {
      rd_kafka_message_t *m = k->stash[i];
      memmove(k->stash + i, k->stash + i + 1, (k->n_stash - i - 1) * sizeof *k->stash);
      k->n_stash--;
      return m;
    }
    if (soonest < 0 || due < soonest) soonest = due;
  }
  if (soonest >= 0 && soonest - now < timeout_ms) timeout_ms = (int)(soonest - now);
  rd_kafka_message_t *m = poll_job(k, timeout_ms);
  if (m && header_i64(m, "not_before") > wall_ms()) {
    unclaim(k, m);
    return NULL;
  }
  return m;
}

static int kq_claim(pa_queue *q, int max, int block_ms, pa_delivery *out, int *n) {
  kq *k = q->impl;
  int rc = PA_OK, got = 0;
  *n = 0;
  if (max <= 0) return pa_fail(PA_ERR_INVALID, "kafka: claim max %d", max);
  rd_kafka_message_t **msgs = calloc((size_t)max, sizeof *msgs);
  if (!msgs) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  lock(k);
  int64_t deadline = now_ms() + (block_ms > 0 ? block_ms : 0);
  while (got < max && (rc = check_fatal(k)) == PA_OK) {
    int64_t left = deadline - now_ms();
    /* wait only for the first job; then take what is already fetched */
    rd_kafka_message_t *m = next_message(k, got == 0 && left > 0 ? (int)left : 0);
    if (!m) {
      if (got > 0 || left <= 0) break;
      continue;
    }
    msgs[got++] = m;
  }
  if (got > 0) rc = hand_out(k, msgs, got, out, n);
  unlock(k);
  free(msgs);
  /* Jobs already handed out must be run (they are in flight); the error resurfaces next call. */
  return *n > 0 ? PA_OK : rc;
}

static int kq_renew(pa_queue *q, const pa_delivery *d) {
  (void)d; /* Kafka has no per-message lease: staying in the group is what keeps the job */
  kq *k = q->impl;
  lock(k);
  int rc = check_fatal(k);
  if (rc == PA_OK) rc = keepalive(k);
  unlock(k);
  return rc;
}

static int kq_publish_event(pa_queue *q, const char *job_id, const char *type, const uint8_t *msg, size_t len) {
  kq *k = q->impl;
  const char *kv[] = {"type", type, NULL};
  lock(k);
  int rc = check_fatal(k);
  rd_kafka_headers_t *h = rc == PA_OK ? headers(kv) : NULL;
  if (rc == PA_OK && !h) rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  if (rc == PA_OK) rc = produce(k, k->events_topic, job_id, strlen(job_id), msg, len, h, NULL);
  rd_kafka_poll(k->producer, 0); /* serve earlier delivery reports; no waiting */
  unlock(k);
  return rc;
}

/* d and hook are not used: Kafka fences through the group generation (an expelled member's
 * offsets are refused) and has no outbox (the worker queues final webhooks in memory). */
static int kq_record_result(pa_queue *q, const pa_delivery *d, const char *job_id, const uint8_t *result, size_t len,
                            const pa_webhook_msg *hook) {
  (void)d, (void)hook;
  kq *k = q->impl;
  const char *kv[] = {"type", result_type(result, len), NULL};
  kq_dr dr = {0};
  lock(k);
  int rc = check_fatal(k);
  rd_kafka_headers_t *h = rc == PA_OK ? headers(kv) : NULL;
  if (rc == PA_OK && !h) rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  if (rc == PA_OK) rc = produce(k, k->events_topic, job_id, strlen(job_id), result, len, h, &dr);
  if (rc == PA_OK) rc = wait_delivery(k, &dr, "result", job_id);
  unlock(k);
  return rc;
}

static int kq_ack(pa_queue *q, const pa_delivery *d) {
  kq *k = q->impl;
  int32_t p = 0;
  int64_t off = 0;
  int rc = handle_parse(d->handle, &p, &off);
  if (rc != PA_OK) return rc;
  lock(k);
  rc = check_fatal(k);
  if (rc == PA_OK) rc = settle(k, p, off, true);
  unlock(k);
  return rc;
}

static int kq_dead_letter(pa_queue *q, const pa_delivery *d, const char *code, const char *field,
                          const char *message) {
  kq *k = q->impl;
  int32_t p = 0;
  int64_t off = 0;
  int rc = handle_parse(d->handle, &p, &off);
  if (rc != PA_OK) return rc;
  lock(k);
  long i = flight_find(k, p, off);
  rc = check_fatal(k);
  if (rc == PA_OK && i < 0)
    rc = pa_fail(PA_ERR_NOTFOUND, "kafka: dead letter for %s: not in flight here (partition revoked?)", d->handle);
  if (rc == PA_OK)
    rc = dead_produce(k, &k->flights[i], d->payload, d->len, d->deliveries, code, field, message);
  if (rc == PA_OK) {
    k->stats.dead_lettered++;
    rc = settle(k, p, off, true);
  }
  unlock(k);
  return rc;
}

/* A transient failure: the job goes back to the end of its topic with its count and the
 * failure (headers), due again after retry_ms, and this offset is stored. On Redis the entry
 * stays pending and is reclaimed after the lease; Kafka only redelivers an unstored offset after
 * a rebalance, and the count would not follow the job to another worker. */
static int kq_note_failure(pa_queue *q, const pa_delivery *d, const char *job_id, const char *code,
                           const char *message) {
  kq *k = q->impl;
  int32_t p = 0;
  int64_t off = 0;
  int rc = handle_parse(d->handle, &p, &off);
  if (rc != PA_OK) return rc;
  char n[16], due[24];
  snprintf(n, sizeof n, "%d", d->deliveries);
  lock(k);
  long i = flight_find(k, p, off);
  rc = check_fatal(k);
  if (rc == PA_OK && i < 0)
    rc = pa_fail(PA_ERR_NOTFOUND, "kafka: retry of %s: not in flight here (partition revoked?)", d->handle);
  if (rc == PA_OK) {
    kq_flight *f = &k->flights[i];
    snprintf(due, sizeof due, "%" PRId64, wall_ms() + k->retry_ms);
    const char *kv[] = {"deliveries", n, "origin", f->origin, "last_code", code, "last_message", message,
                        "last_attempt", n, "not_before", due, NULL};
    rd_kafka_headers_t *h = headers(kv);
    kq_dr dr = {0};
    rc = h ? produce(k, k->topic, f->key, f->key_len, d->payload, d->len, h, &dr)
           : pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
    if (rc == PA_OK) rc = wait_delivery(k, &dr, "retry", job_id);
  }
  if (rc == PA_OK) {
    k->stats.retried++;
    rc = settle(k, p, off, false);
  }
  unlock(k);
  return rc;
}

/* Reads what the watcher fetched meanwhile (claim caught it up before the job was handed out). */
static bool kq_is_canceled(pa_queue *q, const char *job_id) {
  kq *k = q->impl;
  lock(k);
  if (k->n_watched) watch_drain(k, 0);
  bool canceled = cancel_find(k, job_id) >= 0;
  unlock(k);
  return canceled;
}

static int set_paused(kq *k, bool pause) {
  rd_kafka_topic_partition_list_t *a = NULL;
  rd_kafka_resp_err_t err = rd_kafka_assignment(k->consumer, &a);
  if (!err) err = pause ? rd_kafka_pause_partitions(k->consumer, a) : rd_kafka_resume_partitions(k->consumer, a);
  for (int i = 0; !err && i < a->cnt; i++) err = a->elems[i].err;
  if (a) rd_kafka_topic_partition_list_destroy(a);
  if (err) return pa_fail(PA_ERR_IO, "kafka: %s partitions: %s", pause ? "pause" : "resume", rd_kafka_err2str(err));
  k->paused = pause; /* rebalance_assign pauses partitions assigned meanwhile */
  return PA_OK;
}

static int kq_pause(pa_queue *q) {
  kq *k = q->impl;
  lock(k);
  int rc = set_paused(k, true);
  unlock(k);
  return rc;
}

static int kq_resume(pa_queue *q) {
  kq *k = q->impl;
  lock(k);
  int rc = set_paused(k, false);
  unlock(k);
  return rc;
}

static void kq_close(pa_queue *q) {
  if (!q) return;
  kq_destroy(q->impl);
  free(q);
}

static const pa_queue_ops kq_ops = {
    .claim = kq_claim,
    .renew = kq_renew,
    .publish_event = kq_publish_event,
    .record_result = kq_record_result,
    .ack = kq_ack,
    .dead_letter = kq_dead_letter,
    .note_failure = kq_note_failure,
    .is_canceled = kq_is_canceled,
    .pause = kq_pause,
    .resume = kq_resume,
    .close = kq_close,
};

int pa_queue_kafka_stats(pa_queue *q, pa_kafka_stats *out) {
  if (!q || q->ops != &kq_ops) return pa_fail(PA_ERR_INVALID, "not a Kafka queue");
  kq *k = q->impl;
  lock(k);
  *out = k->stats;
  unlock(k);
  return PA_OK;
}

int pa_queue_kafka_cancel(const char *url, const char *job_id) {
  int rc;
  pa_kafka_url u;
  kq *k = NULL;
  char client[96];
  if (!job_id || !*job_id || strlen(job_id) > PW_MAX_ID_BYTES)
    return pa_fail(PA_ERR_INVALID, "cancel: a job id of 1..%d bytes is required", PW_MAX_ID_BYTES);
  PA_TRY(pa_kafka_url_parse(url, &u));
  PA_TRY(kq_alloc(&u, NULL, &k));
  snprintf(client, sizeof client, "paella-cancel-%ld", (long)getpid());
  PA_TRY(producer_new(k, &u, client));
  kq_dr dr = {0};
  PA_TRY(produce(k, k->control_topic, job_id, strlen(job_id), PA_KAFKA_CANCEL_VALUE, strlen(PA_KAFKA_CANCEL_VALUE), NULL, &dr));
  PA_TRY(wait_delivery(k, &dr, "cancel", job_id));
  PA_TRY(check_fatal(k));
fail:
  kq_destroy(k);
  return rc;
}
