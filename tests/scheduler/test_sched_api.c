/* The scheduler's HTTP API against a real redis-server and the real paella-worker (tiny
 * embedded model, CPU): every endpoint, auth failures, validation status codes, idempotency,
 * Prefer: wait, cancel (queued and running), SSE, deadlines (queued and running), retries
 * with backoff into the dead letters and their requeue, rate limit and quota.
 * The retry path needs failures the real worker does not produce on demand, so one private
 * stream is served by a scripted worker that follows docs/queues.md to the letter. */
#include <inttypes.h>
#include <sys/stat.h>

#include "tests/scheduler/harness.h"

#define ALICE "Authorization: Bearer alice-token\r\n"
#define ADMIN "Authorization: Bearer admin-token\r\n"
#define JSON_CT "Content-Type: application/json\r\n"
#define SMALL "{\"prompt\":\"a red fox\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}}"
#define LONG "{\"prompt\":\"a long one\",\"width\":256,\"height\":256,\"steps\":100,\"prior\":{\"steps\":2}}"

static int port;

static void add_key(sched_config *c, const char *name, const char *token, bool admin) {
  char hex[65], spec[160];
  sha256_hex(token, strlen(token), hex);
  snprintf(spec, sizeof spec, "%s:%s%s", name, hex, admin ? ":admin" : "");
  CHECK(sched_config_add_keys(c, spec) == PA_OK);
}

static int post(const char *hdrs, const char *body, h_resp *r) {
  return h_http(port, "POST", "/v1/jobs", hdrs, body, strlen(body), 60, r);
}

/* Submits and returns the id (static buffer of the caller). */
static void submit(const char *body, char *id, size_t cap) {
  h_resp r;
  id[0] = 0;
  CHECK(post(ALICE JSON_CT, body, &r) == 0 && r.status == 202);
  if (h_str(r.json, "id")) snprintf(id, cap, "%s", h_str(r.json, "id"));
  h_resp_free(&r);
}

static char *status_of(const char *id, char *out, size_t cap) {
  char path[128];
  h_resp r;
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  out[0] = 0;
  if (h_http(port, "GET", path, ALICE, NULL, 0, 10, &r) == 0 && h_str(r.json, "status"))
    snprintf(out, cap, "%s", h_str(r.json, "status"));
  h_resp_free(&r);
  return out;
}

static bool wait_status(const char *id, const char *want, double timeout_s) {
  char s[32];
  for (double end = h_now() + timeout_s; h_now() < end; usleep(50000))
    if (!strcmp(status_of(id, s, sizeof s), want)) return true;
  return false;
}

static void test_public(void) {
  h_resp r;
  CHECK(h_http(port, "GET", "/healthz", NULL, NULL, 0, 5, &r) == 0 && r.status == 200);
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/readyz", NULL, NULL, 0, 5, &r) == 0 && r.status == 200);
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/", NULL, NULL, 0, 5, &r) == 0 && r.status == 200 && strstr(r.body, "EventSource"));
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/metrics", NULL, NULL, 0, 5, &r) == 0 && r.status == 200);
  const char *names[] = {"paella_queue_backlog ", "paella_jobs_inflight ", "paella_oldest_queued_seconds ",
                         "paella_jobs_total{status=\"succeeded\"}", "paella_job_duration_seconds_bucket{stage=\"denoise\"",
                         "paella_webhook_deliveries_total{result=\"ok\"}", "paella_embedding_cache_hits_total "};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) CHECK_MSG(r.body && strstr(r.body, names[i]), "%s", names[i]);
  h_resp_free(&r);
}

