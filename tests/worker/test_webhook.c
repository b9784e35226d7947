/* Webhooks: the Standard Webhooks test vector, delivery to a scripted receiver on loopback
 * (500, then 429 with Retry-After: 1, then 200; the same webhook-id each time, every signature
 * verified), the 410 stop, retry exhaustion, and the SSRF guard refusing internal targets. */
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>
#include <time.h>

#include "tests/test.h"
#include "tests/worker/http_stub.h"
#include "worker/webhook.h"

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void test_spec_vector(void) {
  char sig[64];
  const char *body = "{\"test\": 2432232314}";
  CHECK_OK(pa_webhook_sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body),
                           sig, sizeof sig));
  CHECK_MSG(strcmp(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=") == 0, "%s", sig);
  /* The whsec_ prefix is optional; other timestamps, ids or bodies change the signature. */
  char sig2[64];
  CHECK_OK(pa_webhook_sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                           1614265330, body, strlen(body), sig2, sizeof sig2));
  CHECK(strcmp(sig, sig2) == 0);
  CHECK_OK(pa_webhook_sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, strlen(body),
                           sig2, sizeof sig2));
  CHECK(strcmp(sig, sig2) != 0);
  CHECK(pa_webhook_sign("whsec_not base64!", "m", 1, "", 0, sig2, sizeof sig2) == PA_ERR_INVALID);
  CHECK(pa_webhook_sign("whsec_", "m", 1, "", 0, sig2, sizeof sig2) == PA_ERR_INVALID);
  CHECK(pa_webhook_sign(SECRET, "m", 1, "", 0, sig2, 20) == PA_ERR_INVALID);
  /* Padded secrets decode to their exact length: "whsec_YWJj" is key "abc". */
  unsigned char mac[32];
  unsigned int ml = 0;
  HMAC(EVP_sha256(), "ab", 2, (const unsigned char *)"m.1.x", 5, mac, &ml);
  char want[64] = "v1,";
  EVP_EncodeBlock((unsigned char *)want + 3, mac, 32);
  CHECK_OK(pa_webhook_sign("whsec_YWI=", "m", 1, "x", 1, sig2, sizeof sig2));
  CHECK_MSG(strcmp(sig2, want) == 0, "%s vs %s", sig2, want);
}

/* The receiver's check, written independently of pa_webhook_sign: HMAC-SHA256 with the key
 * bytes over "id.timestamp.body", compared with the v1 signature. */
static bool verify(const stub_request *r, const char *id, long long *ts_out) {
  static const char key_b64[] = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  unsigned char key[32], mac[32];
  int klen = EVP_DecodeBlock(key, (const unsigned char *)key_b64, (int)strlen(key_b64));
  char *hid = stub_header(r->head, "webhook-id", 0), *hts = stub_header(r->head, "webhook-timestamp", 0);
  char *hsig = stub_header(r->head, "webhook-signature", 0);
  bool ok = false;
  if (hid && hts && hsig && strcmp(hid, id) == 0) {
    size_t n = strlen(hid) + strlen(hts) + r->body_len + 3;
    char *msg = malloc(n);
    int m = snprintf(msg, n, "%s.%s.", hid, hts);
    memcpy(msg + m, r->body, r->body_len);
    unsigned int ml = 0;
    HMAC(EVP_sha256(), key, klen, (unsigned char *)msg, (size_t)m + r->body_len, mac, &ml);
    char want[64] = "v1,";
    EVP_EncodeBlock((unsigned char *)want + 3, mac, 32);
    ok = strcmp(hsig, want) == 0;
    *ts_out = atoll(hts);
    free(msg);
  }
  free(hid);
  free(hts);
  free(hsig);
  return ok;
}

static void test_retry_then_deliver(void) {
  stub_response script[] = {{500, NULL, 0}, {429, "Retry-After: 1\r\n", 0}, {200, NULL, 0}};
  http_stub s;
  CHECK(stub_start(&s, script, 3) == 0);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hooks/paella", s.port);
  const char *body = "{\"type\":\"completed\",\"job_id\":\"0f3a\",\"images\":[\"s3://b/0f3a/0.png\"]}";
  pa_webhook_options o = {.max_attempts = 5, .base_delay_ms = 50, .max_delay_ms = 3000,
                          .timeout_ms = 2000, .allow_private = true};
  pa_webhook_report rep;
  double t0 = now_s();
  CHECK_OK(pa_webhook_deliver(url, SECRET, "0f3a.completed", body, &o, &rep));
  double dt = now_s() - t0;
  stub_stop(&s);
  CHECK(rep.delivered && rep.attempts == 3 && rep.last_status == 200);
  CHECK(s.n_req == 3);
  /* Retry-After: 1 honoured after the 429 (not the 100 ms backoff), and bounded. */
  if (s.n_req == 3) CHECK_MSG(s.req[2].at - s.req[1].at >= 0.95, "%.3f s", s.req[2].at - s.req[1].at);
  if (s.n_req >= 2) CHECK_MSG(s.req[1].at - s.req[0].at < 0.5, "%.3f s", s.req[1].at - s.req[0].at);
  CHECK_MSG(dt < 4.0, "%.3f s", dt);
  long long now = (long long)time(NULL);
  for (int i = 0; i < s.n_req; i++) {
    long long ts = 0;
    CHECK_MSG(verify(&s.req[i], "0f3a.completed", &ts), "request %d signature", i);
    CHECK(ts > now - 30 && ts <= now);
    CHECK(s.req[i].body_len == strlen(body) && memcmp(s.req[i].body, body, s.req[i].body_len) == 0);
    char *ct = stub_header(s.req[i].head, "Content-Type", 0);
    CHECK(ct && strcmp(ct, "application/json") == 0);
    free(ct);
    CHECK(strncmp(s.req[i].head, "POST /hooks/paella HTTP/1.1\r\n", 29) == 0);
  }
  stub_free(&s);
}

