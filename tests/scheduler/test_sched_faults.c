/* The scheduler under faults: a flood of idle connections (thousands, past select()'s 1024
 * descriptors) while /healthz must keep answering; the per-client connection cap and the idle
 * timeout; routing on the raw path (%00 and %2F inside an id); Redis frozen with SIGSTOP
 * while /readyz and POST /v1/jobs must answer 503 within 2 s. A real redis-server, the
 * scheduler in this process, no worker (jobs stay queued). */
#include <sys/resource.h>

#include "tests/scheduler/harness.h"

#define JSON_CT "Content-Type: application/json\r\n"
#define SMALL "{\"prompt\":\"a red fox\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}}"

static int get_status(int port, const char *method, const char *path, double timeout_s) {
  h_resp r;
  int status = h_http(port, method, path, method[0] == 'P' ? JSON_CT : NULL, method[0] == 'P' ? SMALL : NULL,
                      method[0] == 'P' ? strlen(SMALL) : 0, timeout_s, &r) == 0
                   ? r.status
                   : -1;
  h_resp_free(&r);
  return status;
}

static bool wait_connections(const sched_server *s, int want, bool at_least, double timeout_s) {
  for (double end = h_now() + timeout_s; h_now() < end; usleep(20000)) {
    int n = sched_server_connections(s);
    if (at_least ? n >= want : n == want) return true;
  }
  return false;
}

/* Opens n idle connections from the given source address; returns how many connected. */
static int hold(int port, const char *src_ip, int *fds, int n) {
  int ok = 0;
  for (int i = 0; i < n; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in src = {.sin_family = AF_INET};
    inet_pton(AF_INET, src_ip, &src.sin_addr);
    if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&src, sizeof src) ||
        connect(fds[i], (struct sockaddr *)&a, sizeof a)) {
      if (fds[i] >= 0) close(fds[i]);
      fds[i] = -1;
      continue;
    }
    ok++;
  }
  return ok;
}

static void release(int *fds, int n) {
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) close(fds[i]);
}

/* Finding 1: 1,030 idle connections used to lock everyone out (select() and FD_SETSIZE). */
static void test_flood(const sched_config *base) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  /* both ends live in this process: two descriptors per connection */
  int n = (int)((rl.rlim_cur - 300) / 2);
  if (n > 5000) n = 5000;
  CHECK_MSG(n > 1100, "the descriptor limit %llu is too low for the flood", (unsigned long long)rl.rlim_cur);
  sched_config c = *base;
  c.max_per_ip = n + 100;
  c.idle_timeout_s = 600; /* the flood must outlive a slow machine's setup */
  sched_server *s = NULL;
  CHECK_OK(sched_server_start(&c, &s));
  if (!s) return;
  int port = sched_server_port(s);
  int *fds = calloc((size_t)n, sizeof *fds);
  double t0 = h_now();
  int held = hold(port, "127.0.0.1", fds, n);
  CHECK_MSG(held == n, "%d of %d connections made", held, n);
  CHECK_MSG(wait_connections(s, n, true, 180), "the server holds %d of %d", sched_server_connections(s), n);
  double setup = h_now() - t0;
  t0 = h_now();
  int health = get_status(port, "GET", "/healthz", 30), ready = get_status(port, "GET", "/readyz", 30);
  double answer = h_now() - t0;
  CHECK_MSG(health == 200 && ready == 200, "with %d idle connections: /healthz %d, /readyz %d", n, health, ready);
  printf("flood: %d idle connections held (%.1f s to open), /healthz and /readyz answered in %.3f s\n", n, setup,
         answer);
  release(fds, n);
  free(fds);
  CHECK_MSG(wait_connections(s, 0, false, 120), "%d connections left", sched_server_connections(s));
  sched_server_stop(s);
}