static void test_auth_and_validation(void) {
  h_resp r;
  CHECK(h_http(port, "GET", "/v1/jobs", NULL, NULL, 0, 5, &r) == 0 && r.status == 401 &&
        h_str_is(r.json, "error.code", "unauthorized"));
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/v1/jobs", "Authorization: Bearer nope\r\n", NULL, 0, 5, &r) == 0 && r.status == 401);
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/v1/deadletters", ALICE, NULL, 0, 5, &r) == 0 && r.status == 403);
  h_resp_free(&r);
  CHECK(post(ALICE "Content-Type: text/plain\r\n", SMALL, &r) == 0 && r.status == 415);
  h_resp_free(&r);
  CHECK(post(ALICE JSON_CT, "{\"prompt\":", &r) == 0 && r.status == 400 && h_str_is(r.json, "error.code", "truncated"));
  h_resp_free(&r);
  CHECK(post(ALICE JSON_CT, "{\"prompt\":\"x\",\"width\":33}", &r) == 0 && r.status == 422 &&
        h_str_is(r.json, "error.code", "out_of_range") && h_str_is(r.json, "error.field", "width"));
  h_resp_free(&r);
  CHECK(post(ALICE JSON_CT, "{\"id\":\"mine\",\"prompt\":\"x\"}", &r) == 0 && r.status == 422 &&
        h_str_is(r.json, "error.field", "id"));
  h_resp_free(&r);
  CHECK(post(ALICE JSON_CT, "{\"prompt\":\"x\",\"output\":{\"dir\":\"/tmp\"}}", &r) == 0 && r.status == 403);
  h_resp_free(&r);
  char big[9000];
  memset(big, 'a', sizeof big);
  memcpy(big, "{\"prompt\":\"", 11);
  memcpy(big + sizeof big - 3, "\"}", 3);
  CHECK(post(ALICE JSON_CT, big, &r) == 0 && r.status == 413);
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/v1/jobs/j-nope", ALICE, NULL, 0, 5, &r) == 0 && r.status == 404);
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/v1/jobs?status=weird", ALICE, NULL, 0, 5, &r) == 0 && r.status == 422);
  h_resp_free(&r);
}

static void test_wait_and_outputs(void) {
  h_resp r;
  CHECK(post(ALICE JSON_CT "Prefer: wait=30\r\n", SMALL, &r) == 0 && r.status == 200 &&
        h_str_is(r.json, "status", "succeeded"));
  const json_t *out = json_array_get(json_object_get(json_object_get(r.json, "result"), "outputs"), 0);
  /* a directory store: the key from its root, no URL, never the server's path */
  char want[128];
  snprintf(want, sizeof want, "%s/0.png", h_str(r.json, "id") ? h_str(r.json, "id") : "x");
  CHECK_MSG(out && h_str_is(out, "key", want) && !json_object_get(out, "url"), "%s", r.body);
  CHECK(r.body && !strstr(r.body, "file://") && !strstr(r.body, h_dir));
  CHECK(json_object_get(r.json, "timings_ms") != NULL);
  char path[128];
  snprintf(path, sizeof path, "/v1/jobs/%s/outputs/0", h_str(r.json, "id") ? h_str(r.json, "id") : "x");
  h_resp_free(&r);
  CHECK(h_http(port, "GET", path, ALICE, NULL, 0, 10, &r) == 0 && r.status == 200 && r.head &&
        strstr(r.head, "image/png"));
  h_resp_free(&r);
  CHECK(h_http(port, "GET", path, ADMIN, NULL, 0, 10, &r) == 0 && r.status == 404); /* another key's job */
  h_resp_free(&r);
}

static void test_idempotency(void) {
  h_resp a, b, c;
  CHECK(post(ALICE JSON_CT "Idempotency-Key: order-17\r\n", SMALL, &a) == 0 && a.status == 202);
  CHECK(post(ALICE JSON_CT "Idempotency-Key: order-17\r\n", SMALL, &b) == 0 && (b.status == 202 || b.status == 200));
  CHECK(h_str(a.json, "id") && h_str(b.json, "id") && !strcmp(h_str(a.json, "id"), h_str(b.json, "id")));
  CHECK(post(ALICE JSON_CT "Idempotency-Key: order-17\r\n", "{\"prompt\":\"other\"}", &c) == 0 && c.status == 409);
  h_resp_free(&c);
  CHECK(post(ALICE JSON_CT "Idempotency-Key: bad key\r\n", SMALL, &c) == 0 && c.status == 422 &&
        h_str_is(c.json, "error.field", "idempotency_key"));
  h_resp_free(&a);
  h_resp_free(&b);
  h_resp_free(&c);
}