static void test_gone_stops(void) {
  stub_response script[] = {{410, NULL, 0}, {200, NULL, 0}};
  http_stub s;
  CHECK(stub_start(&s, script, 2) == 0);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/gone", s.port);
  pa_webhook_options o = {.max_attempts = 5, .base_delay_ms = 10, .allow_private = true};
  pa_webhook_report rep;
  CHECK(pa_webhook_deliver(url, SECRET, "j.failed", "{}", &o, &rep) == PA_ERR_NOTFOUND);
  stub_stop(&s);
  CHECK(rep.attempts == 1 && rep.last_status == 410 && !rep.delivered);
  CHECK(s.n_req == 1);
  stub_free(&s);
}

static void test_exhausted(void) {
  stub_response script[] = {{503, NULL, 0}};
  http_stub s;
  CHECK(stub_start(&s, script, 1) == 0);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
  pa_webhook_options o = {.max_attempts = 4, .base_delay_ms = 20, .max_delay_ms = 100, .allow_private = true};
  pa_webhook_report rep;
  CHECK(pa_webhook_deliver(url, SECRET, "j.progress.3", "{\"step\":3}", &o, &rep) == PA_ERR_IO);
  stub_stop(&s);
  CHECK(rep.attempts == 4 && rep.last_status == 503 && !rep.delivered);
  CHECK(s.n_req == 4);
  /* Backoff grows: 20, 40, 80 ms (+-20%). */
  if (s.n_req == 4) {
    double d1 = s.req[1].at - s.req[0].at, d3 = s.req[3].at - s.req[2].at;
    CHECK_MSG(d1 >= 0.015 && d3 >= 0.06 && d3 > d1, "%.3f %.3f", d1, d3);
  }
  for (int i = 0; i < s.n_req; i++) {
    char *id = stub_header(s.req[i].head, "webhook-id", 0);
    CHECK(id && strcmp(id, "j.progress.3") == 0);
    free(id);
  }
  stub_free(&s);
  /* Nobody listening: connection failures retry too, last_status 0. */
  stub_start(&s, script, 1);
  stub_stop(&s);
  stub_free(&s);
  o.max_attempts = 2;
  CHECK(pa_webhook_deliver(url, SECRET, "j.start", "{}", &o, &rep) == PA_ERR_IO);
  CHECK(rep.attempts == 2 && rep.last_status == 0 && !rep.delivered);
}

static void test_ssrf_guard(void) {
  static const char *internal[] = {
      "http://127.0.0.1:9/x",         "http://localhost:9/x",        "http://[::1]:9/x",
      "http://10.1.2.3/x",            "http://172.16.0.1/x",          "http://192.168.1.1/x",
      "http://169.254.169.254/latest", "http://0.0.0.0:9/",           "http://[fe80::1]/",
      "http://[fd00::1]/",            "http://[::ffff:127.0.0.1]/",   "http://224.0.0.1/",
      "http://100.64.0.1/",           "http://[64:ff9b::a00:1]/",     "http://[2002:c0a8:101::1]/",
      "http://[ff02::1]/",            "http://2130706433/",           "http://0x7f.1/",
  };
  pa_webhook_options o = {.max_attempts = 3, .base_delay_ms = 10};
  pa_webhook_report rep;
  for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++) {
    rep.attempts = -1;
    int rc = pa_webhook_deliver(internal[i], SECRET, "j.start", "{}", &o, &rep);
    CHECK_MSG(rc == PA_ERR_INVALID && rep.attempts == 0, "%s -> %d (%s), %d attempts", internal[i],
              rc, pa_errmsg(), rep.attempts);
  }
  CHECK(strstr(pa_errmsg(), "refusing") != NULL);
  /* Not http(s), or no secret. */
  CHECK(pa_webhook_deliver("file:///etc/passwd", SECRET, "j", "{}", &o, &rep) == PA_ERR_INVALID);
  CHECK(pa_webhook_deliver("gopher://example.com/", SECRET, "j", "{}", &o, &rep) == PA_ERR_INVALID);
  CHECK(pa_webhook_deliver("http://example.com/", "nope!", "j", "{}", &o, &rep) == PA_ERR_INVALID);
  CHECK(rep.attempts == 0);
  CHECK(pa_webhook_deliver("http://example.com/", SECRET, "j\r\nX-Evil: 1", "{}", &o, &rep) == PA_ERR_INVALID);
  /* With allow_private the same loopback receiver is reached. */
  stub_response ok = {204, NULL, 0};
  http_stub s;
  CHECK(stub_start(&s, &ok, 1) == 0);
  char url[128];
  snprintf(url, sizeof url, "http://localhost:%d/ok", s.port);
  o.allow_private = true;
  CHECK_OK(pa_webhook_deliver(url, SECRET, "j.start", "{}", &o, &rep));
  CHECK(rep.delivered && rep.attempts == 1 && rep.last_status == 204);
  stub_stop(&s);
  stub_free(&s);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  double t0 = now_s();
  test_spec_vector();
  test_retry_then_deliver();
  test_gone_stops();
  test_exhausted();
  test_ssrf_guard();
  CHECK_MSG(now_s() - t0 < 10.0, "took %.1f s", now_s() - t0);
  curl_global_cleanup();
  TEST_END();
}
