/* paella-worker as a process against a private Redis and file:// storage: --once, malformed
 * and invalid jobs to the dead letters (exact code + field) while serving on, too many
 * deliveries, deadlines, cancel (before and while running), SIGTERM drain of a batch, the
 * embedding cache across two workers, /metrics + /healthz, signed webhooks end to end. */
#include <curl/curl.h>
#include <jansson.h>
#include <sys/stat.h>

#include "harness.h"
#include "tests/test.h"
#include "worker/webhook.h"

static char out_dir[300], log_path[300];

static bool file_exists(const char *job_id, int index) {
  char p[512];
  struct stat st;
  snprintf(p, sizeof p, "%s/%s/%d.png", out_dir, job_id, index);
  return stat(p, &st) == 0 && st.st_size > 0;
}

/* The decoded Result of a finished job (caller frees). */
static int get_result(redisContext *c, const char *job_id, pw_result *res) {
  char key[128];
  snprintf(key, sizeof key, "paella:job:%s", job_id);
  redisReply *r = redisCommand(c, "HGET %s result", key);
  pw_error err;
  int rc = r && r->type == REDIS_REPLY_STRING ? pw_result_decode(r->str, r->len, res, &err) : -1;
  if (!r || r->type != REDIS_REPLY_STRING) pw_result_init(res);
  freeReplyObject(r);
  return rc;
}

static void check_failed_with(redisContext *c, const char *job_id, const char *status, pw_code code) {
  pw_result res;
  CHECK_MSG(get_result(c, job_id, &res) == 0, "%s: no result", job_id);
  CHECK_MSG(!strcmp(pw_status_name(res.status), status) && res.has_error && res.error_code == code,
            "%s: status %s code %s (%s)", job_id, pw_status_name(res.status), pw_code_name(res.error_code),
            res.error_message ? res.error_message : "");
  pw_result_free(&res);
}

static long long pending(redisContext *c) {
  redisReply *r = redisCommand(c, "XPENDING paella:jobs workers");
  long long n = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? r->element[0]->integer : -1;
  freeReplyObject(r);
  return n;
}

/* True once XPENDING counts `want` entries (acknowledgements follow recorded results). */
static bool wait_pending(redisContext *c, long long want, double timeout_s) {
  for (double t0 = h_now(); h_now() - t0 < timeout_s; h_sleep_ms(20))
    if (pending(c) == want) return true;
  return false;
}

static void test_once(redisContext *c) {
  h_submit_tiny(c, "paella:jobs", "once1", NULL);
  h_submit_tiny(c, "paella:jobs", "once2", NULL);
  pid_t w = h_worker(out_dir, log_path, "--once", NULL);
  CHECK(h_wait_exit(w, 180) == 0);
  CHECK(h_wait_status(c, "once1", "succeeded", 1));
  char *s = h_status(c, "once2");
  CHECK(s == NULL); /* --once: the second job is left for others */
  free(s);
  CHECK(file_exists("once1", 0) && !file_exists("once2", 0));
  pw_result res;
  CHECK(get_result(c, "once1", &res) == 0 && res.n_outputs == 1 && res.has_seed && !isnan(res.total_ms) &&
        !isnan(res.timings_ms[PW_STAGE_DENOISE]));
  if (res.n_outputs == 1) CHECK(strstr(res.outputs[0].key, "once1/0.png") != NULL);
  pw_result_free(&res);
  CHECK(pending(c) == 0);
  w = h_worker(out_dir, log_path, "--once", NULL); /* takes once2 */
  CHECK(h_wait_exit(w, 180) == 0);
  CHECK(h_wait_status(c, "once2", "succeeded", 1));
}