static void test_list(void) {
  char id[64];
  for (int i = 0; i < 5; i++) submit(SMALL, id, sizeof id);
  CHECK(wait_status(id, "succeeded", 120));
  int seen = 0, pages = 0;
  char cursor[64] = "", path[160];
  json_t *ids = json_object();
  do {
    h_resp r;
    snprintf(path, sizeof path, "/v1/jobs?limit=2%s%s", cursor[0] ? "&cursor=" : "", cursor);
    if (h_http(port, "GET", path, ALICE, NULL, 0, 10, &r) || r.status != 200) {
      CHECK(0);
      h_resp_free(&r);
      break;
    }
    json_t *data = json_object_get(r.json, "data");
    CHECK(json_array_size(data) <= 2);
    for (size_t i = 0; i < json_array_size(data); i++) {
      json_object_set_new(ids, h_str(json_array_get(data, i), "id"), json_true());
      seen++;
    }
    const char *next = h_str(r.json, "next_cursor");
    snprintf(cursor, sizeof cursor, "%s", next ? next : "");
    h_resp_free(&r);
  } while (cursor[0] && ++pages < 100);
  CHECK_MSG(seen >= 7 && (int)json_object_size(ids) == seen, "seen %d unique %zu", seen, json_object_size(ids));
  json_decref(ids);
  h_resp r;
  CHECK(h_http(port, "GET", "/v1/jobs?status=succeeded&limit=100", ALICE, NULL, 0, 10, &r) == 0 && r.status == 200);
  json_t *data = json_object_get(r.json, "data");
  CHECK(json_array_size(data) >= 5);
  for (size_t i = 0; i < json_array_size(data); i++) CHECK(h_str_is(json_array_get(data, i), "status", "succeeded"));
  h_resp_free(&r);
}

static void test_cancel_and_sse(sched_config *c) {
  char longid[64], q[64], path[128], s[32];
  h_resp r;
  submit(LONG, longid, sizeof longid);
  CHECK(wait_status(longid, "running", 120));
  submit(SMALL, q, sizeof q); /* waits behind the long job: one worker, one job at a time */
  snprintf(path, sizeof path, "/v1/jobs/%s/cancel", q);
  CHECK(h_http(port, "POST", path, ALICE, NULL, 0, 10, &r) == 0 && r.status == 200 && h_str_is(r.json, "status", "canceled"));
  h_resp_free(&r);
  CHECK(h_http(port, "POST", path, ALICE, NULL, 0, 10, &r) == 0 && r.status == 409);
  h_resp_free(&r);
  /* The canceled job's entry stays unread, counted: an XDEL would make the lag null, and
   * KEDA would never wake a worker again (charts/paella/README.md, Autoscaling). */
  long long lag = h_keda_lag(c, c->redis.stream, c->redis.group);
  CHECK_MSG(lag >= 1, "lag after cancelling a queued job: %lld", lag);
  /* SSE on the running job: progress events, then the canceled status ends the stream. */
  snprintf(path, sizeof path, "/v1/jobs/%s/cancel", longid);
  usleep(800000);
  CHECK(h_http(port, "POST", path, ALICE, NULL, 0, 10, &r) == 0 && r.status == 200 &&
        json_is_true(json_object_get(r.json, "cancel_requested")));
  h_resp_free(&r);
  CHECK(wait_status(longid, "canceled", 120));
  usleep(500000);
  redisReply *w = sched_cmdf(c, "HMGET paella:job:%s worker started_ms", q);
  CHECK(w && w->type == REDIS_REPLY_ARRAY && w->element[0]->type == REDIS_REPLY_NIL &&
        w->element[1]->type == REDIS_REPLY_NIL); /* the queued job never ran */
  if (w) freeReplyObject(w);
  CHECK(!strcmp(status_of(q, s, sizeof s), "canceled"));
  char sse[64];
  /* the built-in model's native size: a 256 px image with it takes tens of seconds on a loaded machine */
  submit("{\"prompt\":\"sse\",\"width\":32,\"height\":32,\"steps\":12,\"prior\":{\"steps\":2}}", sse, sizeof sse);
  snprintf(path, sizeof path, "/v1/jobs/%s/events", sse);
  CHECK(h_http(port, "GET", path, ALICE, NULL, 0, 30, &r) == 0 && r.status == 200);
  CHECK(r.head && strstr(r.head, "text/event-stream"));
  CHECK(r.body && strstr(r.body, "event: progress") && strstr(r.body, "\"stage\":\"denoise\""));
  CHECK(r.body && strstr(r.body, "event: status") && strstr(r.body, "\"status\":\"succeeded\""));
  h_resp_free(&r);
  CHECK_MSG(h_wait_lag(c, c->redis.stream, c->redis.group, 0, 60, &lag), "lag %lld, not 0, once the queue is empty", lag);
}

