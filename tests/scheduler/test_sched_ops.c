/* Operating the scheduler and workers, against a real redis-server and the real paella-worker:
 * - jobs no worker can run are refused at submission (422 naming the field): a side above the
 *   workers' --max-side, an inpainting mask of another size than its image, a corrupt JPEG;
 *   the same images in the right form are accepted and run;
 * - workers advertise their limits: /readyz counts them and names one started with another
 *   --max-side, and /metrics counts it in paella_fleet_limits_mismatch;
 * - --metrics-listen 127.0.0.1:PORT serves on that address only;
 * - the access log has one JSON line per request with its status (2xx, 4xx and 5xx). */
#include <openssl/evp.h>

#include "model/image.h"
#include "tests/scheduler/harness.h"

#define ALICE "Authorization: Bearer alice-token\r\n"
#define JSON_CT "Content-Type: application/json\r\n"

static int port;
static char access_path[400];

static void add_key(sched_config *c, const char *name, const char *token) {
  char hex[65], spec[160];
  sha256_hex(token, strlen(token), hex);
  snprintf(spec, sizeof spec, "%s:%s", name, hex);
  CHECK(sched_config_add_keys(c, spec) == PA_OK);
}

/* An encoded w x h test image, base64 (malloc'd). */
static char *image_b64(int w, int h, pa_image_format f) {
  pa_image *img = NULL;
  void *buf = NULL;
  size_t len = 0;
  if (pa_image_new(w, h, &img)) return NULL;
  for (int i = 0; i < w * h * 3; i++) img->rgb[i] = (float)(i % 7) / 7.0f;
  pa_image_encoding enc = {f, 90, NULL};
  char *out = NULL;
  if (pa_image_encode(img, &enc, &buf, &len) == PA_OK && (out = malloc(len * 4 / 3 + 8)))
    EVP_EncodeBlock((unsigned char *)out, buf, (int)len);
  free(buf);
  pa_image_free(img);
  return out;
}

static void submit(const char *body, h_resp *r, const char *request_id) {
  char hdrs[256];
  snprintf(hdrs, sizeof hdrs, ALICE JSON_CT "X-Request-Id: %s\r\n", request_id);
  CHECK(h_http(port, "POST", "/v1/jobs", hdrs, body, strlen(body), 60, r) == 0);
}

static bool refused(const char *body, const char *field, const char *code, const char *request_id) {
  h_resp r;
  submit(body, &r, request_id);
  bool ok = r.status == 422 && h_str_is(r.json, "error.field", field) && h_str_is(r.json, "error.code", code);
  if (!ok) fprintf(stderr, "want 422 %s %s, got %d %s\n", field, code, r.status, r.body ? r.body : "");
  h_resp_free(&r);
  return ok;
}

static bool runs(const char *body) {
  h_resp r;
  char hdrs[256];
  snprintf(hdrs, sizeof hdrs, ALICE JSON_CT "Prefer: wait=60\r\n");
  bool ok = false;
  for (int i = 0; i < 3 && !ok; i++) { /* Prefer: wait answers 202 after 60 s on a slow machine */
    CHECK(h_http(port, "POST", "/v1/jobs", hdrs, body, strlen(body), 90, &r) == 0);
    ok = (r.status == 200 || r.status == 202) && h_str_is(r.json, "status", "succeeded");
    if (!ok && r.status != 202) break;
    h_resp_free(&r);
  }
  if (!ok) fprintf(stderr, "job did not succeed: %d %s\n", r.status, r.body ? r.body : "");
  h_resp_free(&r);
  return ok;
}

