/* The Redis Streams adapter against a real redis-server: claim, ack, lease renewal,
 * XAUTOCLAIM of idle entries with delivery counting, events and results (idempotent),
 * dead letters, the cancel flag, entries without a job. */
#include <pthread.h>

#include "harness.h"
#include "tests/test.h"
#include "worker/queue.h"
#include "worker/redis_keys.h"

static pa_queue *open_stream(const char *stream, const char *consumer, int lease_ms) {
  char url[160];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d/0?stream=%s&group=g", h_.port, stream);
  pa_queue_options o = {.consumer = consumer, .lease_ms = lease_ms, .max_deliveries = 3};
  pa_queue *q = NULL;
  CHECK_OK(pa_queue_open_redis(url, &o, &q));
  if (!q) exit(1);
  return q;
}

static pa_queue *open_q(const char *consumer, int lease_ms) { return open_stream("t:jobs", consumer, lease_ms); }

static void clear_all(pa_delivery *d, int n) {
  for (int i = 0; i < n; i++) pa_delivery_clear(&d[i]);
}

static void test_claim_ack(redisContext *c) {
  pa_queue *q = open_q("a", 60000);
  pa_delivery d[4];
  int n = -1;
  double t0 = h_now();
  CHECK_OK(q->ops->claim(q, 4, 100, d, &n));
  CHECK(n == 0 && h_now() - t0 >= 0.09); /* blocked, then timed out */
  h_xadd(c, "t:jobs", "j1", "abc", 3, NULL);
  h_xadd(c, "t:jobs", "j2", "defg", 4, NULL);
  h_xadd(c, "t:jobs", "j3", "h", 1, NULL);
  CHECK_OK(q->ops->claim(q, 2, 100, d, &n));
  CHECK(n == 2);
  CHECK(d[0].len == 3 && !memcmp(d[0].payload, "abc", 3) && d[0].deliveries == 1);
  CHECK(d[1].len == 4 && d[1].deliveries == 1);
  CHECK_OK(q->ops->renew(q, &d[0]));
  CHECK_OK(q->ops->ack(q, &d[0]));
  CHECK_OK(q->ops->ack(q, &d[1]));
  clear_all(d, n);
  CHECK_OK(q->ops->claim(q, 4, 100, d, &n));
  CHECK(n == 1 && d[0].len == 1);
  CHECK_OK(q->ops->ack(q, &d[0]));
  clear_all(d, n);
  CHECK(h_int(c, "XPENDING t:jobs g") == -1); /* an array reply: checked below by count */
  redisReply *r = redisCommand(c, "XPENDING t:jobs g");
  CHECK(r && r->type == REDIS_REPLY_ARRAY && r->element[0]->integer == 0);
  freeReplyObject(r);
  q->ops->close(q);
}

/* A crashed consumer's entry is reclaimed after the lease, counting deliveries; the old
 * owner's renewal then reports the lease lost instead of stealing it back. */
static void test_reclaim(redisContext *c) {
  /* a 3 s lease: "still leased" must hold however long this process is descheduled between
   * two claims on a loaded machine; the sleeps outlast it */
  pa_queue *a = open_q("a", 3000), *b = open_q("b", 3000);
  pa_delivery d[2], e[2];
  int n = 0, m = 0;
  h_xadd(c, "t:jobs", "r1", "job", 3, NULL);
  CHECK_OK(a->ops->claim(a, 1, 100, d, &n));
  CHECK(n == 1 && d[0].deliveries == 1);
  CHECK_OK(b->ops->claim(b, 1, 50, e, &m));
  CHECK(m == 0); /* still leased by a */
  h_sleep_ms(3100);
  CHECK_OK(b->ops->claim(b, 1, 50, e, &m));
  CHECK(m == 1 && e[0].deliveries == 2 && !strcmp(e[0].handle, d[0].handle));
  CHECK(a->ops->renew(a, &d[0]) == PA_ERR_NOTFOUND);
  CHECK_OK(b->ops->renew(b, &e[0]));
  h_sleep_ms(3100);
  pa_delivery f[1];
  int k = 0;
  CHECK_OK(a->ops->claim(a, 1, 50, f, &k));
  CHECK(k == 1 && f[0].deliveries == 3);
  CHECK_OK(a->ops->dead_letter(a, &f[0], "too_many_attempts", "", "delivered 3 times"));
  CHECK_OK(b->ops->dead_letter(b, &e[0], "too_many_attempts", "", "again")); /* already acked: no-op */
  CHECK(h_int(c, "XLEN t:jobs:dead") == 1);
  redisReply *r = redisCommand(c, "XRANGE t:jobs:dead - +");
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
    redisReply *fl = r->element[0]->element[1];
    const char *want[][2] = {{"job", "job"}, {"id", "r1"}, {"code", "too_many_attempts"}, {"field", ""},
                             {"message", "delivered 3 times"}, {"deliveries", "3"}, {"entry", d[0].handle}};
    CHECK(fl->elements == 14);
    for (size_t i = 0; i < 7 && i * 2 + 1 < fl->elements; i++)
      CHECK_MSG(!strcmp(fl->element[2 * i]->str, want[i][0]) && !strcmp(fl->element[2 * i + 1]->str, want[i][1]),
                "dead field %s = %s", fl->element[2 * i]->str, fl->element[2 * i + 1]->str);
  } else {
    CHECK(!"dead letter missing");
  }
  freeReplyObject(r);
  clear_all(d, n);
  clear_all(e, m);
  clear_all(f, k);
  a->ops->close(a);
  b->ops->close(b);
}