static void test_deadlines(const sched_config *c) {
  char longid[64], queued[64], running[64], body[256], e[128];
  h_resp r;
  submit(LONG, longid, sizeof longid);
  CHECK(wait_status(longid, "running", 120));
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  snprintf(body, sizeof body, "{\"prompt\":\"late\",\"width\":32,\"height\":32,\"deadline_ms\":%" PRId64 "}", now + 400);
  submit(body, queued, sizeof queued);
  CHECK(wait_status(queued, "failed", 120));
  long long lag = h_keda_lag(c, c->redis.stream, c->redis.group); /* reaped, unread, counted (not null) */
  CHECK_MSG(lag >= 1, "lag after reaping a queued job: %lld", lag);
  snprintf(e, sizeof e, "/v1/jobs/%s", queued);
  CHECK(h_http(port, "GET", e, ALICE, NULL, 0, 5, &r) == 0 && h_str_is(r.json, "error.code", "deadline_exceeded"));
  h_resp_free(&r);
  snprintf(e, sizeof e, "/v1/jobs/%s/cancel", longid);
  CHECK(h_http(port, "POST", e, ALICE, NULL, 0, 5, &r) == 0 && r.status == 200);
  h_resp_free(&r);
  CHECK(wait_status(longid, "canceled", 120));
  clock_gettime(CLOCK_REALTIME, &ts);
  now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  snprintf(body, sizeof body,
           "{\"prompt\":\"slow\",\"width\":256,\"height\":256,\"steps\":100,\"prior\":{\"steps\":2},\"deadline_ms\":%" PRId64 "}",
           now + 1500);
  submit(body, running, sizeof running);
  CHECK(wait_status(running, "failed", 120));
  snprintf(e, sizeof e, "/v1/jobs/%s", running);
  CHECK(h_http(port, "GET", e, ALICE, NULL, 0, 5, &r) == 0 && h_str_is(r.json, "error.code", "deadline_exceeded"));
  h_resp_free(&r);
  CHECK_MSG(h_wait_lag(c, c->redis.stream, c->redis.group, 0, 60, &lag), "lag %lld, not 0, once the queue is empty", lag);
  CHECK(h_http(port, "GET", "/metrics", NULL, NULL, 0, 5, &r) == 0 && r.body && strstr(r.body, "\npaella_queue_backlog 0\n"));
  h_resp_free(&r);
}