static void test_refused_at_submission(const sched_config *cfg) {
  char *png64 = image_b64(64, 64, PA_IMAGE_PNG), *png32 = image_b64(32, 32, PA_IMAGE_PNG);
  char *jpg64 = image_b64(64, 64, PA_IMAGE_JPEG);
  CHECK(png64 && png32 && jpg64);
  if (!png64 || !png32 || !jpg64) goto done;
  char *body = malloc(strlen(png64) * 2 + strlen(jpg64) + 512);
  /* above the workers' 1024 px, though within the protocol's 2048 */
  CHECK(refused("{\"prompt\":\"big\",\"width\":2048,\"height\":256}", "width", "out_of_range", "big-1"));
  CHECK(refused("{\"prompt\":\"big\",\"width\":256,\"height\":1056}", "height", "out_of_range", "big-2"));
  /* a mask the worker would have resized on its own */
  sprintf(body, "{\"kind\":\"inpaint\",\"prompt\":\"m\",\"width\":32,\"height\":32,\"steps\":1,\"image\":{\"data\":\"%s\"},"
                "\"mask\":{\"data\":\"%s\"}}", png64, png32);
  CHECK(refused(body, "mask", "conflict", "mask-1"));
  /* a JPEG that is not one: the JPEG signature, then garbage */
  static const unsigned char bad[] = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0, 1, 2, 3, 4, 5,
                                      0xFF, 0xC0, 0x00, 0x03, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42};
  char bad64[64];
  EVP_EncodeBlock((unsigned char *)bad64, bad, sizeof bad);
  sprintf(body, "{\"kind\":\"img2img\",\"prompt\":\"j\",\"width\":32,\"height\":32,\"image\":{\"data\":\"%s\"}}", bad64);
  CHECK(refused(body, "image", "invalid_image", "jpeg-1"));
  /* outpainting: an image that does not fit the canvas at its offset */
  sprintf(body, "{\"kind\":\"outpaint\",\"prompt\":\"o\",\"width\":64,\"height\":64,\"image\":{\"data\":\"%s\"},"
                "\"outpaint\":{\"offset_x\":32,\"offset_y\":0}}", png64);
  CHECK(refused(body, "outpaint", "conflict", "outpaint-1"));
  /* the same inputs in a form the worker runs: accepted, and they run */
  sprintf(body, "{\"kind\":\"inpaint\",\"prompt\":\"m\",\"width\":32,\"height\":32,\"steps\":1,\"prior\":{\"steps\":1},"
                "\"image\":{\"data\":\"%s\"},\"mask\":{\"data\":\"%s\"}}", png64, png64);
  CHECK(runs(body));
  sprintf(body, "{\"kind\":\"img2img\",\"prompt\":\"j\",\"width\":32,\"height\":32,\"steps\":1,\"prior\":{\"steps\":1},"
                "\"image\":{\"data\":\"%s\"}}", jpg64);
  CHECK(runs(body));
  /* the worker runs the same check: such a job put on the queue past the HTTP API fails */
  sprintf(body, "{\"id\":\"j-worker-mask\",\"kind\":\"inpaint\",\"prompt\":\"m\",\"width\":32,\"height\":32,"
                "\"steps\":1,\"image\":{\"data\":\"%s\"},\"mask\":{\"data\":\"%s\"}}", png64, png32);
  pw_job job;
  pw_error err;
  submit_outcome outcome;
  char existing[80];
  CHECK(pw_job_from_json(body, strlen(body), &job, &err) == 0);
  CHECK_OK(jobs_submit(cfg, &job, "alice", 1000, "x", NULL, 0, &outcome, existing, sizeof existing));
  pw_job_free(&job);
  h_resp r;
  bool failed = false;
  for (double end = h_now() + 60; !failed && h_now() < end; usleep(100000)) {
    CHECK(h_http(port, "GET", "/v1/jobs/j-worker-mask", ALICE, NULL, 0, 10, &r) == 0);
    failed = h_str_is(r.json, "status", "failed");
    if (failed) CHECK_MSG(h_str_is(r.json, "error.code", "invalid_image"), "%s", r.body);
    h_resp_free(&r);
  }
  CHECK(failed);
  free(body);
done:
  free(png64), free(png32), free(jpg64);
}