/* Field values of the dead-letter entries, in order. */
static int dead_entries(redisContext *c, char codes[][32], char fields[][32], char ids[][32], int max) {
  redisReply *r = redisCommand(c, "XRANGE paella:jobs:dead - +");
  int n = 0;
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements && n < max; i++, n++) {
    redisReply *f = r->element[i]->element[1];
    codes[n][0] = fields[n][0] = ids[n][0] = 0;
    for (size_t k = 0; k + 1 < f->elements; k += 2) {
      if (!strcmp(f->element[k]->str, "code")) snprintf(codes[n], 32, "%s", f->element[k + 1]->str);
      if (!strcmp(f->element[k]->str, "field")) snprintf(fields[n], 32, "%s", f->element[k + 1]->str);
      if (!strcmp(f->element[k]->str, "id")) snprintf(ids[n], 32, "%s", f->element[k + 1]->str);
    }
  }
  freeReplyObject(r);
  return n;
}

static int dead_index(char ids[][32], int n, const char *id) {
  for (int i = 0; i < n; i++)
    if (!strcmp(ids[i], id)) return i;
  return -1;
}

/* A field of the dead letter of job_id (malloc'd; NULL when absent). */
static char *dead_field(redisContext *c, const char *job_id, const char *field) {
  redisReply *r = redisCommand(c, "XRANGE paella:jobs:dead - +");
  char *v = NULL;
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
    redisReply *f = r->element[i]->element[1];
    bool mine = false;
    for (size_t k = 0; k + 1 < f->elements; k += 2)
      mine |= !strcmp(f->element[k]->str, "id") && !strcmp(f->element[k + 1]->str, job_id);
    for (size_t k = 0; mine && !v && k + 1 < f->elements; k += 2)
      if (!strcmp(f->element[k]->str, field)) v = strdup(f->element[k + 1]->str);
  }
  freeReplyObject(r);
  return v;
}

/* Finding 6: storage fails on every attempt (the output folder is a file): the dead letter
 * keeps the last real error beside too_many_attempts. */
static void test_storage_failure_dead_letter(redisContext *c) {
  char blocked[400];
  snprintf(blocked, sizeof blocked, "%s/blocked", h_dir());
  FILE *f = fopen(blocked, "w");
  CHECK(f != NULL);
  if (f) fclose(f);
  h_submit_tiny(c, "paella:jobs", "sf1", NULL);
  pid_t w = h_worker(blocked, log_path, "--max-deliveries", "2", "--lease-ms", "300", NULL);
  char *code = NULL;
  for (double t0 = h_now(); h_now() - t0 < 120 && !(code = dead_field(c, "sf1", "code")); h_sleep_ms(50)) {
  }
  char *last_code = dead_field(c, "sf1", "last_code"), *last_msg = dead_field(c, "sf1", "last_message");
  char *last_attempt = dead_field(c, "sf1", "last_attempt");
  CHECK_MSG(code && !strcmp(code, "too_many_attempts"), "code %s", code ? code : "(no dead letter)");
  CHECK_MSG(last_code && !strcmp(last_code, "storage_failed"), "last_code %s", last_code ? last_code : "(none)");
  CHECK_MSG(last_msg && strstr(last_msg, "Not a directory"), "last_message %s", last_msg ? last_msg : "(none)");
  CHECK_MSG(last_attempt && atoi(last_attempt) == 2, "last_attempt %s", last_attempt ? last_attempt : "(none)");
  free(code), free(last_code), free(last_msg), free(last_attempt);
  check_failed_with(c, "sf1", "failed", PW_E_TOO_MANY_ATTEMPTS);
  kill(w, SIGTERM);
  CHECK(h_wait_exit(w, 60) == 0);
}

/* Garbage, an invalid job, an over-delivered job, an expired and a canceled job, then a good
 * one: the worker deals with each and keeps serving. */
