/* The Kafka transport of the queue contract (worker/queue.h); docs/queues.md "Kafka details".
 *
 * One high-level consumer (group {group}, subscribed to {topic}) and one idempotent producer
 * (results, progress and dead letters). Offsets are auto-committed, but only offsets we stored
 * ourselves (enable.auto.offset.store=false), and we store one only after the job's result or
 * dead letter was acknowledged by the brokers: a worker that dies mid-job never committed past
 * it, so the group delivers it again.
 *
 * Kafka commits a watermark, not individual messages: storing offset 8 of a partition also
 * "acknowledges" 5 and 6. With several jobs of one partition in flight and acked out of order,
 * we therefore store the lowest offset still in flight (or one past the highest claimed), never
 * more. Every operation takes one recursive lock: librdkafka calls our rebalance, error and
 * delivery callbacks from inside poll calls we make while holding it. */
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

#define KQ_MAX_PROPS 32
#define KQ_MAX_SEEN 4096 /* delivery counters kept (oldest dropped first) */

typedef struct {
  char *key, *value;
} kq_prop;

typedef struct {
  char *brokers, *topic, *group;
  kq_prop props[KQ_MAX_PROPS]; /* librdkafka properties passed through from the URL */
  int n_props;
} kq_url;

/* A claimed message whose job has not been acked yet. */
typedef struct {
  int32_t partition;
  int64_t offset;
  char *key; /* the job id the producer used as key (kept for the dead letter) */
  size_t key_len;
} kq_flight;

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
  int max_deliveries;
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

/* ---- URL ------------------------------------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes s[0..n) (values such as SASL passwords may need escaping). */
static int url_decode(const char *s, size_t n, char **out) {
  char *p = malloc(n + 1);
  if (!p) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      p[j++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else if (s[i] == '%') {
      free(p);
      return pa_fail(PA_ERR_INVALID, "kafka URL: bad percent escape in \"%.*s\"", (int)n, s);
    } else {
      p[j++] = s[i];
    }
  }
  p[j] = 0;
  *out = p;
  return PA_OK;
}

static void url_free(kq_url *u) {
  free(u->brokers);
  free(u->topic);
  free(u->group);
  for (int i = 0; i < u->n_props; i++) {
    free(u->props[i].key);
    free(u->props[i].value);
  }
  memset(u, 0, sizeof *u);
}

/* These carry the delivery guarantees; a URL must not turn them off. */
static bool reserved_prop(const char *key) {
  static const char *const names[] = {"enable.auto.commit", "enable.auto.offset.store",
                                      "enable.idempotence", "group.id", "bootstrap.servers",
                                      "acks", "request.required.acks"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strcmp(key, names[i]) == 0) return true;
  return false;
}

static int url_param(kq_url *u, const char *s, size_t n) {
  const char *eq = memchr(s, '=', n);
  if (!eq || eq == s) return pa_fail(PA_ERR_INVALID, "kafka URL: parameter \"%.*s\" is not key=value", (int)n, s);
  char *key = NULL, *value = NULL;
  int rc;
  PA_TRY(url_decode(s, (size_t)(eq - s), &key));
  PA_TRY(url_decode(eq + 1, n - (size_t)(eq - s) - 1, &value));
  if (strcmp(key, "topic") == 0 || strcmp(key, "group") == 0) {
    char **slot = key[0] == 't' ? &u->topic : &u->group;
    if (!*value) {
      rc = pa_fail(PA_ERR_INVALID, "kafka URL: empty %s", key);
      goto fail;
    }
    free(*slot);
    *slot = value;
    free(key);
    return PA_OK;
  }
  if (reserved_prop(key)) {
    rc = pa_fail(PA_ERR_INVALID, "kafka URL: %s is set by the transport and cannot be overridden", key);
    goto fail;
  }
  if (u->n_props == KQ_MAX_PROPS) {
    rc = pa_fail(PA_ERR_INVALID, "kafka URL: more than %d properties", KQ_MAX_PROPS);
    goto fail;
  }
  u->props[u->n_props].key = key;
  u->props[u->n_props++].value = value;
  return PA_OK;
fail:
  free(key);
  free(value);
  return rc;
}

/* kafka://BROKERS?topic=paella.jobs&group=workers&librdkafka.property=value... */
static int url_parse(const char *url, kq_url *u) {
  int rc;
  if (!url || strncmp(url, "kafka://", 8) != 0) return pa_fail(PA_ERR_INVALID, "kafka URL must start with kafka://");
  const char *b = url + 8, *q = strchr(b, '?');
  size_t blen = q ? (size_t)(q - b) : strlen(b);
  if (blen == 0) return pa_fail(PA_ERR_INVALID, "kafka URL %s: no brokers", url);
  u->brokers = dup_n(b, blen);
  u->topic = strdup("paella.jobs");
  u->group = strdup("workers");
  if (!u->brokers || !u->topic || !u->group) {
    rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
    goto fail;
  }
  for (const char *s = q ? q + 1 : NULL; s && *s;) {
    const char *amp = strchr(s, '&');
    size_t n = amp ? (size_t)(amp - s) : strlen(s);
    if (n) PA_TRY(url_param(u, s, n));
    s = amp ? amp + 1 : NULL;
  }
  return PA_OK;
fail:
  url_free(u);
  return rc;
}

