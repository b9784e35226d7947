/* The Kafka transport (worker/queue_kafka.c) against librdkafka's mock cluster: exactly one
 * result per job and nothing left for the group afterwards, redelivery of an unacked job to
 * another consumer, dead letters with their headers, pause/resume through a job longer than
 * max.poll.interval.ms without a rebalance, a partition leader going down mid-run, cancel
 * records on {topic}.control, and delivery counts on {topic}.attempts that survive a consumer's
 * death and follow a re-produced retry.
 * Every wait is bounded; figures are printed. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "tests/test.h"
#include "worker/kafka_topics.h"
#include "worker/kafka_url.h"
#include "worker/queue.h"
#include "worker/queue_kafka.h"

/* Small timeouts so group membership problems show within seconds. The mock coordinator holds
 * a group's first JoinGroup for 3 s without counting it as activity, so the session timeout
 * must exceed that; max.poll.interval.ms may not be below it. */
#define GROUP_PROPS                                                                             \
  "&session.timeout.ms=4000&heartbeat.interval.ms=300&max.poll.interval.ms=4000"                \
  "&auto.commit.interval.ms=100&topic.metadata.refresh.interval.ms=500&reconnect.backoff.ms=50" \
  "&reconnect.backoff.max.ms=200&retry.backoff.ms=50&fetch.wait.max.ms=10&fetch.error.backoff.ms=10"

static rd_kafka_mock_cluster_t *mc;
static const char *boot;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void topics(const char *t, int partitions) {
  char n[128];
  CHECK(rd_kafka_mock_topic_create(mc, t, partitions, 3) == RD_KAFKA_RESP_ERR_NO_ERROR);
  snprintf(n, sizeof n, "%s" PA_KAFKA_EVENTS_SUFFIX, t);
  CHECK(rd_kafka_mock_topic_create(mc, n, partitions, 3) == RD_KAFKA_RESP_ERR_NO_ERROR);
  snprintf(n, sizeof n, "%s" PA_KAFKA_DEAD_SUFFIX, t);
  CHECK(rd_kafka_mock_topic_create(mc, n, 1, 3) == RD_KAFKA_RESP_ERR_NO_ERROR);
  snprintf(n, sizeof n, "%s" PA_KAFKA_CONTROL_SUFFIX, t);
  CHECK(rd_kafka_mock_topic_create(mc, n, 2, 3) == RD_KAFKA_RESP_ERR_NO_ERROR);
  snprintf(n, sizeof n, "%s" PA_KAFKA_ATTEMPTS_SUFFIX, t);
  CHECK(rd_kafka_mock_topic_create(mc, n, 2, 3) == RD_KAFKA_RESP_ERR_NO_ERROR);
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *group) {
  char err[256];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  int ok = rd_kafka_conf_set(c, "bootstrap.servers", boot, err, sizeof err) == RD_KAFKA_CONF_OK;
  if (group) ok = ok && rd_kafka_conf_set(c, "group.id", group, err, sizeof err) == RD_KAFKA_CONF_OK;
  if (group) ok = ok && rd_kafka_conf_set(c, "enable.auto.commit", "false", err, sizeof err) == RD_KAFKA_CONF_OK;
  rd_kafka_t *rk = ok ? rd_kafka_new(type, c, err, sizeof err) : NULL;
  CHECK_MSG(rk != NULL, "%s", err);
  if (!rk) rd_kafka_conf_destroy(c);
  return rk;
}

/* Jobs "job-0000".. with value "payload:job-0000"; `first_deliveries` > 0 sets that header on
 * the first job (as a re-publisher would). */
