/* paella-worker under faults, against a private Redis and file:// storage:
 *  - a webhook receiver that accepts and never answers delays no job, and SIGTERM still exits
 *    at once, leaving the undelivered messages in the outbox for the next worker (findings 2, 4);
 *  - every attempt is recorded in the job's deliveries and counted; a webhook whose secret the
 *    worker lacks is refused and counted, or sent unsigned and counted when allowed (finding 8);
 *  - fencing: a worker frozen (SIGSTOP) past its lease while another finishes the job writes
 *    nothing when it wakes: one result, one completed webhook, the output untouched (finding 3). */
#include <arpa/inet.h>
#include <jansson.h>
#include <sys/stat.h>

#include "harness.h"
#include "tests/test.h"

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static char out_dir[300], log_path[300];

/* A receiver that accepts connections (the kernel does, from its backlog) and never answers. */
static int hanging_receiver(int *port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 256) ||
      getsockname(s, (struct sockaddr *)&a, &len)) {
    perror("hanging receiver");
    exit(1);
  }
  *port = ntohs(a.sin_port);
  return s;
}

static void submit_hooked(redisContext *c, const char *id, int port, const char *secret_id, const char *events,
                          const char *size) {
  char json[1024];
  snprintf(json, sizeof json,
           "{\"id\":\"%s\",\"prompt\":\"hooked %s\",%s,\"prior\":{\"steps\":1},"
           "\"webhook\":{\"url\":\"http://127.0.0.1:%d/hook\",\"secret_id\":\"%s\",\"events\":[%s]}}",
           id, id, size ? size : "\"width\":32,\"height\":32,\"steps\":2", port, secret_id, events);
  h_submit_json(c, "paella:jobs", json);
}

static long long pending(redisContext *c) {
  redisReply *r = redisCommand(c, "XPENDING paella:jobs workers");
  long long n = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? r->element[0]->integer : -1;
  freeReplyObject(r);
  return n;
}

static long long counter(redisContext *c, const char *field) {
  redisReply *r = redisCommand(c, "HGET paella:metrics %s", field);
  long long v = r && r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
  freeReplyObject(r);
  return v;
}

/* The job's delivery records (a JSON array; caller decrefs). */
static json_t *deliveries(redisContext *c, const char *job_id) {
  redisReply *r = redisCommand(c, "LRANGE paella:job:%s:deliveries 0 -1", job_id);
  json_t *a = json_array();
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    json_t *j = json_loads(r->element[i]->str, 0, NULL);
    if (j) json_array_append_new(a, j);
  }
  freeReplyObject(r);
  return a;
}

static int records_with(json_t *recs, const char *field, const char *value) {
  int n = 0;
  for (size_t i = 0; i < json_array_size(recs); i++) {
    const char *v = json_string_value(json_object_get(json_array_get(recs, i), field));
    n += v && !strcmp(v, value);
  }
  return n;
}

static bool all_succeeded(redisContext *c, const char *const *ids, int n) {
  for (int i = 0; i < n; i++) {
    char *s = h_status(c, ids[i]);
    bool ok = s && !strcmp(s, "succeeded");
    free(s);
    if (!ok) return false;
  }
  return true;
}

/* Findings 2 and 4. Synchronous final webhooks took ~85 s per job here (and held SIGTERM). */
static void test_hanging_receiver(redisContext *c) {
  int port, rx = hanging_receiver(&port);
  const char *ids[] = {"hang1", "hang2", "hang3", "hang4"};
  for (int i = 0; i < 4; i++) submit_hooked(c, ids[i], port, "wh-1", "\"start\",\"completed\"", NULL);
  pid_t w = h_worker(out_dir, log_path, "--webhook-allow-private", "--lease-ms", "2000", NULL);
  bool done = false;
  for (double t0 = h_now(); h_now() - t0 < 60 && !(done = all_succeeded(c, ids, 4) && pending(c) == 0);)
    h_sleep_ms(20);
  CHECK_MSG(done, "jobs held up by a receiver that never answers");
  long long queued = h_int(c, "ZCARD paella:jobs:webhooks");
  CHECK_MSG(queued == 8, "%lld messages in the outbox (4 start + 4 completed)", queued);
  double t0 = h_now();
  kill(w, SIGTERM);
  int rc = h_wait_exit(w, 15);
  double exit_s = h_now() - t0;
  CHECK_MSG(rc == 0, "SIGTERM with a webhook attempt hanging: exit %d after %.1f s", rc, exit_s);
  printf("hanging receiver: 4 jobs done while their webhooks hang; SIGTERM exit in %.2f s\n", exit_s);
  /* nothing was delivered and nothing lost: every message waits for the next worker */
  queued = h_int(c, "ZCARD paella:jobs:webhooks");
  CHECK_MSG(queued == 8, "%lld messages left in the outbox", queued);
  close(rx);
  freeReplyObject(redisCommand(c, "DEL paella:jobs:webhooks"));
}