/* ---- bookkeeping: flights, delivery counts, partitions, stash ---------------------------- */

static long flight_find(const kq *k, int32_t p, int64_t off) {
  for (size_t i = 0; i < k->n_flights; i++)
    if (k->flights[i].partition == p && k->flights[i].offset == off) return (long)i;
  return -1;
}

static void flight_remove(kq *k, size_t i) {
  free(k->flights[i].key);
  k->flights[i] = k->flights[--k->n_flights];
}

static int flight_add(kq *k, int32_t p, int64_t off, const void *key, size_t key_len) {
  int rc;
  long i = flight_find(k, p, off);
  if (i >= 0) flight_remove(k, (size_t)i); /* a re-fetch after a seek: one record per offset */
  PA_TRY(grow((void **)&k->flights, &k->cap_flights, k->n_flights + 1, sizeof *k->flights));
  kq_flight *f = &k->flights[k->n_flights];
  f->partition = p;
  f->offset = off;
  f->key = dup_n(key ? key : "", key ? key_len : 0);
  f->key_len = key ? key_len : 0;
  if (!f->key) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  k->n_flights++;
  return PA_OK;
fail:
  return rc;
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
 * reserved ones, refused by url_param). */
static int conf_new(kq *k, const kq_url *u, const char *client, const char *const *defaults,
                    rd_kafka_conf_t **out) {
  int rc;
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (!c) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  PA_TRY(conf_set(c, "bootstrap.servers", u->brokers));
  PA_TRY(conf_set(c, "client.id", client));
  for (int i = 0; defaults[i]; i += 2) PA_TRY(conf_set(c, defaults[i], defaults[i + 1]));
  for (int i = 0; i < u->n_props; i++) PA_TRY(conf_set(c, u->props[i].key, u->props[i].value));
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

static int producer_new(kq *k, const kq_url *u, const char *client) {
  static const char *const defaults[] = {
      "enable.idempotence", "true", /* broker-side dedup of retried produce requests */
      "message.timeout.ms", "60000", "linger.ms", "5", NULL};
  rd_kafka_conf_t *c;
  int rc = conf_new(k, u, client, defaults, &c);
  if (rc != PA_OK) return rc;
  rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
  return handle_new(RD_KAFKA_PRODUCER, c, &k->producer);
}

static int consumer_new(kq *k, const kq_url *u, const char *client) {
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

static void kq_destroy(kq *k) {
  if (!k) return;
  if (k->consumer) {
    /* Leaves the group and commits the offsets stored so far (auto commit); unacked jobs stay
     * uncommitted and go to another worker. */
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(k->consumer);
    if (err) fprintf(stderr, "paella kafka: consumer close: %s\n", rd_kafka_err2str(err));
    rd_kafka_destroy(k->consumer);
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
  if (k->mu_ok) pthread_mutex_destroy(&k->mu);
  free(k);
}

static int kq_alloc(const kq_url *u, const pa_queue_options *o, kq **out) {
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
  k->max_deliveries = o ? o->max_deliveries : 0;
  size_t tl = strlen(u->topic);
  k->topic = strdup(u->topic);
  k->events_topic = malloc(tl + 8);
  k->dead_topic = malloc(tl + 6);
  if (!k->topic || !k->events_topic || !k->dead_topic) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  snprintf(k->events_topic, tl + 8, "%s.events", u->topic);
  snprintf(k->dead_topic, tl + 6, "%s.dead", u->topic);
  return PA_OK;
}

int pa_queue_open_kafka(const char *url, const pa_queue_options *o, pa_queue **out) {
  int rc;
  kq_url u = {0};
  kq *k = NULL;
  pa_queue *q = NULL;
  char client[128];
  *out = NULL;
  PA_TRY(url_parse(url, &u));
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
  q = calloc(1, sizeof *q);
  if (!q) {
    rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
    goto fail;
  }
  q->ops = &kq_ops;
  q->impl = k;
  *out = q;
  url_free(&u);
  return PA_OK;
fail:
  url_free(&u);
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

/* The job at (p, off) is done (result or dead letter durable): drop it from the in-flight set
 * and store the partition's new watermark if it moved. */
static int settle(kq *k, int32_t p, int64_t off) {
  long i = flight_find(k, p, off);
  kq_part *pt = part_get(k, p, false);
  if (i < 0 || !pt)
    return pa_fail(PA_ERR_NOTFOUND,
                   "kafka: %s [%d] offset %" PRId64 " is not in flight here (partition revoked by a rebalance?); "
                   "it will be delivered again",
                   k->topic, (int)p, off);
  flight_remove(k, (size_t)i);
  seen_remove(k, p, off);
  k->stats.acked++;
  int64_t mark = pt->next;
  for (size_t j = 0; j < k->n_flights; j++)
    if (k->flights[j].partition == p && k->flights[j].offset < mark) mark = k->flights[j].offset;
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

static int dead_produce(kq *k, const kq_flight *f, const uint8_t *payload, size_t len, int deliveries,
                        const char *code, const char *field, const char *message) {
  char n[16];
  snprintf(n, sizeof n, "%d", deliveries);
  const char *kv[] = {"code", code, "field", field, "message", message, "deliveries", n, NULL};
  rd_kafka_headers_t *h = headers(kv);
  if (!h) return pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
  kq_dr dr = {0};
  int rc = produce(k, k->dead_topic, f->key, f->key_len, payload, len, h, &dr);
  return rc == PA_OK ? wait_delivery(k, &dr, "dead letter", f->key) : rc;
}

/* A `deliveries` header on the job counts earlier deliveries elsewhere (set by whoever
 * re-published it); 0 when absent or unreadable. */
static int header_deliveries(const rd_kafka_message_t *m) {
  rd_kafka_headers_t *h;
  const void *v;
  size_t n;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, "deliveries", &v, &n) || !v || n == 0 || n > 6)
    return 0;
  int d = 0;
  for (size_t i = 0; i < n; i++) {
    char c = ((const char *)v)[i];
    if (c < '0' || c > '9') return 0;
    d = d * 10 + (c - '0');
  }
  return d;
}

/* Turns a polled message into a delivery (*took = true), or dead-letters it when it was
 * delivered more than max_deliveries times. Takes ownership of m. */
static int accept_message(kq *k, rd_kafka_message_t *m, pa_delivery *d, bool *took) {
  int rc;
  *took = false;
  kq_part *pt = part_get(k, m->partition, true);
  int local = seen_bump(k, m->partition, m->offset);
  if (!pt || local == 0) {
    rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
    goto fail;
  }
  if (local > 1) k->stats.redeliveries++;
  k->stats.claimed++;
  PA_TRY(flight_add(k, m->partition, m->offset, m->key, m->key_len));
  if (m->offset + 1 > pt->next) pt->next = m->offset + 1;
  int count = local + header_deliveries(m);
  if (k->max_deliveries > 0 && count > k->max_deliveries) {
    char msg[96];
    snprintf(msg, sizeof msg, "delivered %d times (max_deliveries %d)", count, k->max_deliveries);
    PA_TRY(dead_produce(k, &k->flights[k->n_flights - 1], m->payload, m->len, count, "too_many_attempts", "", msg));
    k->stats.dead_lettered++;
    PA_TRY(settle(k, m->partition, m->offset));
    rd_kafka_message_destroy(m);
    return PA_OK;
  }
  memset(d, 0, sizeof *d);
  snprintf(d->handle, sizeof d->handle, "%d:%" PRId64, (int)m->partition, m->offset);
  d->payload = malloc(m->len ? m->len : 1);
  if (!d->payload) {
    rc = pa_fail(PA_ERR_NOMEM, "kafka: out of memory");
    goto fail;
  }
  if (m->len) memcpy(d->payload, m->payload, m->len);
  d->len = m->len;
  d->deliveries = count;
  *took = true;
  rd_kafka_message_destroy(m);
  return PA_OK;
fail:
  rd_kafka_message_destroy(m); /* not lost: its offset is not stored */
  return rc;
}

static rd_kafka_message_t *next_message(kq *k, int timeout_ms) {
  if (k->n_stash) {
    rd_kafka_message_t *m = k->stash[0];
    memmove(k->stash, k->stash + 1, (k->n_stash - 1) * sizeof *k->stash);
    k->n_stash--;
    return m;
  }
  return poll_job(k, timeout_ms);
}

static int kq_claim(pa_queue *q, int max, int block_ms, pa_delivery *out, int *n) {
  kq *k = q->impl;
  int rc = PA_OK;
  *n = 0;
  if (max <= 0) return pa_fail(PA_ERR_INVALID, "kafka: claim max %d", max);
  lock(k);
  int64_t deadline = now_ms() + (block_ms > 0 ? block_ms : 0);
  while (*n < max && (rc = check_fatal(k)) == PA_OK) {
    int64_t left = deadline - now_ms();
    /* wait only for the first job; then take what is already fetched */
    rd_kafka_message_t *m = next_message(k, *n == 0 && left > 0 ? (int)left : 0);
    if (!m) {
      if (*n > 0 || left <= 0) break;
      continue;
    }
    bool took;
    rc = accept_message(k, m, &out[*n], &took);
    if (rc != PA_OK) break;
    if (took) (*n)++;
  }
  unlock(k);
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
  if (rc == PA_OK) rc = settle(k, p, off);
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
    rc = settle(k, p, off);
  }
  unlock(k);
  return rc;
}

static bool kq_is_canceled(pa_queue *q, const char *job_id) {
  (void)q;
  (void)job_id; /* no cancel topic yet: cancellation is a Redis feature for now */
  return false;
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