static void test_events_results(redisContext *c) {
  pa_queue *q = open_q("a", 60000);
  pw_result res;
  pw_error err;
  uint8_t *buf = NULL;
  size_t len = 0;
  CHECK_OK(q->ops->publish_event(q, "e1", "start", (const uint8_t *)"x", 1));
  char *s = h_status(c, "e1");
  CHECK(s && !strcmp(s, "running"));
  free(s);
  pw_result_init(&res);
  res.job_id = "e1";
  res.status = PW_STATUS_SUCCEEDED;
  CHECK(pw_result_encode(&res, &buf, &len, &err) == 0);
  res.job_id = NULL;
  pw_result_free(&res);
  CHECK_OK(q->ops->record_result(q, NULL, "e1", buf, len, NULL));
  CHECK_OK(q->ops->record_result(q, NULL, "e1", buf, len, NULL)); /* idempotent: no second event */
  CHECK_OK(q->ops->publish_event(q, "e1", "start", (const uint8_t *)"x", 1)); /* a re-run's start */
  s = h_status(c, "e1");
  CHECK(s && !strcmp(s, "succeeded")); /* a final status is never regressed */
  free(s);
  char *attempts = h_hget(c, "paella:job:e1", "attempts");
  CHECK(attempts && !strcmp(attempts, "2"));
  free(attempts);
  redisReply *r = redisCommand(c, "XRANGE t:jobs:events - +");
  int completed = 0;
  for (size_t i = 0; r && i < r->elements; i++)
    if (!strcmp(r->element[i]->element[1]->element[1]->str, "completed")) completed++;
  CHECK(completed == 1);
  freeReplyObject(r);
  CHECK(q->ops->record_result(q, NULL, "e1", (const uint8_t *)"\x81", 1, NULL) == PA_ERR_INVALID);
  free(buf);
  CHECK(!q->ops->is_canceled(q, "e2"));
  freeReplyObject(redisCommand(c, "HSET paella:job:e2 cancel 1"));
  CHECK(q->ops->is_canceled(q, "e2"));
  q->ops->close(q);
}

/* An entry without a `job` field is delivered with an empty payload (for the dead letters). */
static void test_no_job_field(redisContext *c) {
  pa_queue *q = open_q("a", 60000);
  freeReplyObject(redisCommand(c, "XADD t:jobs * id nojob other 1"));
  pa_delivery d[1];
  int n = 0;
  CHECK_OK(q->ops->claim(q, 1, 100, d, &n));
  CHECK(n == 1 && d[0].len == 0 && d[0].payload);
  CHECK_OK(q->ops->dead_letter(q, &d[0], "malformed", "", "empty"));
  clear_all(d, n);
  q->ops->close(q);
}

/* The group is created on open (MKSTREAM) and re-created when deleted under a worker. */
static void test_group_recreated(redisContext *c) {
  pa_queue *q = open_q("a", 60000);
  freeReplyObject(redisCommand(c, "DEL t:jobs"));
  pa_delivery d[1];
  int n = 0;
  CHECK_OK(q->ops->claim(q, 1, 50, d, &n));
  h_xadd(c, "t:jobs", "g1", "z", 1, NULL);
  CHECK_OK(q->ops->claim(q, 1, 100, d, &n));
  CHECK(n == 1);
  clear_all(d, n);
  q->ops->close(q);
}

/* Priority lanes (worker/redis_keys.h): the high lane is read before the normal one (the
 * stream itself), the low one last, also when the entries were added in the other order;
 * acks, reclaims and dead letters act on the entry's own lane. */
static long long pending(redisContext *c, const char *stream) {
  redisReply *r = redisCommand(c, "XPENDING %s g", stream);
  long long n = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 ? r->element[0]->integer : -1;
  if (r) freeReplyObject(r);
  return n;
}