static void produce_jobs(const char *topic, int n, int first_deliveries) {
  rd_kafka_t *p = client(RD_KAFKA_PRODUCER, NULL);
  if (!p) return;
  for (int i = 0; i < n; i++) {
    char key[32], val[64], dl[16];
    snprintf(key, sizeof key, "job-%04d", i);
    snprintf(val, sizeof val, "payload:%s", key);
    snprintf(dl, sizeof dl, "%d", first_deliveries);
    rd_kafka_headers_t *h = rd_kafka_headers_new(1);
    if (i == 0 && first_deliveries > 0) rd_kafka_header_add(h, "deliveries", -1, dl, -1);
    rd_kafka_resp_err_t e = rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
                                              RD_KAFKA_V_VALUE(val, strlen(val)), RD_KAFKA_V_HEADERS(h),
                                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    CHECK(e == RD_KAFKA_RESP_ERR_NO_ERROR);
    if (e) rd_kafka_headers_destroy(h);
  }
  CHECK(rd_kafka_flush(p, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_destroy(p);
}

/* Reads every message of `topic` (partitions 0..np-1, up to the high watermarks). */
typedef void (*msg_fn)(const rd_kafka_message_t *m, void *arg);

static int read_topic(const char *topic, int np, msg_fn fn, void *arg) {
  rd_kafka_t *c = client(RD_KAFKA_CONSUMER, "verify");
  if (!c) return -1;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
  int64_t total = 0, got = 0;
  for (int p = 0; p < np; p++) {
    int64_t lo = 0, hi = 0;
    CHECK(rd_kafka_query_watermark_offsets(c, topic, p, &lo, &hi, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);
    total += hi - lo;
    rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  CHECK(rd_kafka_assign(c, l) == RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_topic_partition_list_destroy(l);
  double end = now_s() + 60; /* a wait for a state: generous, a loaded machine is slow */
  while (got < total && now_s() < end) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 200);
    if (!m) continue;
    if (!m->err) {
      fn(m, arg);
      got++;
    }
    rd_kafka_message_destroy(m);
  }
  CHECK_MSG(got == total, "%s: read %lld of %lld", topic, (long long)got, (long long)total);
  rd_kafka_consumer_close(c);
  rd_kafka_destroy(c);
  return (int)got;
}

static pa_queue *open_queue_lease(const char *topic, const char *group, const char *consumer, int max_deliveries,
                                  int lease_ms) {
  char url[1024];
  snprintf(url, sizeof url, "kafka://%s?topic=%s&group=%s" GROUP_PROPS, boot, topic, group);
  pa_queue_options o = {.consumer = consumer, .lease_ms = lease_ms, .max_deliveries = max_deliveries};
  pa_queue *q = NULL;
  CHECK_OK(pa_queue_open_kafka(url, &o, &q));
  return q;
}

static pa_queue *open_queue(const char *topic, const char *group, const char *consumer, int max_deliveries) {
  return open_queue_lease(topic, group, consumer, max_deliveries, 0);
}

static int job_of(const pa_delivery *d) {
  char buf[32]; /* payloads are not NUL-terminated */
  int j = -1;
  if (d->len < 13 || d->len >= sizeof buf) return -1;
  memcpy(buf, d->payload, d->len);
  buf[d->len] = 0;
  if (sscanf(buf, "payload:job-%4d", &j) != 1) return -1;
  return j;
}

/* ---- the simulated worker -------------------------------------------------------------- */

typedef struct {
  int n;
  int acks[512];  /* successful acks per job */
  _Atomic int done; /* distinct jobs acked */
  int claimed, redelivered, ack_failures, result_failures;
} tally;

/* One claim; each job: result, then ack (in reverse order, so acks arrive out of order). */
static void work_once(pa_queue *q, int max, tally *t) {
  pa_delivery d[16];
  int n = 0;
  if (q->ops->claim(q, max, 200, d, &n) != PA_OK) fprintf(stderr, "claim: %s\n", pa_errmsg());
  if (n == 0) return;
  CHECK_OK(q->ops->pause(q));
  for (int i = n - 1; i >= 0; i--) {
    int j = job_of(&d[i]);
    CHECK(j >= 0 && j < t->n);
    t->claimed++;
    if (d[i].deliveries > 1) t->redelivered++;
    char id[32], res[64];
    snprintf(id, sizeof id, "job-%04d", j);
    snprintf(res, sizeof res, "result:%s", id);
    CHECK_OK(q->ops->publish_event(q, id, "progress", (const uint8_t *)"p", 1));
    if (q->ops->record_result(q, NULL, id, (const uint8_t *)res, strlen(res), NULL) != PA_OK) {
      t->result_failures++; /* not acked: it comes back */
    } else if (q->ops->ack(q, &d[i]) == PA_OK) {
      if (j >= 0 && j < t->n && t->acks[j]++ == 0) t->done++;
    } else {
      t->ack_failures++;
    }
    pa_delivery_clear(&d[i]);
  }
  CHECK_OK(q->ops->resume(q));
}

/* Claims from a fresh consumer of `group` for `secs`: how many jobs are left? */
static int leftovers(const char *topic, const char *group, double secs) {
  pa_queue *q = open_queue(topic, group, "late", 0);
  if (!q) return -1;
  /* Only an assigned consumer proves anything: claim until assigned, then `secs` more. */
  int total = 0;
  pa_kafka_stats s = {0};
  double assigned_at = 0;
  for (double end = now_s() + 30; now_s() < end && (!assigned_at || now_s() < assigned_at + secs);) {
    pa_delivery d[8];
    int n = 0;
    CHECK_OK(q->ops->claim(q, 8, 200, d, &n));
    for (int i = 0; i < n; i++) pa_delivery_clear(&d[i]);
    total += n;
    CHECK_OK(pa_queue_kafka_stats(q, &s));
    if (s.assigned > 0 && !assigned_at) assigned_at = now_s();
  }
  CHECK_MSG(assigned_at > 0, "%s: the late consumer never got partitions", topic);
  q->ops->close(q);
  return total;
}

typedef struct {
  int n;
  int count[512];
  int other;
} results;

static void count_result(const rd_kafka_message_t *m, void *arg) {
  results *r = arg;
  const void *v;
  size_t vn;
  rd_kafka_headers_t *h;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, "type", &v, &vn)) {
    r->other++;
    return;
  }
  if (vn != 6 || memcmp(v, "result", 6) != 0) return; /* progress events */
  char key[9] = {0};
  int j = -1;
  if (m->key_len == 8) memcpy(key, m->key, 8);
  if (m->key_len == 8 && sscanf(key, "job-%4d", &j) == 1 && j >= 0 && j < r->n)
    r->count[j]++;
  else
    r->other++;
}

/* Every job has one result on {topic}.events; at most max_dup of them have two or more. */
static void check_results(const char *topic, int np, int n, int max_dup, const char *label) {
  char ev[128];
  snprintf(ev, sizeof ev, "%s" PA_KAFKA_EVENTS_SUFFIX, topic);
  static results r;
  memset(&r, 0, sizeof r);
  r.n = n;
  read_topic(ev, np, count_result, &r);
  int missing = 0, dup = 0;
  for (int j = 0; j < n; j++) {
    missing += r.count[j] == 0;
    dup += r.count[j] > 1;
  }
  CHECK_MSG(missing == 0 && dup <= max_dup && r.other == 0, "%s: %d missing, %d duplicated (at most %d), %d foreign",
            label, missing, dup, max_dup, r.other);
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_exactly_once(void) {
  const int N = 200, NP = 4;
  topics("t1", NP);
  produce_jobs("t1", N, 0);
  static tally t;
  memset(&t, 0, sizeof t);
  t.n = N;
  pa_queue *q = open_queue("t1", "g1", "w1", 5);
  if (!q) return;
  double t0 = now_s();
  while (t.done < N && now_s() - t0 < 120) work_once(q, 8, &t); /* a wait for a state */
  double dt = now_s() - t0;
  pa_kafka_stats s;
  CHECK_OK(pa_queue_kafka_stats(q, &s));
  q->ops->close(q);
  CHECK_MSG(t.done == N, "acked %d of %d", t.done, N);
  CHECK(t.ack_failures == 0 && t.result_failures == 0);
  /* Exactly once unless the group rebalanced under us (a starved CI machine can miss the 4 s
   * session timeout): then the jobs in flight at that moment, at most one claim of 8 per
   * rebalance, may run twice - at least once, never lost. */
  int extra = (int)(s.rebalances > 1 ? s.rebalances - 1 : 0);
  check_results("t1", NP, N, extra * 8, "exactly once");
  int left = leftovers("t1", "g1", 1.5);
  CHECK_MSG(left == 0, "a new consumer got %d jobs", left);
  printf("exactly once: %d jobs on %d partitions in %.2f s incl. the 3 s first join (%.0f jobs/s), %d redeliveries, %lld rebalances, "
         "new consumer got %d\n",
         N, NP, dt, N / dt, t.redelivered, (long long)s.rebalances, left);
}

static void test_redelivery(void) {
  topics("t2", 1);
  produce_jobs("t2", 5, 0);
  pa_queue *a = open_queue("t2", "g2", "a", 5);
  if (!a) return;
  pa_delivery d;
  int n = 0;
  /* waits for states, not windows: the first join and a rebalance take long on a loaded box */
  for (double end = now_s() + 60; n == 0 && now_s() < end;) CHECK_OK(a->ops->claim(a, 1, 200, &d, &n));
  CHECK(n == 1 && job_of(&d) == 0 && d.deliveries == 1);
  if (n) CHECK_OK(a->ops->record_result(a, NULL, "job-0000", (const uint8_t *)"result:job-0000", 15, NULL));
  if (n) pa_delivery_clear(&d);
  a->ops->close(a); /* dies before ack: nothing stored */
  static tally t;
  memset(&t, 0, sizeof t);
  t.n = 5;
  pa_queue *b = open_queue("t2", "g2", "b", 5);
  if (!b) return;
  double t0 = now_s();
  while (t.done < 5 && now_s() - t0 < 120) work_once(b, 4, &t);
  b->ops->close(b);
  CHECK_MSG(t.done == 5 && t.acks[0] == 1, "%d of 5 done, job-0000 acked %d times", t.done, t.acks[0]);
  /* job-0000 has two results (one per run), all others one: at least once, idempotent by id */
  char ev[] = "t2" PA_KAFKA_EVENTS_SUFFIX;
  static results r;
  memset(&r, 0, sizeof r);
  r.n = 5;
  read_topic(ev, 1, count_result, &r);
  CHECK(r.count[0] == 2 && r.count[1] == 1 && r.count[4] == 1);
  printf("redelivery: unacked job-0000 went to the second consumer after %.2f s\n", now_s() - t0);
}

static const char *hdr(const rd_kafka_message_t *m, const char *name, char *buf, size_t cap) {
  rd_kafka_headers_t *h;
  const void *v;
  size_t n;
  buf[0] = 0;
  if (rd_kafka_message_headers(m, &h) == 0 && rd_kafka_header_get_last(h, name, &v, &n) == 0 && n < cap) {
    memcpy(buf, v, n);
    buf[n] = 0;
  }
  return buf;
}

static void check_dead(const rd_kafka_message_t *m, void *arg) {
  int *seen = arg;
  char b[128];
  if (m->key_len == 8 && memcmp(m->key, "job-0000", 8) == 0) { /* past max_deliveries in claim */
    CHECK(strcmp(hdr(m, "code", b, sizeof b), "too_many_attempts") == 0);
    CHECK(strcmp(hdr(m, "deliveries", b, sizeof b), "6") == 0);
    seen[0]++;
  } else if (m->key_len == 8 && memcmp(m->key, "job-0001", 8) == 0) {
    CHECK(strcmp(hdr(m, "code", b, sizeof b), "invalid_type") == 0);
    CHECK(strcmp(hdr(m, "field", b, sizeof b), "prior.steps") == 0);
    CHECK(strcmp(hdr(m, "message", b, sizeof b), "steps must be an integer") == 0);
    CHECK(strcmp(hdr(m, "deliveries", b, sizeof b), "1") == 0);
    CHECK(m->len == 16 && memcmp(m->payload, "payload:job-0001", 16) == 0);
    seen[1]++;
  } else {
    seen[2]++;
  }
}

static void test_dead_letter(void) {
  topics("t3", 1);
  produce_jobs("t3", 2, 5); /* job-0000 was delivered 5 times elsewhere; max is 3 */
  pa_queue *q = open_queue("t3", "g3", "w", 3);
  if (!q) return;
  pa_delivery d[4];
  int n = 0;
  for (double end = now_s() + 60; n < 2 && now_s() < end;) {
    int got = 0;
    CHECK_OK(q->ops->claim(q, 4 - n, 200, d + n, &got));
    n += got;
  }
  /* The transport counts; the worker decides (as on Redis): job-0000 comes with 6 deliveries. */
  CHECK_MSG(n == 2 && job_of(&d[0]) == 0 && d[0].deliveries == 6 && job_of(&d[1]) == 1 && d[1].deliveries == 1,
            "claimed %d", n);
  if (n == 2) {
    CHECK_OK(q->ops->dead_letter(q, &d[0], "too_many_attempts", "", "delivered 6 times (max 3)"));
    CHECK_OK(q->ops->dead_letter(q, &d[1], "invalid_type", "prior.steps", "steps must be an integer"));
  }
  for (int i = 0; i < n; i++) pa_delivery_clear(&d[i]);
  pa_kafka_stats s;
  CHECK_OK(pa_queue_kafka_stats(q, &s));
  CHECK(s.dead_lettered == 2 && s.acked == 2);
  q->ops->close(q);
  int seen[3] = {0};
  read_topic("t3" PA_KAFKA_DEAD_SUFFIX, 1, check_dead, seen);
  CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 0);
  int left = leftovers("t3", "g3", 1.5);
  CHECK_MSG(left == 0, "a new consumer got %d jobs", left);
  printf("dead letters: 2 on t3.dead (one past max_deliveries, one rejected), new consumer got %d\n", left);
}

static void test_pause(void) {
  topics("t4", 2);
  produce_jobs("t4", 2, 0);
  pa_queue *q = open_queue("t4", "g4", "w", 5);
  if (!q) return;
  pa_delivery d;
  int n = 0;
  for (double end = now_s() + 60; n == 0 && now_s() < end;) CHECK_OK(q->ops->claim(q, 1, 200, &d, &n));
  CHECK(n == 1);
  if (n != 1) {
    q->ops->close(q);
    return;
  }
  pa_kafka_stats before, after;
  CHECK_OK(pa_queue_kafka_stats(q, &before));
  CHECK_OK(q->ops->pause(q));
  double t0 = now_s();
  while (now_s() - t0 < 5.0) { /* the "GPU": twice max.poll.interval.ms, renewing */
    CHECK_OK(q->ops->renew(q, &d));
    usleep(100 * 1000);
  }
  CHECK_OK(q->ops->resume(q));
  CHECK_OK(q->ops->record_result(q, NULL, "job", (const uint8_t *)"r", 1, NULL));
  CHECK_OK(q->ops->ack(q, &d));
  pa_delivery_clear(&d);
  CHECK_OK(pa_queue_kafka_stats(q, &after));
  CHECK_MSG(after.rebalances == before.rebalances && after.assigned == 2 && before.assigned == 2,
            "rebalances %lld -> %lld, assigned %d -> %d", (long long)before.rebalances,
            (long long)after.rebalances, before.assigned, after.assigned);
  printf("pause: 5.0 s job (max.poll.interval.ms 4000) with renew: %lld rebalances, %d partitions kept\n",
         (long long)(after.rebalances - before.rebalances), after.assigned);

  /* Control: the same job without renew overruns max.poll.interval.ms; the consumer leaves the
   * group, its ack is refused and the job comes back to this instance as a redelivery. */
  n = 0;
  for (double end = now_s() + 60; n == 0 && now_s() < end;) CHECK_OK(q->ops->claim(q, 1, 200, &d, &n));
  CHECK(n == 1);
  if (n != 1) {
    q->ops->close(q);
    return;
  }
  CHECK_OK(q->ops->pause(q));
  usleep(5000 * 1000);
  CHECK_OK(q->ops->renew(q, &d));
  CHECK_OK(q->ops->resume(q));
  pa_delivery again;
  int m = 0;
  /* The expelled consumer normally rejoins within seconds. librdkafka 2.0 can stay in
   * wait-unassign-to-complete on a loaded machine (seen under the sanitizers); the guarantee
   * under test is the same either way - the unacknowledged job is not lost - so then a fresh
   * member of the group must receive it instead. */
  double t_rejoin = now_s();
  for (double end = now_s() + 30; m == 0 && now_s() < end;) CHECK_OK(q->ops->claim(q, 1, 200, &again, &m));
  if (m == 0) {
    pa_delivery_clear(&d);
    q->ops->close(q);
    int got = leftovers("t4", "g4", 2.0);
    CHECK_MSG(got == 1, "the unacknowledged job reached %d new consumers", got);
    printf("pause control: the expelled consumer did not rejoin in 30 s; a new member got the job (%d)\n", got);
    return;
  }
  CHECK_MSG(strcmp(again.handle, d.handle) == 0 && again.deliveries == 2, "handle %s vs %s, deliveries %d",
            again.handle, d.handle, again.deliveries);
  CHECK(q->ops->ack(q, &d) == PA_OK); /* the re-claim made the offset in flight again */
  pa_delivery_clear(&again);
  pa_delivery_clear(&d);
  CHECK_OK(pa_queue_kafka_stats(q, &after));
  CHECK(after.rebalances > before.rebalances && after.redeliveries == 1);
  printf("pause control: without renew %lld rebalances, job redelivered (deliveries=2) %.1f s after the overrun\n",
         (long long)(after.rebalances - before.rebalances), now_s() - t_rejoin);
  q->ops->close(q);
}

/* Takes broker 1 (leader of every partition of t5 and t5.events) down once `trigger` jobs
 * are done, for `down_s` seconds. */
typedef struct {
  tally *t;
  int trigger;
  double down_s, down_at, up_at;
  rd_kafka_resp_err_t down_err, up_err; /* checked by the main thread (CHECK is not thread-safe) */
} outage;

static void *outage_thread(void *arg) {
  outage *o = arg;
  double end = now_s() + 120;
  while (o->t->done < o->trigger && now_s() < end) usleep(2000);
  o->down_err = rd_kafka_mock_broker_set_down(mc, 1);
  o->down_at = now_s();
  usleep((useconds_t)(o->down_s * 1e6));
  o->up_err = rd_kafka_mock_broker_set_up(mc, 1);
  o->up_at = now_s();
  return NULL;
}

static void test_broker_down(void) {
  const int N = 150, NP = 3;
  topics("t5", NP);
  for (int p = 0; p < NP; p++) {
    CHECK(rd_kafka_mock_partition_set_leader(mc, "t5", p, 1) == RD_KAFKA_RESP_ERR_NO_ERROR);
    CHECK(rd_kafka_mock_partition_set_leader(mc, "t5" PA_KAFKA_EVENTS_SUFFIX, p, 1) == RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  CHECK(rd_kafka_mock_coordinator_set(mc, "group", "g5", 2) == RD_KAFKA_RESP_ERR_NO_ERROR);
  produce_jobs("t5", N, 0);
  static tally t;
  memset(&t, 0, sizeof t);
  t.n = N;
  pa_queue *q = open_queue("t5", "g5", "w", 5);
  if (!q) return;
  outage o = {.t = &t, .trigger = 50, .down_s = 2.0};
  pthread_t th;
  CHECK(pthread_create(&th, NULL, outage_thread, &o) == 0);
  double t0 = now_s();
  while (t.done < N && now_s() - t0 < 120) work_once(q, 4, &t); /* a wait for a state */
  double dt = now_s() - t0;
  pthread_join(th, NULL);
  CHECK(o.down_err == RD_KAFKA_RESP_ERR_NO_ERROR && o.up_err == RD_KAFKA_RESP_ERR_NO_ERROR && o.down_at > 0);
  pa_kafka_stats s;
  CHECK_OK(pa_queue_kafka_stats(q, &s));
  q->ops->close(q);
  int twice = 0;
  for (int j = 0; j < N; j++) twice += t.acks[j] > 1;
  CHECK_MSG(t.done == N && twice == 0, "acked %d of %d, %d twice", t.done, N, twice);
  check_results("t5", NP, N, (int)(s.rebalances > 1 ? s.rebalances - 1 : 0) * 4, "broker down");
  int left = leftovers("t5", "g5", 1.5);
  CHECK_MSG(left == 0, "a new consumer got %d jobs", left);
  printf("broker down: %d jobs in %.2f s; leader down %.2f s; %d redeliveries, %d result retries, "
         "%d refused acks, %lld rebalances, %lld error events, 0 acked twice, new consumer got %d\n",
         N, dt, o.up_at - o.down_at, t.redelivered, t.result_failures, t.ack_failures, (long long)s.rebalances,
         (long long)s.errors, left);
}

/* Claims one job within 60 s (0 or 1). */
static int claim_one(pa_queue *q, pa_delivery *d) {
  int n = 0;
  for (double end = now_s() + 60; n == 0 && now_s() < end;) CHECK_OK(q->ops->claim(q, 1, 200, d, &n));
  return n;
}

/* Cancel through {topic}.control: a record produced before the claim is seen by the first
 * is_canceled after it (claim catches the watcher up); one produced while the job runs is seen
 * by a later is_canceled; a tombstone withdraws it. */
static void test_cancel(void) {
  topics("t6", 2);
  produce_jobs("t6", 2, 0);
  char url[512];
  snprintf(url, sizeof url, "kafka://%s?topic=t6", boot);
  CHECK_OK(pa_queue_kafka_cancel(url, "job-0000"));
  CHECK(pa_queue_kafka_cancel(url, "") == PA_ERR_INVALID);
  pa_queue *q = open_queue("t6", "g6", "w", 5);
  if (!q) return;
  pa_delivery d[2];
  int n = 0;
  for (double end = now_s() + 60; n < 2 && now_s() < end;) {
    int got = 0;
    CHECK_OK(q->ops->claim(q, 2 - n, 200, d + n, &got));
    n += got;
  }
  CHECK(n == 2);
  CHECK(q->ops->is_canceled(q, "job-0000")); /* at once: no wait allowed here */
  CHECK(!q->ops->is_canceled(q, "job-0001"));
  double t0 = now_s();
  CHECK_OK(pa_queue_kafka_cancel(url, "job-0001"));
  bool seen = false;
  while (!seen && now_s() - t0 < 60) {
    seen = q->ops->is_canceled(q, "job-0001");
    if (!seen) usleep(20 * 1000);
  }
  double dt = now_s() - t0;
  CHECK_MSG(seen, "the running job's cancel was not seen in 60 s");
  for (int i = 0; i < n; i++) {
    CHECK_OK(q->ops->ack(q, &d[i]));
    pa_delivery_clear(&d[i]);
  }
  pa_kafka_stats s;
  CHECK_OK(pa_queue_kafka_stats(q, &s));
  CHECK(s.cancels == 2);
  q->ops->close(q);
  printf("cancel: a record produced before the claim seen at the first check; one produced while running seen "
         "after %.3f s\n", dt);
}

typedef struct {
  char key[64];
  int records, tombstones_last; /* records of the key; 1 when its last record is a tombstone */
} attempts_log;

static void read_attempt(const rd_kafka_message_t *m, void *arg) {
  attempts_log *a = arg;
  size_t kl = strlen(a->key);
  if (m->key_len != kl || memcmp(m->key, a->key, kl)) return;
  a->records++;
  a->tombstones_last = m->payload == NULL;
}

static void check_retry_dead(const rd_kafka_message_t *m, void *arg) {
  int *ok = arg;
  char b[128];
  *ok = m->key_len == 8 && !memcmp(m->key, "job-0000", 8) && !strcmp(hdr(m, "code", b, sizeof b), "too_many_attempts") &&
        !strcmp(hdr(m, "deliveries", b, sizeof b), "3") && !strcmp(hdr(m, "last_code", b, sizeof b), "storage") &&
        !strcmp(hdr(m, "last_message", b, sizeof b), "S3 down") && !strcmp(hdr(m, "last_attempt", b, sizeof b), "1");
}

/* A transient failure re-produces the job (deliveries, origin, last_*, not_before headers) and
 * stores its offset; the count follows the job: a consumer that dies with the retry in flight
 * (never acked) leaves it to another consumer, which counts 3 from {topic}.attempts. */
static void test_retry_counts(void) {
  topics("t7", 1);
  produce_jobs("t7", 1, 0);
  pa_queue *a = open_queue_lease("t7", "g7", "a", 2, 1500);
  if (!a) return;
  pa_delivery d;
  if (!claim_one(a, &d)) {
    a->ops->close(a);
    return;
  }
  CHECK(d.deliveries == 1 && !strcmp(d.handle, "0:0"));
  double t0 = now_s();
  CHECK_OK(a->ops->note_failure(a, &d, "job-0000", "storage", "S3 down"));
  pa_delivery_clear(&d);
  int got = claim_one(a, &d);
  double waited = now_s() - t0;
  CHECK_MSG(got && d.deliveries == 2 && !strcmp(d.handle, "0:1") && job_of(&d) == 0, "deliveries %d handle %s",
            d.deliveries, d.handle);
  CHECK_MSG(waited >= 1.4, "the retry came back after %.2f s, before its not_before (1.5 s)", waited);
  if (got) pa_delivery_clear(&d);
  a->ops->close(a); /* dies with the retry in flight: offset 1 not stored */
  pa_queue *b = open_queue_lease("t7", "g7", "b", 2, 1500);
  if (!b) return;
  got = claim_one(b, &d);
  CHECK_MSG(got && d.deliveries == 3 && !strcmp(d.handle, "0:1"), "deliveries %d handle %s", d.deliveries, d.handle);
  if (got) {
    CHECK_OK(b->ops->dead_letter(b, &d, "too_many_attempts", "", "delivered 3 times (max 2)"));
    pa_delivery_clear(&d);
  }
  pa_kafka_stats s;
  CHECK_OK(pa_queue_kafka_stats(b, &s));
  b->ops->close(b);
  int ok = 0;
  read_topic("t7" PA_KAFKA_DEAD_SUFFIX, 1, check_retry_dead, &ok);
  CHECK_MSG(ok, "dead letter headers");
  static attempts_log al;
  memset(&al, 0, sizeof al);
  snprintf(al.key, sizeof al.key, "0:0/job-0000");
  read_topic("t7" PA_KAFKA_ATTEMPTS_SUFFIX, 2, read_attempt, &al);
  CHECK_MSG(al.records == 4 && al.tombstones_last, "%s: %d records, last a tombstone: %d", al.key, al.records,
            al.tombstones_last);
  CHECK(leftovers("t7", "g7", 1.5) == 0);
  printf("retry: re-produced after a transient failure, back after %.2f s (not_before 1.5 s) with deliveries 2; "
         "the next consumer counted 3 from t7.attempts and dead-lettered it (last_code storage)\n", waited);
}

static void test_url(void) {
  pa_queue *q = NULL;
  pa_queue_options o = {0};
  CHECK(pa_queue_open_kafka("redis://x", &o, &q) == PA_ERR_INVALID && !q);
  CHECK(pa_queue_open_kafka("kafka://?topic=a", &o, &q) == PA_ERR_INVALID);
  CHECK(pa_queue_open_kafka("kafka://h:1?enable.auto.commit=false", &o, &q) == PA_ERR_INVALID);
  CHECK(pa_queue_open_kafka("kafka://h:1?no.such.property=1", &o, &q) == PA_ERR_INVALID);
  CHECK(strstr(pa_errmsg(), "no.such.property") != NULL);
  CHECK(pa_queue_open_kafka("kafka://h:1?topic=%zz", &o, &q) == PA_ERR_INVALID);
  CHECK(pa_queue_open_kafka("kafka://h:1?topic", &o, &q) == PA_ERR_INVALID);
  /* the one parser (worker/kafka_url.c) that the scheduler and `paella job cancel` use too */
  pa_kafka_url u;
  CHECK(pa_kafka_url_parse("kafka://b1:9092,b2:9092", &u) == PA_OK && !strcmp(u.brokers, "b1:9092,b2:9092") &&
        !strcmp(u.topic, "paella.jobs") && !strcmp(u.group, "workers") && !strcmp(u.events_group, "scheduler") &&
        u.n_props == 0);
  CHECK(pa_kafka_url_parse("kafka://b:1?topic=a%2Eb&group=w&events_group=e&sasl.password=p%26w&&linger.ms=1", &u) ==
            PA_OK &&
        !strcmp(u.topic, "a.b") && !strcmp(u.group, "w") && !strcmp(u.events_group, "e") && u.n_props == 2 &&
        !strcmp(u.prop_key[0], "sasl.password") && !strcmp(u.prop_value[0], "p&w") && !strcmp(u.prop_key[1], "linger.ms"));
  static const char *const reserved[] = {"enable.auto.commit", "enable.auto.offset.store", "enable.idempotence",
                                         "group.id", "bootstrap.servers", "acks", "request.required.acks"};
  for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++) {
    char url[128];
    snprintf(url, sizeof url, "kafka://b:1?%s=1", reserved[i]);
    CHECK_MSG(pa_kafka_url_parse(url, &u) == PA_ERR_INVALID && strstr(pa_errmsg(), reserved[i]) &&
                  strstr(pa_errmsg(), "cannot be overridden"),
              "%s: %s", url, pa_errmsg());
  }
  CHECK(pa_kafka_url_parse("kafka://b:1?events_group=", &u) == PA_ERR_INVALID && strstr(pa_errmsg(), "empty"));
  /* the scheduler's URL (with events_group) opens a worker: one --queue value for both */
  char url[512];
  snprintf(url, sizeof url, "kafka://%s?topic=turl&group=gurl&events_group=scheduler", boot);
  CHECK_MSG(pa_queue_open_kafka(url, &o, &q) == PA_OK && q, "%s", pa_errmsg());
  if (q) q->ops->close(q);
}

int main(void) {
  double t0 = now_s();
  char err[256];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  rd_kafka_t *holder = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
  CHECK_MSG(holder != NULL, "%s", err);
  if (!holder) TEST_END();
  mc = rd_kafka_mock_cluster_new(holder, 3);
  CHECK(mc != NULL);
  if (!mc) TEST_END();
  boot = rd_kafka_mock_cluster_bootstraps(mc);
  test_url();
  test_exactly_once();
  test_redelivery();
  test_dead_letter();
  test_pause();
  test_broker_down();
  test_cancel();
  test_retry_counts();
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(holder);
  printf("kafka transport: %.1f s in all\n", now_s() - t0);
  TEST_END();
}