/* One client address cannot take every connection; a silent connection is closed. */
static void test_per_ip_and_idle(const sched_config *base) {
  enum { CAP = 20 };
  sched_config c = *base;
  c.max_per_ip = CAP;
  c.idle_timeout_s = 2;
  sched_server *s = NULL;
  CHECK_OK(sched_server_start(&c, &s));
  if (!s) return;
  int port = sched_server_port(s), fds[CAP];
  CHECK(hold(port, "127.0.0.1", fds, CAP) == CAP);
  CHECK(wait_connections(s, CAP, true, 60));
  /* the idle timeout may already be closing them on a slow machine: only a refusal while all
   * CAP are still open proves the cap */
  int same = get_status(port, "GET", "/healthz", 10);
  bool still_full = sched_server_connections(s) >= CAP;
  if (still_full) CHECK_MSG(same == -1, "a client over its cap got %d", same);
  h_src_ip = "127.0.0.2";
  CHECK(get_status(port, "GET", "/healthz", 10) == 200);
  h_src_ip = NULL;
  CHECK_MSG(wait_connections(s, 0, false, 60), "idle connections not closed: %d open", sched_server_connections(s));
  char b;
  int closed = 0;
  for (int i = 0; i < CAP; i++) closed += recv(fds[i], &b, 1, MSG_DONTWAIT) == 0;
  CHECK_MSG(closed == CAP, "%d of %d idle connections saw EOF", closed, CAP);
  release(fds, CAP);
  CHECK(get_status(port, "GET", "/healthz", 10) == 200);
  sched_server_stop(s);
}

/* Finding 7: the path is split before it is decoded. */
static void test_raw_path(int port) {
  h_resp r;
  CHECK(h_http(port, "POST", "/v1/jobs", JSON_CT, SMALL, strlen(SMALL), 30, &r) == 0 && r.status == 202);
  char id[64] = "", path[200];
  if (h_str(r.json, "id")) snprintf(id, sizeof id, "%s", h_str(r.json, "id"));
  h_resp_free(&r);
  CHECK(id[0]);
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  CHECK(get_status(port, "GET", path, 10) == 200);
  snprintf(path, sizeof path, "/v1/jobs/%s%%00x", id);
  CHECK_MSG(get_status(port, "GET", path, 10) == 404, "%s", path);
  snprintf(path, sizeof path, "/v1/jobs/%s%%2Fcancel", id);
  CHECK_MSG(get_status(port, "POST", path, 10) == 404, "%s", path);
  snprintf(path, sizeof path, "/v1/jobs/%s%%2fevents", id);
  CHECK_MSG(get_status(port, "GET", path, 10) == 404, "%s", path);
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && h_str_is(r.json, "status", "queued"));
  h_resp_free(&r);
  /* an encoded character that is legal in an id still reaches the job */
  snprintf(path, sizeof path, "/v1/jobs/%%%02X%s", (unsigned char)id[0], id + 1);
  CHECK_MSG(get_status(port, "GET", path, 10) == 200, "%s", path);
  CHECK(get_status(port, "GET", "/healthz%00", 10) == 404);
  CHECK(get_status(port, "GET", "/v1%2Fjobs", 10) == 404);
  CHECK(get_status(port, "GET", "/v1/jobs/a%zz", 10) == 404);
}

/* Finding 8: webhooks need a secret the workers have (or the operator's consent to unsigned
 * delivery); the workers' attempt records are served per job. */
