/* rediss:// (worker/redis_tls.c) against a real redis-server with TLS, a throwaway CA and a
 * server certificate for 127.0.0.1 (IP SAN) made here with the openssl CLI, a password and
 * mutual TLS (--tls-auth-clients yes): the scheduler is ready and a job runs through a worker
 * over TLS. A wrong CA, a host name the certificate does not name, no client certificate and
 * the plaintext port are each a clear TLS error on /readyz, never a plaintext fallback.
 * tls_insecure=1 and $PAELLA_REDIS_CA work as documented. */
#include "tests/scheduler/harness.h"

#define JSON_CT "Content-Type: application/json\r\n"
#define SMALL "{\"prompt\":\"a red fox\",\"width\":32,\"height\":32,\"steps\":2,\"prior\":{\"steps\":2}}"

static char tls_dir[64];

static void remove_tls_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tls_dir);
  if (tls_dir[0] && system(cmd)) fprintf(stderr, "cannot remove %s\n", tls_dir);
}

/* ca.pem (+ key), srv.pem for IP 127.0.0.1 signed by it, cli.pem (client cert) signed by it,
 * and other.pem: an unrelated CA. EC keys: fast on a loaded machine. */
static int make_certs(void) {
  snprintf(tls_dir, sizeof tls_dir, "/tmp/paella-tls-XXXXXX");
  if (!mkdtemp(tls_dir)) return -1;
  atexit(remove_tls_dir);
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "set -e; cd %s; K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';"
           "openssl req -x509 $K -keyout ca.key -out ca.pem -days 2 -subj /CN=paella-test-ca;"
           "openssl req -x509 $K -keyout other.key -out other.pem -days 2 -subj /CN=paella-other-ca;"
           "printf 'subjectAltName=IP:127.0.0.1\\n' > srv.ext;"
           "openssl req $K -keyout srv.key -out srv.csr -subj /CN=paella-test-redis;"
           "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile srv.ext;"
           "openssl req $K -keyout cli.key -out cli.csr -subj /CN=paella-test-client;"
           "openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cli.pem -days 2"
           " >/dev/null 2>&1",
           tls_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static int readyz(const sched_config *c, h_resp *r) {
  sched_server *s = NULL;
  int rc = sched_server_start(c, &s);
  if (rc == PA_OK) rc = h_http(sched_server_port(s), "GET", "/readyz", NULL, NULL, 0, 30, r);
  sched_server_stop(s);
  sched_redis_drop();
  return rc;
}

/* A scheduler whose --queue is `url` answers /readyz `status`, its body naming `reason`. */
static void check_ready(const char *url, int status, const char *reason) {
  sched_config c;
  harness_config(&c);
  CHECK_OK(sched_config_set_queue(&c, url));
  h_resp r;
  CHECK(readyz(&c, &r) == 0);
  CHECK_MSG(r.status == status && (!reason || (r.body && strstr(r.body, reason))), "%s: %d %s", url, r.status,
            r.body ? r.body : "");
  CHECK_MSG(!r.body || !strstr(r.body, "tlspw"), "the password leaked: %s", r.body);
  h_resp_free(&r);
}

static bool wait_succeeded(int port, const char *id, double timeout_s) {
  char path[128];
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  for (double end = h_now() + timeout_s; h_now() < end; usleep(100000)) {
    h_resp r;
    bool done = h_http(port, "GET", path, NULL, NULL, 0, 10, &r) == 0 && h_str_is(r.json, "status", "succeeded");
    h_resp_free(&r);
    if (done) return true;
  }
  return false;
}

static void test_parse(void) {
  pa_redis_url r;
  CHECK_OK(pa_redis_url_parse("rediss://:pw@r.example:6380/1?tls_ca=%2Fca.pem&tls_cert=c.pem&tls_key=k.pem", &r));
  CHECK(r.tls && !r.tls_insecure && !strcmp(r.tls_ca, "/ca.pem") && !strcmp(r.tls_cert, "c.pem") &&
        !strcmp(r.tls_key, "k.pem") && r.port == 6380 && r.db == 1 && !strcmp(r.password, "pw"));
  CHECK_OK(pa_redis_url_parse("rediss://r.example?tls_insecure=1", &r));
  CHECK(r.tls && r.tls_insecure && !r.tls_ca[0]);
  CHECK(pa_redis_url_parse("redis://r.example?tls_ca=/ca.pem", &r) == PA_ERR_INVALID && strstr(pa_errmsg(), "rediss"));
  CHECK(pa_redis_url_parse("rediss://r.example?tls_cert=c.pem", &r) == PA_ERR_INVALID && strstr(pa_errmsg(), "tls_key"));
  CHECK(pa_redis_url_parse("rediss://r.example?tls_insecure=yes", &r) == PA_ERR_INVALID);
  setenv("PAELLA_REDIS_CA", "/env-ca.pem", 1);
  CHECK_OK(pa_redis_url_parse("rediss://r.example", &r));
  CHECK(!strcmp(r.tls_ca, "/env-ca.pem"));
  CHECK_OK(pa_redis_url_parse("rediss://r.example?tls_ca=/url.pem", &r));
  CHECK(!strcmp(r.tls_ca, "/url.pem"));
  unsetenv("PAELLA_REDIS_CA");
}

/* A frozen Redis (SIGSTOP): hiredis' reply timeout holds over the bridge (an error, not a hang),
 * and pa_redis_free returns (the bridge thread, idle in poll, ends and is joined). */
static void test_frozen(const char *url) {
  pa_redis_url r;
  redisContext *ctx = NULL;
  CHECK_OK(pa_redis_url_parse(url, &r));
  CHECK_OK(pa_redis_connect(&r, 30000, 1500, &ctx));
  if (!ctx) return;
  kill(h_redis_pid, SIGSTOP);
  double t0 = h_now();
  redisReply *rep = redisCommand(ctx, "PING");
  double took = h_now() - t0;
  kill(h_redis_pid, SIGCONT);
  CHECK_MSG(!rep && ctx->err, "PING to a frozen Redis answered");
  CHECK_MSG(took >= 1.0 && took < 60, "the 1.5 s reply timeout took %.1f s", took);
  if (rep) freeReplyObject(rep);
  t0 = h_now();
  pa_redis_free(ctx);
  CHECK_MSG(h_now() - t0 < 30, "pa_redis_free took %.1f s", h_now() - t0);
}

int main(void) {
  test_parse();
  if (make_certs()) {
    fprintf(stderr, "cannot make certificates with the openssl CLI\n");
    return 1;
  }
  int tls_port = h_free_port();
  char port[16], cert[128], key[128], ca[128];
  snprintf(port, sizeof port, "%d", tls_port);
  snprintf(cert, sizeof cert, "%s/srv.pem", tls_dir);
  snprintf(key, sizeof key, "%s/srv.key", tls_dir);
  snprintf(ca, sizeof ca, "%s/ca.pem", tls_dir);
  /* The plaintext port stays for the harness' start check; everything under test uses TLS. */
  const char *extra[] = {"--requirepass", "tlspw", "--tls-port", port, "--tls-cert-file", cert, "--tls-key-file", key,
                         "--tls-ca-cert-file", ca, "--tls-auth-clients", "yes", NULL};
  h_redis_extra = extra;
  if (harness_start_redis()) {
    fprintf(stderr, "cannot start redis-server with TLS\n");
    return 1;
  }
  char url[512];
  snprintf(url, sizeof url, "rediss://:tlspw@127.0.0.1:%d/0?tls_ca=%s&tls_cert=%s/cli.pem&tls_key=%s/cli.key", tls_port,
           ca, tls_dir, tls_dir);
  sched_config c;
  harness_config(&c);
  CHECK_OK(sched_config_set_queue(&c, url));
  snprintf(h_queue_url, sizeof h_queue_url, "%s", url);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK_OK(tracker_start(&c, &t));
  CHECK_OK(sched_server_start(&c, &s));
  CHECK(harness_start_worker(NULL) == 0);
  if (s) {
    int p = sched_server_port(s);
    h_resp r;
    CHECK(h_http(p, "GET", "/readyz", NULL, NULL, 0, 30, &r) == 0 && r.status == 200);
    h_resp_free(&r);
    CHECK(h_http(p, "POST", "/v1/jobs", JSON_CT, SMALL, strlen(SMALL), 60, &r) == 0 && r.status == 202);
    char id[64] = "";
    if (h_str(r.json, "id")) snprintf(id, sizeof id, "%s", h_str(r.json, "id"));
    h_resp_free(&r);
    CHECK_MSG(id[0] && wait_succeeded(p, id, 240), "job %s did not succeed over rediss://", id);
    /* The connections really are TLS: Redis counts them by its TLS listener's clients. */
    char laddr[64];
    snprintf(laddr, sizeof laddr, "laddr=127.0.0.1:%d ", tls_port);
    redisReply *info = sched_cmdf(&c, "CLIENT INFO");
    CHECK_MSG(info && info->type == REDIS_REPLY_STRING && strstr(info->str, laddr),
              "the scheduler's connection is not on the TLS port: %s", info && info->str ? info->str : "none");
    if (info) freeReplyObject(info);
  }
  test_frozen(h_queue_url);
  char mtls[256];
  snprintf(mtls, sizeof mtls, "tls_cert=%s/cli.pem&tls_key=%s/cli.key", tls_dir, tls_dir);
  /* A CA that did not sign the server's certificate: a clear verification error. */
  snprintf(url, sizeof url, "rediss://:tlspw@127.0.0.1:%d/0?tls_ca=%s/other.pem&%s", tls_port, tls_dir, mtls);
  check_ready(url, 503, "TLS verification of the server certificate failed");
  /* The certificate names 127.0.0.1 only: "localhost" is a host name mismatch. */
  snprintf(url, sizeof url, "rediss://:tlspw@localhost:%d/0?tls_ca=%s&%s", tls_port, ca, mtls);
  check_ready(url, 503, "TLS verification of the server certificate failed: hostname mismatch");
  /* No client certificate while Redis demands one: TLS 1.3 refuses it after the handshake,
   * by a reset the bridge reports (hiredis alone would only say the server closed). */
  snprintf(url, sizeof url, "rediss://:tlspw@127.0.0.1:%d/0?tls_ca=%s", tls_port, ca);
  check_ready(url, 503, "(TLS: "); /* a reset, or the alert "certificate required" */
  /* rediss:// to the plaintext port: a failed (timed out) handshake, never a plaintext session. */
  snprintf(url, sizeof url, "rediss://:tlspw@127.0.0.1:%d/0?tls_ca=%s&%s", h_redis_port, ca, mtls);
  check_ready(url, 503, "TLS handshake");
  /* tls_insecure=1 (unsafe) skips verification: the wrong CA is then accepted. */
  snprintf(url, sizeof url, "rediss://:tlspw@127.0.0.1:%d/0?tls_ca=%s/other.pem&tls_insecure=1&%s", tls_port, tls_dir,
           mtls);
  check_ready(url, 200, NULL);
  /* $PAELLA_REDIS_CA stands in for tls_ca; a wrong password is still Redis' WRONGPASS. */
  setenv("PAELLA_REDIS_CA", ca, 1);
  snprintf(url, sizeof url, "rediss://:tlspw@127.0.0.1:%d/0?%s", tls_port, mtls);
  check_ready(url, 200, NULL);
  snprintf(url, sizeof url, "rediss://:wrongpw@127.0.0.1:%d/0?%s", tls_port, mtls);
  check_ready(url, 503, "WRONGPASS");
  unsetenv("PAELLA_REDIS_CA");
  harness_stop_stack(t, s);
  TEST_END();
}