/* /readyz's fleet: `want_live` workers, `want_mismatch` of them with other limits. */
static bool fleet_is(int want_live, int want_mismatch, const char *reason_part) {
  h_resp r;
  bool ok = false;
  for (double end = h_now() + 60; !ok && h_now() < end; usleep(200000)) {
    if (h_http(port, "GET", "/readyz", NULL, NULL, 0, 10, &r)) continue;
    json_t *fleet = json_object_get(r.json, "fleet"), *mm = json_object_get(fleet, "mismatch");
    ok = r.status == 200 && json_integer_value(json_object_get(fleet, "workers")) == want_live &&
         (int)json_array_size(mm) == want_mismatch;
    if (ok && want_mismatch) {
      const char *why = json_string_value(json_object_get(json_array_get(mm, 0), "reason"));
      ok = why && strstr(why, reason_part);
    }
    if (!ok && h_now() + 0.2 >= end) fprintf(stderr, "readyz: %d %s\n", r.status, r.body ? r.body : "");
    h_resp_free(&r);
  }
  return ok;
}

static long long metric(const char *name) {
  h_resp r;
  long long v = -1;
  if (h_http(port, "GET", "/metrics", NULL, NULL, 0, 10, &r) == 0 && r.body) {
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(r.body, pat);
    if (p) v = strtoll(p + strlen(pat), NULL, 10);
  }
  h_resp_free(&r);
  return v;
}

static void test_fleet(void) {
  CHECK(fleet_is(1, 0, NULL)); /* the harness's worker: the defaults, like the scheduler */
  CHECK(metric("paella_fleet_limits_mismatch") == 0);
  char queue[128], storage[400], log[300];
  snprintf(queue, sizeof queue, "redis://127.0.0.1:%d/0", h_redis_port);
  snprintf(storage, sizeof storage, "file://%s/outputs", h_dir);
  snprintf(log, sizeof log, "%s/worker-512.log", h_dir);
  char *argv[] = {PAELLA_BINARY_DIR "/paella-worker", "--queue", queue, "--storage", storage, "--max-side", "512",
                  "--lease-ms", "5000", NULL};
  pid_t small = h_spawn(argv, log);
  CHECK(fleet_is(2, 1, "max_side 512"));
  CHECK(metric("paella_fleet_workers") == 2 && metric("paella_fleet_limits_mismatch") == 1);
  h_kill(&small); /* its advertisement lapses: 3 beats of 5 s */
  CHECK(fleet_is(1, 0, NULL));
}

/* 0 when a TCP connection to ip:port is accepted. */
static int tcp_connect(const char *ip, int p) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
  inet_pton(AF_INET, ip, &a.sin_addr);
  int rc = s >= 0 ? connect(s, (struct sockaddr *)&a, sizeof a) : -1;
  if (s >= 0) close(s);
  return rc;
}

static void test_metrics_listen(int metrics_port) {
  h_resp r;
  bool up = false;
  for (double end = h_now() + 60; !up && h_now() < end; usleep(100000)) {
    up = h_http(metrics_port, "GET", "/healthz", NULL, NULL, 0, 5, &r) == 0 && r.status == 200;
    h_resp_free(&r);
  }
  CHECK(up);
  CHECK(tcp_connect("127.0.0.1", metrics_port) == 0);
  /* 127.0.0.2 reaches this host's loopback too; only a socket bound to every address answers it */
  CHECK(tcp_connect("127.0.0.2", metrics_port) != 0);
}

/* The access log's line for a request id, or NULL (a new reference). */
static json_t *log_line(const char *request_id) {
  for (double end = h_now() + 60; h_now() < end; usleep(100000)) {
    FILE *f = fopen(access_path, "r");
    char line[4096];
    json_t *found = NULL;
    while (f && !found && fgets(line, sizeof line, f)) {
      json_t *j = json_loads(line, 0, NULL);
      if (h_str_is(j, "request_id", request_id)) found = j;
      else json_decref(j);
    }
    if (f) fclose(f);
    if (found) return found;
  }
  return NULL;
}