static void test_webhook_secrets_and_deliveries(sched_config *c, int port) {
  const char *hooked = "{\"prompt\":\"x\",\"width\":32,\"height\":32,\"steps\":2,\"webhook\":{\"url\":"
                       "\"https://example.com/h\",\"secret_id\":\"%s\"}}";
  char body[512];
  h_resp r;
  snprintf(body, sizeof body, hooked, "nope");
  CHECK(h_http(port, "POST", "/v1/jobs", JSON_CT, body, strlen(body), 30, &r) == 0 && r.status == 422 &&
        h_str_is(r.json, "error.field", "webhook.secret_id"));
  h_resp_free(&r);
  setenv("PAELLA_WEBHOOK_SECRET_SCHED_OK", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1);
  snprintf(body, sizeof body, hooked, "sched-ok");
  CHECK(h_http(port, "POST", "/v1/jobs", JSON_CT, body, strlen(body), 30, &r) == 0 && r.status == 202);
  char id[64] = "";
  if (h_str(r.json, "id")) snprintf(id, sizeof id, "%s", h_str(r.json, "id"));
  h_resp_free(&r);
  c->webhook_allow_unsigned = true; /* read per request */
  snprintf(body, sizeof body, hooked, "nope");
  CHECK(h_http(port, "POST", "/v1/jobs", JSON_CT, body, strlen(body), 30, &r) == 0 && r.status == 202);
  h_resp_free(&r);
  c->webhook_allow_unsigned = false;
  /* a worker's attempt records (worker/courier.c writes them) */
  redisContext *rc = sched_redis_connect(c, 2000);
  CHECK(rc != NULL);
  if (rc) {
    freeReplyObject(redisCommand(rc, "RPUSH paella:job:%s:deliveries %s %s", id,
                                 "{\"webhook_id\":\"x.completed\",\"attempt\":1,\"result\":\"failed\"}",
                                 "{\"webhook_id\":\"x.completed\",\"attempt\":2,\"result\":\"delivered\"}"));
    redisFree(rc);
  }
  char path[200];
  snprintf(path, sizeof path, "/v1/jobs/%s/deliveries", id);
  CHECK(h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && r.status == 200);
  json_t *data = json_object_get(r.json, "data");
  CHECK_MSG(json_array_size(data) == 2 && h_str_is(json_array_get(data, 1), "result", "delivered"), "%s", r.body);
  h_resp_free(&r);
  CHECK(get_status(port, "GET", "/v1/jobs/j-none/deliveries", 10) == 404);
}

/* Finding 5: Redis frozen (SIGSTOP): 503 within 2 s, then ready again after SIGCONT. */
static void test_frozen_redis(int port) {
  CHECK(get_status(port, "GET", "/readyz", 10) == 200);
  CHECK(kill(h_redis_pid, SIGSTOP) == 0);
  double t0 = h_now();
  int ready = get_status(port, "GET", "/readyz", 30);
  double t_ready = h_now() - t0;
  t0 = h_now();
  int submit = get_status(port, "POST", "/v1/jobs", 30);
  double t_submit = h_now() - t0;
  int health = get_status(port, "GET", "/healthz", 30);
  CHECK(kill(h_redis_pid, SIGCONT) == 0);
  printf("redis frozen: /readyz %d in %.3f s, POST /v1/jobs %d in %.3f s, /healthz %d\n", ready, t_ready, submit,
         t_submit, health);
  CHECK_MSG(ready == 503 && t_ready < 2.0, "/readyz %d after %.3f s", ready, t_ready);
  CHECK_MSG(submit == 503 && t_submit < 2.0, "POST /v1/jobs %d after %.3f s", submit, t_submit);
  CHECK(health == 200); /* liveness does not depend on Redis */
  bool back = false;
  for (double end = h_now() + 60; !back && h_now() < end; usleep(100000))
    back = get_status(port, "GET", "/readyz", 10) == 200;
  CHECK_MSG(back, "/readyz not 200 after SIGCONT");
}

int main(void) {
  if (harness_start_redis()) {
    fprintf(stderr, "cannot start redis-server\n");
    return 1;
  }
  sched_config c;
  harness_config(&c);
  sched_server *s = NULL;
  CHECK_OK(sched_server_start(&c, &s));
  if (s) {
    int port = sched_server_port(s);
    test_raw_path(port);
    test_webhook_secrets_and_deliveries(&c, port);
    test_frozen_redis(port);
  }
  sched_server_stop(s);
  test_per_ip_and_idle(&c);
  test_flood(&c);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  TEST_END();
}