static void test_bad_jobs(redisContext *c) {
  static const uint8_t garbage[] = {0xc1, 0x00, 0x17};
  /* {"id":"bad2","prompt":"x","steps":0}: steps out of range */
  static const uint8_t invalid[] = {0x83, 0xa2, 'i', 'd', 0xa4, 'b', 'a', 'd', '2', 0xa6, 'p', 'r', 'o', 'm', 'p',
                                    't', 0xa1, 'x', 0xa5, 's', 't', 'e', 'p', 's', 0x00};
  /* md1 was delivered twice to a consumer that died: the worker's delivery is the third */
  h_submit_tiny(c, "paella:jobs", "md1", NULL);
  redisReply *r = redisCommand(c, "XREADGROUP GROUP workers ghost COUNT 1 STREAMS paella:jobs >");
  CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
  if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1)
    freeReplyObject(redisCommand(c, "XCLAIM paella:jobs workers ghost 0 %s", r->element[0]->element[1]->element[0]->element[0]->str));
  freeReplyObject(r);
  h_xadd(c, "paella:jobs", "bad1", garbage, sizeof garbage, NULL);
  h_xadd(c, "paella:jobs", "bad2", invalid, sizeof invalid, NULL);
  h_submit_tiny(c, "paella:jobs", "dl1", "\"deadline_ms\":1");
  h_submit_tiny(c, "paella:jobs", "pc1", NULL);
  freeReplyObject(redisCommand(c, "HSET paella:job:pc1 cancel 1"));
  h_submit_tiny(c, "paella:jobs", "ok1", NULL);
  pid_t w = h_worker(out_dir, log_path, "--max-deliveries", "2", "--lease-ms", "300", NULL);
  CHECK(h_wait_status(c, "ok1", "succeeded", 120));
  CHECK(h_wait_status(c, "md1", "failed", 120)); /* after its lease: before or after ok1 */
  check_failed_with(c, "md1", "failed", PW_E_TOO_MANY_ATTEMPTS);
  check_failed_with(c, "dl1", "failed", PW_E_DEADLINE);
  check_failed_with(c, "pc1", "canceled", PW_E_CANCELED);
  CHECK(!file_exists("md1", 0) && !file_exists("dl1", 0) && !file_exists("pc1", 0));
  /* The three reach the dead letters in no fixed order: md1 comes back after the lease, which
   * a loaded machine may stretch past the malformed entries or not. Wait for all three. */
  char codes[8][32], fields[8][32], ids[8][32];
  int n = 0;
  for (double t0 = h_now(); h_now() - t0 < 60 && (n = dead_entries(c, codes, fields, ids, 8)) < 3; h_sleep_ms(50)) {
  }
  CHECK_MSG(n == 3, "%d dead letters", n);
  int i_bad1 = dead_index(ids, n, "bad1"), i_bad2 = dead_index(ids, n, "bad2"), i_md1 = dead_index(ids, n, "md1");
  CHECK_MSG(i_bad1 >= 0 && !strcmp(codes[i_bad1], "malformed") && !strcmp(fields[i_bad1], ""), "bad1: %s",
            i_bad1 >= 0 ? codes[i_bad1] : "missing");
  CHECK_MSG(i_bad2 >= 0 && !strcmp(codes[i_bad2], "out_of_range") && !strcmp(fields[i_bad2], "steps"), "bad2: %s %s",
            i_bad2 >= 0 ? codes[i_bad2] : "missing", i_bad2 >= 0 ? fields[i_bad2] : "");
  CHECK_MSG(i_md1 >= 0 && !strcmp(codes[i_md1], "too_many_attempts"), "md1: %s", i_md1 >= 0 ? codes[i_md1] : "missing");
  /* ok1's acknowledgement follows its recorded status: wait for it rather than read at once */
  CHECK(wait_pending(c, 0, 60));
  kill(w, SIGTERM);
  CHECK(h_wait_exit(w, 30) == 0);
}