static void check_line(const char *request_id, const char *method, const char *path, int status, const char *key) {
  json_t *j = log_line(request_id);
  CHECK_MSG(j != NULL, "no access log line for %s", request_id);
  if (!j) return;
  CHECK(h_str_is(j, "method", method) && h_str_is(j, "path", path) && h_str_is(j, "key", key));
  CHECK_MSG(json_integer_value(json_object_get(j, "status")) == status, "%s: status %lld, want %d", request_id,
            (long long)json_integer_value(json_object_get(j, "status")), status);
  CHECK(json_integer_value(json_object_get(j, "bytes")) > 0);
  CHECK(json_number_value(json_object_get(j, "duration_ms")) >= 0);
  CHECK(h_str_is(j, "remote", "127.0.0.1"));
  const char *t = h_str(j, "time");
  CHECK(t && strlen(t) == 24 && t[10] == 'T' && t[23] == 'Z');
  json_decref(j);
}

static void test_access_log(void) {
  h_resp r;
  CHECK(h_http(port, "GET", "/healthz", "X-Request-Id: ok-1\r\n", NULL, 0, 10, &r) == 0 && r.status == 200);
  CHECK(r.head && strstr(r.head, "X-Request-Id: ok-1"));
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/v1/jobs/j-none%2Dx?limit=1", ALICE "X-Request-Id: nf-1\r\n", NULL, 0, 10, &r) == 0 &&
        r.status == 404);
  h_resp_free(&r);
  CHECK(h_http(port, "GET", "/v1/jobs", "X-Request-Id: auth-1\r\n", NULL, 0, 10, &r) == 0 && r.status == 401);
  h_resp_free(&r);
  check_line("ok-1", "GET", "/healthz", 200, "");
  check_line("nf-1", "GET", "/v1/jobs/j-none%2Dx?limit=1", 404, "alice");
  check_line("auth-1", "GET", "/v1/jobs", 401, "");
  check_line("big-1", "POST", "/v1/jobs", 422, "alice");
  /* a generated id when the client sends none (or an unusable one), echoed in the reply */
  CHECK(h_http(port, "GET", "/healthz", "X-Request-Id: bad id \"\r\n", NULL, 0, 10, &r) == 0 && r.status == 200);
  const char *rid = r.head ? strstr(r.head, "X-Request-Id: ") : NULL;
  char gen[80] = "";
  if (rid) sscanf(rid + 14, "%64[0-9a-f]", gen);
  CHECK(strlen(gen) == 24);
  h_resp_free(&r);
  if (gen[0]) check_line(gen, "GET", "/healthz", 200, "");
  /* 5xx: Redis gone */
  h_kill(&h_redis_pid);
  CHECK(h_http(port, "GET", "/v1/jobs/j-abc", ALICE "X-Request-Id: down-1\r\n", NULL, 0, 30, &r) == 0 &&
        r.status == 503);
  h_resp_free(&r);
  check_line("down-1", "GET", "/v1/jobs/j-abc", 503, "alice");
  /* never the secret */
  FILE *f = fopen(access_path, "r");
  char line[4096];
  bool secret = false;
  while (f && fgets(line, sizeof line, f)) secret |= strstr(line, "alice-token") != NULL;
  if (f) fclose(f);
  CHECK(f && !secret);
}

int main(void) {
  if (harness_start_redis()) {
    fprintf(stderr, "cannot start redis-server\n");
    return 1;
  }
  sched_config c;
  harness_config(&c);
  add_key(&c, "alice", "alice-token");
  snprintf(access_path, sizeof access_path, "%s/access.log", h_dir);
  snprintf(c.access_log, sizeof c.access_log, "%s", access_path);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK(tracker_start(&c, &t) == PA_OK && sched_server_start(&c, &s) == PA_OK);
  int metrics_port = h_free_port();
  char flag[64];
  snprintf(flag, sizeof flag, "--metrics-listen=127.0.0.1:%d", metrics_port);
  CHECK(harness_start_worker(flag) == 0);
  if (s && t) {
    port = sched_server_port(s);
    test_refused_at_submission(&c);
    test_metrics_listen(metrics_port);
    test_fleet();
    test_access_log(); /* last: it stops Redis */
  }
  sched_server_stop(s);
  tracker_stop(t);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  TEST_END();
}