static void test_lanes(redisContext *c) {
  pa_queue *a = open_stream("l:jobs", "a", 200), *b = open_stream("l:jobs", "b", 200);
  h_xadd(c, "l:jobs:lane:low", "l1", "low", 3, NULL);
  h_xadd(c, "l:jobs", "n1", "normal", 6, NULL);
  h_xadd(c, "l:jobs:lane:high", "h1", "high", 4, NULL);
  const char *want[] = {"high", "normal", "low"};
  const int lanes[] = {PA_LANE_HIGH, PA_LANE_NORMAL, PA_LANE_LOW};
  for (int i = 0; i < 3; i++) {
    pa_delivery d[1];
    int n = 0;
    CHECK_OK(a->ops->claim(a, 1, 100, d, &n));
    CHECK_MSG(n == 1 && d[0].len == strlen(want[i]) && !memcmp(d[0].payload, want[i], d[0].len) && d[0].lane == lanes[i],
              "claim %d: got %.*s (lane %d), want %s", i, n ? (int)d[0].len : 0, n ? (char *)d[0].payload : "",
              n ? d[0].lane : -1, want[i]);
    if (n) CHECK_OK(a->ops->ack(a, &d[0]));
    clear_all(d, n);
  }
  CHECK(pending(c, "l:jobs:lane:high") == 0 && pending(c, "l:jobs") == 0 && pending(c, "l:jobs:lane:low") == 0);
  /* a crashed consumer's high-lane entry: reclaimed by another, then dead-lettered there */
  h_xadd(c, "l:jobs:lane:high", "h2", "crash", 5, NULL);
  pa_delivery d[1], e[1];
  int n = 0, m = 0;
  CHECK_OK(a->ops->claim(a, 1, 100, d, &n));
  CHECK(n == 1 && d[0].lane == PA_LANE_HIGH);
  h_sleep_ms(300);
  CHECK_OK(b->ops->claim(b, 1, 100, e, &m));
  CHECK(m == 1 && e[0].lane == PA_LANE_HIGH && e[0].deliveries == 2 && n == 1 && !strcmp(e[0].handle, d[0].handle));
  if (m) CHECK(a->ops->ack(a, &d[0]) == PA_ERR_NOTFOUND); /* fenced: the entry is b's now */
  if (m) CHECK_OK(b->ops->dead_letter(b, &e[0], "malformed", "", "test"));
  CHECK(h_int(c, "XLEN l:jobs:dead") == 1 && pending(c, "l:jobs:lane:high") == 0);
  clear_all(d, n);
  clear_all(e, m);
  a->ops->close(a);
  b->ops->close(b);
}

/* An idle worker blocks on every lane at once; entries that arrive on two lanes together
 * (one transaction) may come back from one read: the second is kept for the next claim, not
 * left pending until its lease runs out. Either way each is delivered once, promptly. */
typedef struct {
  pa_queue *q;
  pa_delivery d[1];
  int n, rc;
} blocked_claim;

static void *claim_blocking(void *arg) {
  blocked_claim *b = arg;
  b->rc = b->q->ops->claim(b->q, 1, 10000, b->d, &b->n);
  return NULL;
}

static void test_lanes_blocking(redisContext *c) {
  pa_queue *q = open_stream("k:jobs", "a", 60000);
  blocked_claim b = {.q = q};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, claim_blocking, &b) == 0);
  h_sleep_ms(500); /* the claim is blocked by now (or soon: it then reads both at once) */
  freeReplyObject(redisCommand(c, "MULTI"));
  freeReplyObject(redisCommand(c, "XADD k:jobs:lane:low * job low id l"));
  freeReplyObject(redisCommand(c, "XADD k:jobs:lane:high * job high id h"));
  freeReplyObject(redisCommand(c, "EXEC"));
  pthread_join(t, NULL);
  long long pending_both = pending(c, "k:jobs:lane:low") + pending(c, "k:jobs:lane:high");
  printf("blocking claim over the lanes: got %d, %lld pending after it (2: the second kept for the next claim)\n",
         b.n, pending_both);
  CHECK(b.rc == PA_OK && b.n == 1);
  pa_delivery d[2];
  int n = 0;
  double t0 = h_now();
  CHECK_OK(q->ops->claim(q, 2, 100, d, &n));
  CHECK_MSG(n == 1 && h_now() - t0 < 5, "the second entry: %d in %.1f s", n, h_now() - t0);
  if (b.n == 1 && n == 1) {
    CHECK(d[0].deliveries == 1 && b.d[0].deliveries == 1 && d[0].lane != b.d[0].lane);
    CHECK_OK(q->ops->ack(q, &b.d[0]));
    CHECK_OK(q->ops->ack(q, &d[0]));
  }
  CHECK(pending(c, "k:jobs:lane:low") == 0 && pending(c, "k:jobs:lane:high") == 0);
  clear_all(b.d, b.n);
  clear_all(d, n);
  q->ops->close(q);
}

int main(void) {
  h_redis_start();
  redisContext *c = h_connect();
  test_claim_ack(c);
  test_reclaim(c);
  test_events_results(c);
  test_no_job_field(c);
  test_group_recreated(c);
  test_lanes(c);
  test_lanes_blocking(c);
  pa_queue *q = NULL;
  CHECK(pa_queue_open_redis("redis://127.0.0.1:1/0", NULL, &q) == PA_ERR_IO && !q);
  CHECK(pa_queue_open_redis("redis://127.0.0.1:1/x", NULL, &q) == PA_ERR_INVALID);
  redisFree(c);
  TEST_END();
}