/* A long job canceled while it runs stops at the next step. */
static void test_cancel_running(redisContext *c) {
  h_submit_json(c, "paella:jobs",
                "{\"id\":\"cx1\",\"prompt\":\"a very long job\",\"width\":256,\"height\":256,\"steps\":100,"
                "\"prior\":{\"steps\":200}}");
  pid_t w = h_worker(out_dir, log_path, "--once", NULL);
  CHECK(h_wait_status(c, "cx1", "running", 120));
  freeReplyObject(redisCommand(c, "HSET paella:job:cx1 cancel 1"));
  CHECK(h_wait_exit(w, 120) == 0);
  check_failed_with(c, "cx1", "canceled", PW_E_CANCELED);
  pw_result res;
  if (get_result(c, "cx1", &res) == 0)
    CHECK_MSG(strstr(res.error_message, "while running") != NULL, "%s", res.error_message);
  pw_result_free(&res);
  CHECK(pending(c) == 0);
}

/* SIGTERM while a batch runs: the batch finishes, is acknowledged, and the worker exits 0. */
static void test_sigterm_drain(redisContext *c) {
  const char *ids[] = {"st1", "st2", "st3"};
  for (int i = 0; i < 3; i++) {
    char json[256];
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"prompt\":\"drain %d\",\"width\":128,\"height\":128,\"steps\":20,"
             "\"prior\":{\"steps\":20}}", ids[i], i);
    h_submit_json(c, "paella:jobs", json);
  }
  pid_t w = h_worker(out_dir, log_path, "--max-batch", "3", NULL);
  CHECK(h_wait_status(c, "st1", "running", 120));
  kill(w, SIGTERM);
  CHECK(h_wait_exit(w, 300) == 0); /* three 128 px jobs of 20 steps on a loaded machine */
  for (int i = 0; i < 3; i++) {
    char *s = h_status(c, ids[i]);
    CHECK_MSG(s && !strcmp(s, "succeeded"), "%s: %s", ids[i], s ? s : "(none)");
    free(s);
    CHECK(file_exists(ids[i], 0));
  }
  CHECK(pending(c) == 0);
}

/* The "exiting" log line's cache counters of the last worker that wrote to `path`. */
static void last_cache_stats(const char *path, long long *hits, long long *misses) {
  FILE *f = fopen(path, "r");
  char line[8192];
  *hits = *misses = -1;
  while (f && fgets(line, sizeof line, f)) {
    json_t *j = json_loads(line, 0, NULL);
    const char *msg = json_string_value(json_object_get(j, "msg"));
    if (msg && strstr(msg, "exiting")) {
      *hits = json_integer_value(json_object_get(j, "cache_hits"));
      *misses = json_integer_value(json_object_get(j, "cache_misses"));
    }
    json_decref(j);
  }
  if (f) fclose(f);
}

/* A counter of the fleet-wide paella:metrics hash the scheduler exports (0 when absent). */
static long long shared_counter(redisContext *c, const char *field) {
  redisReply *r = redisCommand(c, "HGET paella:metrics %s", field);
  long long v = r && r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
  if (r) freeReplyObject(r);
  return v;
}

static void test_cache_two_workers(redisContext *c) {
  char la[320], lb[320];
  long long hits, misses;
  snprintf(la, sizeof la, "%s/a.log", h_dir());
  snprintf(lb, sizeof lb, "%s/b.log", h_dir());
  h_submit_json(c, "paella:jobs", "{\"id\":\"ca1\",\"prompt\":\"the shared prompt\",\"width\":32,\"height\":32,"
                "\"steps\":2,\"prior\":{\"steps\":1}}");
  CHECK(h_wait_exit(h_worker(out_dir, la, "--once", NULL), 180) == 0);
  last_cache_stats(la, &hits, &misses);
  /* the prompt's ByT5 and CLIP encodings miss (the empty negative prompt may hit: earlier jobs) */
  CHECK_MSG(misses >= 2, "worker a: %lld hits, %lld misses", hits, misses);
  long long hits_a = hits;
  h_submit_json(c, "paella:jobs", "{\"id\":\"ca2\",\"prompt\":\"the shared prompt\",\"width\":32,\"height\":32,"
                "\"steps\":2,\"prior\":{\"steps\":1},\"seed\":7}");
  CHECK(h_wait_exit(h_worker(out_dir, lb, "--once", NULL), 180) == 0);
  last_cache_stats(lb, &hits, &misses);
  CHECK_MSG(hits >= hits_a + 2 && misses == 0, "worker b: %lld hits, %lld misses", hits, misses);
  CHECK(h_wait_status(c, "ca2", "succeeded", 1));
  /* both workers added their hits to the shared registry */
  CHECK_MSG(shared_counter(c, "embedding_cache_hits") >= hits_a + hits, "shared hits %lld",
            shared_counter(c, "embedding_cache_hits"));
}