/* Finding 8: records, counters, refused and unsigned deliveries. */
static void test_deliveries_and_secrets(redisContext *c) {
  /* a port bound here and never listened on: connections are refused, and no other test can
   * start a server on it meanwhile */
  int dead = socket(AF_INET, SOCK_STREAM, 0), dead_port = 0;
  struct sockaddr_in da = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t dlen = sizeof da;
  CHECK(dead >= 0 && bind(dead, (struct sockaddr *)&da, sizeof da) == 0 &&
        getsockname(dead, (struct sockaddr *)&da, &dlen) == 0);
  dead_port = ntohs(da.sin_port);
  int port = h_receiver_start();
  long long ok0 = counter(c, "webhook_deliveries:ok"), failed0 = counter(c, "webhook_deliveries:failed");
  long long att_ok0 = counter(c, "webhook_attempts:ok"), att_failed0 = counter(c, "webhook_attempts:failed");
  long long unsigned0 = counter(c, "webhook_deliveries:unsigned");
  submit_hooked(c, "dv1", port, "wh-1", "\"completed\"", NULL);      /* delivered, signed */
  submit_hooked(c, "dv2", dead_port, "wh-1", "\"completed\"", NULL); /* nobody listens: retried */
  submit_hooked(c, "dv3", port, "nope", "\"completed\"", NULL);      /* no such secret: refused */
  pid_t w = h_worker(out_dir, log_path, "--webhook-allow-private", NULL);
  json_t *r1 = NULL, *r2 = NULL, *r3 = NULL;
  for (double t0 = h_now(); h_now() - t0 < 60; h_sleep_ms(50)) {
    json_decref(r1), json_decref(r2), json_decref(r3);
    r1 = deliveries(c, "dv1"), r2 = deliveries(c, "dv2"), r3 = deliveries(c, "dv3");
    if (json_array_size(r1) >= 1 && json_array_size(r2) >= 2 && json_array_size(r3) >= 1) break;
  }
  CHECK_MSG(records_with(r1, "result", "delivered") == 1 && json_is_true(json_object_get(json_array_get(r1, 0), "signed")),
            "dv1: %zu records", json_array_size(r1));
  CHECK_MSG(records_with(r2, "result", "failed") >= 2, "dv2: %zu records", json_array_size(r2));
  if (json_array_size(r2) >= 2) {
    json_t *a = json_array_get(r2, 0), *b = json_array_get(r2, 1);
    CHECK(json_integer_value(json_object_get(a, "attempt")) == 1 && json_integer_value(json_object_get(b, "attempt")) == 2);
    CHECK(json_integer_value(json_object_get(a, "retry_at_ms")) > json_integer_value(json_object_get(a, "ts_ms")));
  }
  CHECK_MSG(records_with(r3, "result", "refused") == 1, "dv3: %zu records", json_array_size(r3));
  CHECK(h_hooks_with_id("dv1.completed") == 1 && h_hooks_with_id("dv3.completed") == 0);
  CHECK(counter(c, "webhook_deliveries:ok") == ok0 + 1 && counter(c, "webhook_attempts:ok") == att_ok0 + 1);
  CHECK(counter(c, "webhook_deliveries:failed") >= failed0 + 1); /* dv3 refused (dv2 still retrying) */
  CHECK(counter(c, "webhook_attempts:failed") >= att_failed0 + 2);
  json_decref(r1), json_decref(r2), json_decref(r3);
  kill(w, SIGTERM);
  CHECK(h_wait_exit(w, 30) == 0);
  /* dv2 stays in the outbox (its next attempt is due later): a worker that allows unsigned
   * delivery takes dv4, whose secret nobody has */
  submit_hooked(c, "dv4", port, "nope", "\"completed\"", NULL);
  w = h_worker(out_dir, log_path, "--webhook-allow-private", "--webhook-allow-unsigned", NULL);
  for (double t0 = h_now(); h_now() - t0 < 60 && h_hooks_with_id("dv4.completed") < 1; h_sleep_ms(20)) {
  }
  CHECK(h_hooks_with_id("dv4.completed") == 1);
  for (int i = 0; i < h_rx_.n; i++)
    if (!strcmp(h_rx_.hooks[i].id, "dv4.completed")) CHECK_MSG(h_rx_.hooks[i].sig[0] == 0, "signed: %s", h_rx_.hooks[i].sig);
  for (double t0 = h_now(); h_now() - t0 < 30 && counter(c, "webhook_deliveries:unsigned") < unsigned0 + 1; h_sleep_ms(20)) {
  }
  CHECK(counter(c, "webhook_deliveries:unsigned") == unsigned0 + 1);
  kill(w, SIGTERM);
  CHECK(h_wait_exit(w, 30) == 0);
  freeReplyObject(redisCommand(c, "DEL paella:jobs:webhooks"));
  h_receiver_stop();
  close(dead);
}