/* ---- the scripted worker on a private stream: fails with io_error until told not to ---- */
/* Reads one entry of `lane` (a lane's stream) and reports through `stream`'s events. */
static int scripted_run(sched_config *c, const char *lane, const char *stream, bool succeed) {
  redisReply *r = sched_cmdf(c, "XREADGROUP GROUP workers fake COUNT 1 BLOCK 3000 STREAMS %s >", lane);
  if (!r || r->type != REDIS_REPLY_ARRAY) {
    if (r) freeReplyObject(r);
    return -1;
  }
  const redisReply *e = r->element[0]->element[1]->element[0];
  char entry[64], id[80];
  snprintf(entry, sizeof entry, "%s", e->element[0]->str);
  snprintf(id, sizeof id, "%s", e->element[1]->element[3]->str); /* fields: job, id */
  freeReplyObject(r);
  uint8_t *mp = NULL;
  size_t len = 0;
  pw_result res;
  pw_error err;
  pw_result_init(&res);
  res.job_id = strdup(id);
  res.status = succeed ? PW_STATUS_SUCCEEDED : PW_STATUS_FAILED;
  if (!succeed) {
    res.has_error = 1;
    res.error_code = PW_E_IO;
    res.error_message = strdup("disk on fire");
  }
  pw_result_encode(&res, &mp, &len, &err);
  pw_result_free(&res);
  r = sched_cmdf(c, "HSET paella:job:%s status running", id);
  freeReplyObject(r);
  r = sched_cmdf(c, "HINCRBY paella:job:%s attempts 1", id);
  freeReplyObject(r);
  r = sched_cmdf(c, "XADD %s:events * type start id %s msg x", stream, id);
  freeReplyObject(r);
  r = sched_cmdf(c, "MULTI");
  freeReplyObject(r);
  r = sched_cmdf(c, "HSET paella:job:%s status %s result %b", id, succeed ? "succeeded" : "failed", mp, len);
  freeReplyObject(r);
  r = sched_cmdf(c, "XADD %s:events * type %s id %s msg %b", stream, succeed ? "completed" : "failed", id, mp, len);
  freeReplyObject(r);
  r = sched_cmdf(c, "EXEC");
  freeReplyObject(r);
  r = sched_cmdf(c, "XACK %s workers %s", lane, entry);
  freeReplyObject(r);
  free(mp);
  return 0;
}

/* On the lane of `priority` (worker/redis_keys.h): a retry and a requeued dead letter come back
 * on the same lane, and its lag, read as KEDA reads it, returns to 0. */
static void test_retries_and_deadletters(int priority) {
  sched_config c;
  harness_config(&c);
  snprintf(c.redis.stream, sizeof c.redis.stream, "paella:retrytest%d", priority);
  pa_key lane = pa_key_lane(c.redis.stream, pa_lane_of_priority(priority));
  const char *stream = lane.s;
  char body[256];
  snprintf(body, sizeof body, "{\"prompt\":\"a red fox\",\"width\":32,\"height\":32,\"steps\":2,\"priority\":%d}", priority);
  c.max_attempts = 2;
  c.backoff_ms = 100;
  add_key(&c, "admin", "admin-token", true);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK(tracker_start(&c, &t) == PA_OK && sched_server_start(&c, &s) == PA_OK);
  if (!t || !s) goto done;
  int saved = port;
  port = sched_server_port(s);
  redisReply *g = sched_cmdf(&c, "XGROUP CREATE %s workers 0 MKSTREAM", stream);
  if (g) freeReplyObject(g);
  h_resp r;
  CHECK(h_http(port, "POST", "/v1/jobs", ADMIN JSON_CT, body, strlen(body), 10, &r) == 0 && r.status == 202);
  char id[64], path[160];
  snprintf(id, sizeof id, "%s", h_str(r.json, "id") ? h_str(r.json, "id") : "");
  h_resp_free(&r);
  CHECK(scripted_run(&c, stream, c.redis.stream, false) == 0); /* attempt 1: io_error -> retried after backoff */
  CHECK(scripted_run(&c, stream, c.redis.stream, false) == 0); /* attempt 2: the last -> dead letters */
  char dead[64] = "";
  for (double end = h_now() + 60; h_now() < end && !dead[0]; usleep(50000)) {
    CHECK(h_http(port, "GET", "/v1/deadletters", ADMIN, NULL, 0, 5, &r) == 0 && r.status == 200);
    json_t *d = json_array_get(json_object_get(r.json, "data"), 0);
    if (d && h_str_is(d, "job_id", id) && h_str_is(d, "code", "too_many_attempts"))
      snprintf(dead, sizeof dead, "%s", h_str(d, "id"));
    h_resp_free(&r);
  }
  CHECK(dead[0]);
  long long lag = h_keda_lag(&c, stream, c.redis.group); /* retried, then dead: all acknowledged */
  CHECK_MSG(lag == 0, "lag after a retry and a dead letter: %lld", lag);
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  CHECK(h_http(port, "GET", path, ADMIN, NULL, 0, 5, &r) == 0 && h_str_is(r.json, "status", "failed") &&
        h_str_is(r.json, "error.code", "too_many_attempts"));
  h_resp_free(&r);
  snprintf(path, sizeof path, "/v1/deadletters/%s/requeue", dead);
  CHECK(h_http(port, "POST", path, ADMIN, NULL, 0, 5, &r) == 0 && r.status == 202 && h_str_is(r.json, "job_id", id));
  h_resp_free(&r);
  CHECK(h_http(port, "POST", path, ADMIN, NULL, 0, 5, &r) == 0 && r.status == 404); /* gone */
  h_resp_free(&r);
  CHECK(scripted_run(&c, stream, c.redis.stream, true) == 0);
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  bool ok = false;
  for (double end = h_now() + 60; h_now() < end && !ok; usleep(50000)) {
    CHECK(h_http(port, "GET", path, ADMIN, NULL, 0, 5, &r) == 0);
    ok = h_str_is(r.json, "status", "succeeded");
    h_resp_free(&r);
  }
  CHECK(ok);
  CHECK_MSG(h_wait_lag(&c, stream, c.redis.group, 0, 60, &lag), "lag %lld after the requeued job ran", lag);
  static int runs; /* the counters are the process's: one retry per run */
  char retried[64];
  snprintf(retried, sizeof retried, "paella_jobs_total{status=\"retried\"} %d\n", ++runs);
  CHECK(h_http(port, "GET", "/metrics", NULL, NULL, 0, 5, &r) == 0 && strstr(r.body, retried));
  h_resp_free(&r);
  port = saved;
done:
  sched_server_stop(s);
  tracker_stop(t);
}