static size_t to_buf(char *d, size_t s, size_t n, void *u) {
  char **b = u;
  size_t old = *b ? strlen(*b) : 0;
  char *nb = realloc(*b, old + s * n + 1);
  if (!nb) return 0;
  memcpy(nb + old, d, s * n);
  nb[old + s * n] = 0;
  *b = nb;
  return s * n;
}

static long http_get(int port, const char *path, char **body) {
  char url[128];
  long status = 0;
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  CURL *h = curl_easy_init();
  *body = NULL;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, to_buf);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L); /* a loaded machine may answer slowly */
  if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(h);
  return status;
}

static void test_metrics(redisContext *c) {
  int port = 0;
  char ports[16], *body = NULL;
  h_submit_tiny(c, "paella:jobs", "mx1", NULL);
  /* The port is free only until the worker binds it; a worker that finds it taken (by another
   * test meanwhile) exits, and the next one gets another port. */
  pid_t w = -1;
  long st = 0;
  for (int tries = 0; tries < 5 && st != 200; tries++) {
    port = h_free_port();
    snprintf(ports, sizeof ports, "%d", port);
    w = h_worker(out_dir, log_path, "--metrics-port", ports, NULL);
    bool exited = false;
    for (double t0 = h_now(); h_now() - t0 < 60 && st != 200 && !exited; h_sleep_ms(50)) {
      if (waitpid(w, NULL, WNOHANG) == w) {
        h_untrack(w);
        exited = true;
        break;
      }
      free(body);
      body = NULL;
      st = http_get(port, "/healthz", &body);
    }
  }
  CHECK(st == 200);
  CHECK(h_wait_status(c, "mx1", "succeeded", 120));
  free(body);
  body = NULL;
  /* the job's counters are updated right after its status: wait for them, no fixed sleep */
  st = 0;
  for (double t0 = h_now(); h_now() - t0 < 60; h_sleep_ms(50)) {
    free(body);
    body = NULL;
    st = http_get(port, "/metrics", &body);
    if (st == 200 && body && strstr(body, "paella_worker_jobs_total{status=\"succeeded\"} 1")) break;
  }
  CHECK(st == 200);
  const char *want[] = {"paella_worker_jobs_total{status=\"succeeded\"} 1", "paella_embed_cache_hit_ratio",
                        "paella_embed_cache_misses_total", "paella_worker_gpu_busy_ratio",
                        "paella_worker_stage_seconds_count{stage=\"denoise\"} 1", "paella_worker_claim_seconds_count 1",
                        "paella_worker_queue_wait_seconds_bucket", "paella_worker_overhead_seconds_sum"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    CHECK_MSG(body && strstr(body, want[i]), "/metrics lacks %s", want[i]);
  free(body);
  CHECK(http_get(port, "/nope", &body) == 404);
  free(body);
  body = NULL;
  /* Finding 4: /healthz is 503 from the moment SIGTERM arrives, while the job still runs */
  h_submit_json(c, "paella:jobs",
                "{\"id\":\"mx2\",\"prompt\":\"a long drain\",\"width\":256,\"height\":256,\"steps\":100,"
                "\"prior\":{\"steps\":200}}");
  CHECK(h_wait_status(c, "mx2", "running", 120));
  kill(w, SIGTERM);
  st = 0;
  for (double t0 = h_now(); h_now() - t0 < 60 && st != 503; h_sleep_ms(20)) {
    free(body);
    body = NULL;
    st = http_get(port, "/healthz", &body);
  }
  free(body);
  char *mx2 = h_status(c, "mx2");
  CHECK_MSG(st == 503 && mx2 && !strcmp(mx2, "running"), "/healthz %ld while draining (job %s)", st, mx2 ? mx2 : "?");
  free(mx2);
  freeReplyObject(redisCommand(c, "HSET paella:job:mx2 cancel 1")); /* no need to wait for it */
  CHECK(h_wait_exit(w, 120) == 0);
}

/* Webhooks: signed, stable ids, only the subscribed events. */
static void test_webhooks(redisContext *c) {
  int port = h_receiver_start();
  const char *secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  setenv("PAELLA_WEBHOOK_SECRET_WH_1", secret, 1);
  char json[512];
  snprintf(json, sizeof json,
           "{\"id\":\"wh1\",\"prompt\":\"hooked\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":1},"
           "\"webhook\":{\"url\":\"http://127.0.0.1:%d/hook\",\"secret_id\":\"wh-1\",\"events\":[\"start\",\"completed\"]}}",
           port);
  long long ok_before = shared_counter(c, "webhook_deliveries:ok");
  h_submit_json(c, "paella:jobs", json);
  /* the courier delivers from the outbox, after the job: wait for it, then stop the worker */
  pid_t w = h_worker(out_dir, log_path, "--webhook-allow-private", NULL);
  for (double t0 = h_now(); h_now() - t0 < 120 && h_hooks_with_id("wh1.completed") < 1; h_sleep_ms(20)) {
  }
  for (double t0 = h_now(); h_now() - t0 < 60 && shared_counter(c, "webhook_deliveries:ok") < ok_before + 2;
       h_sleep_ms(20)) {
  }
  kill(w, SIGTERM);
  CHECK(h_wait_exit(w, 60) == 0);
  CHECK(shared_counter(c, "webhook_deliveries:ok") == ok_before + 2); /* start and completed */
  CHECK(h_hooks_with_id("wh1.start") == 1);
  CHECK(h_hooks_with_id("wh1.completed") == 1);
  CHECK(h_rx_.n == 2); /* no progress: not subscribed */
  for (int i = 0; i < h_rx_.n; i++) {
    h_hook *h = &h_rx_.hooks[i];
    char sig[256];
    CHECK_OK(pa_webhook_sign(secret, h->id, strtoll(h->ts, NULL, 10), h->body, strlen(h->body), sig, sizeof sig));
    CHECK_MSG(strstr(h->sig, sig) != NULL, "signature %s vs %s", h->sig, sig);
    json_t *j = json_loads(h->body, 0, NULL);
    CHECK(j && json_is_object(json_object_get(j, "data")));
    json_decref(j);
  }
  /* no order between start and completed is asserted: the courier promises none (docs/worker.md) */
  unsetenv("PAELLA_WEBHOOK_SECRET_WH_1");
  h_receiver_stop();
}

int main(void) {
  h_redis_start();
  snprintf(out_dir, sizeof out_dir, "%s/out", h_dir());
  snprintf(log_path, sizeof log_path, "%s/worker.log", h_dir());
  setenv("OMP_NUM_THREADS", "1", 0);
  redisContext *c = h_connect();
  test_once(c);
  test_bad_jobs(c);
  test_cancel_running(c);
  test_sigterm_drain(c);
  test_cache_two_workers(c);
  test_metrics(c);
  test_webhooks(c);
  test_storage_failure_dead_letter(c);
  if (test_failed_) h_tail_log(log_path, 40);
  redisFree(c);
  TEST_END();
}