/* Finding 3: SIGSTOP a worker past its lease, let another finish the job, SIGCONT. */
static void test_fencing(redisContext *c) {
  int port = h_receiver_start();
  char log_a[320], log_b[320], png[400];
  snprintf(log_a, sizeof log_a, "%s/fence-a.log", h_dir());
  snprintf(log_b, sizeof log_b, "%s/fence-b.log", h_dir());
  snprintf(png, sizeof png, "%s/fx1/0.png", out_dir);
  /* long enough to be caught running; small enough for wB to finish it under the sanitizers
   * (256 px, 40 steps took more than 180 s there) */
  submit_hooked(c, "fx1", port, "wh-1", "\"completed\"", "\"width\":128,\"height\":128,\"steps\":20");
  pid_t a = h_worker(out_dir, log_a, "--webhook-allow-private", "--lease-ms", "1000", "--consumer", "wA", NULL);
  CHECK(h_wait_status(c, "fx1", "running", 60));
  kill(a, SIGSTOP);
  pid_t b = h_worker(out_dir, log_b, "--webhook-allow-private", "--lease-ms", "1000", "--consumer", "wB", NULL);
  CHECK(h_wait_status(c, "fx1", "succeeded", 400));
  for (double t0 = h_now(); h_now() - t0 < 120 && h_hooks_with_id("fx1.completed") < 1; h_sleep_ms(20)) {
  }
  char *by = h_hget(c, "paella:job:fx1", "worker");
  CHECK_MSG(by && !strcmp(by, "wB"), "result by %s", by ? by : "(none)");
  free(by);
  struct stat before, after;
  CHECK(stat(png, &before) == 0);
  kill(a, SIGCONT);
  bool fenced = false;
  for (double t0 = h_now(); h_now() - t0 < 120 && !(fenced = h_log_lines(log_a, "\"job_id\":\"fx1\"", "\"status\":\"fenced\"") > 0);)
    h_sleep_ms(50);
  CHECK_MSG(fenced, "the frozen worker did not abandon its attempt");
  CHECK(h_log_lines(log_a, "lease lost", "\"entry\"") > 0);
  /* every side effect of the fenced attempt is refused: one result (wB's), one completed event
   * and webhook, the output untouched, nothing left pending or queued */
  by = h_hget(c, "paella:job:fx1", "worker");
  CHECK_MSG(by && !strcmp(by, "wB"), "result by %s after SIGCONT", by ? by : "(none)");
  free(by);
  CHECK_MSG(h_events_of(c, "fx1", "completed") == 1, "%d completed events", h_events_of(c, "fx1", "completed"));
  CHECK(h_int(c, "ZCARD paella:jobs:webhooks") == 0);
  CHECK_MSG(h_hooks_with_id("fx1.completed") == 1, "%d completed webhooks", h_hooks_with_id("fx1.completed"));
  CHECK(stat(png, &after) == 0 && after.st_ino == before.st_ino && after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
        after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
  CHECK(pending(c) == 0);
  kill(a, SIGTERM);
  kill(b, SIGTERM);
  CHECK(h_wait_exit(a, 60) == 0);
  CHECK(h_wait_exit(b, 60) == 0);
  h_receiver_stop();
}

int main(void) {
  h_redis_start();
  snprintf(out_dir, sizeof out_dir, "%s/out", h_dir());
  snprintf(log_path, sizeof log_path, "%s/worker.log", h_dir());
  setenv("OMP_NUM_THREADS", "1", 0);
  setenv("PAELLA_WEBHOOK_SECRET_WH_1", SECRET, 1);
  redisContext *c = h_connect();
  test_hanging_receiver(c);
  test_deliveries_and_secrets(c);
  test_fencing(c);
  if (test_failed_) h_tail_log(log_path, 30);
  redisFree(c);
  TEST_END();
}