static void test_rate_limit_and_quota(void) {
  sched_config c;
  harness_config(&c);
  snprintf(c.redis.stream, sizeof c.redis.stream, "paella:ratetest"); /* no worker: jobs stay queued */
  c.rate = 0.5;
  c.burst = 3;
  c.max_active = 1;
  add_key(&c, "bob", "bob-token", false);
  sched_server *s = NULL;
  CHECK(sched_server_start(&c, &s) == PA_OK);
  if (!s) return;
  int p = sched_server_port(s);
  h_resp r;
  const char *bob = "Authorization: Bearer bob-token\r\n" JSON_CT;
  CHECK(h_http(p, "POST", "/v1/jobs", bob, SMALL, strlen(SMALL), 5, &r) == 0 && r.status == 202);
  h_resp_free(&r);
  CHECK(h_http(p, "POST", "/v1/jobs", bob, SMALL, strlen(SMALL), 5, &r) == 0 && r.status == 429 &&
        h_str_is(r.json, "error.code", "quota_exceeded"));
  h_resp_free(&r);
  CHECK(h_http(p, "GET", "/v1/jobs", bob, NULL, 0, 5, &r) == 0 && r.status == 200);
  h_resp_free(&r);
  CHECK(h_http(p, "GET", "/v1/jobs", bob, NULL, 0, 5, &r) == 0 && r.status == 429 &&
        h_str_is(r.json, "error.code", "rate_limited") && strstr(r.head, "Retry-After"));
  h_resp_free(&r);
  sched_server_stop(s);
}

int main(void) {
  if (harness_start_redis()) {
    fprintf(stderr, "cannot start redis-server\n");
    return 1;
  }
  sched_config c;
  harness_config(&c);
  c.max_body = 8192;
  add_key(&c, "alice", "alice-token", false);
  add_key(&c, "admin", "admin-token", true);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK(tracker_start(&c, &t) == PA_OK && sched_server_start(&c, &s) == PA_OK);
  CHECK(harness_start_worker(NULL) == 0);
  if (s && t) {
    port = sched_server_port(s);
    test_public();
    test_auth_and_validation();
    test_wait_and_outputs();
    test_idempotency();
    test_list();
    test_cancel_and_sse(&c);
    test_deadlines(&c);
    test_retries_and_deadletters(PW_DEFAULT_PRIORITY);
    test_retries_and_deadletters(PW_PRIORITY_MAX);
    test_rate_limit_and_quota();
  }
  sched_server_stop(s);
  tracker_stop(t);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  TEST_END();
}
