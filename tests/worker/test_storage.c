/* Storage: file:// (atomic writes, mkdir -p, key checks), S3 PUT retries against a scripted
 * stub (503, 503, 200; timeouts; no retry on 4xx) with every captured Authorization header
 * re-signed by our signer at curl's X-Amz-Date, and a real S3 API: s3rver (tests/tools, npm)
 * started here on a free loopback port with a temp directory, objects PUT through
 * pa_storage_put and read back through their presigned URLs. */
#include <curl/curl.h>
#include <dirent.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test.h"
#include "tests/worker/http_stub.h"
#include "tests/worker/sigv4_check.h"
#include "worker/sigv4.h"
#include "worker/storage.h"

#define S3RVER_BIN PAELLA_SOURCE_DIR "/tests/tools/node_modules/.bin/s3rver"
#define BUCKET "paella-test"

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(4 << 20);
  *len = buf ? fread(buf, 1, 4 << 20, f) : 0;
  fclose(f);
  return buf;
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  if (!d) return -1;
  for (struct dirent *e; (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

static void test_file(const char *tmp) {
  char url[512], path[600], *loc = NULL, *u = NULL;
  pa_storage *s = NULL;
  snprintf(url, sizeof url, "file://%s/out/", tmp);
  CHECK_OK(pa_storage_open(url, NULL, &s));
  if (!s) return;
  CHECK_OK(pa_storage_put(s, "jobs/0f3a/image-0.png", "first", 5, "image/png", &loc, &u));
  snprintf(path, sizeof path, "%s/out/jobs/0f3a/image-0.png", tmp);
  char want[700];
  snprintf(want, sizeof want, "file://%s", path);
  CHECK_MSG(loc && strcmp(loc, want) == 0, "%s", loc);
  CHECK(u && strcmp(u, want) == 0);
  free(loc);
  free(u);
  size_t len = 0;
  char *got = read_file(path, &len);
  CHECK(got && len == 5 && memcmp(got, "first", 5) == 0);
  free(got);
  /* The same key again (a retried job) replaces the object; no temp files stay behind. */
  CHECK_OK(pa_storage_put(s, "jobs/0f3a/image-0.png", "second!", 7, "image/png", NULL, NULL));
  got = read_file(path, &len);
  CHECK(got && len == 7 && memcmp(got, "second!", 7) == 0);
  free(got);
  snprintf(path, sizeof path, "%s/out/jobs/0f3a", tmp);
  CHECK(count_entries(path) == 1);
  struct stat st;
  snprintf(path, sizeof path, "%s/out/jobs/0f3a/image-0.png", tmp);
  CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644);
  CHECK_OK(pa_storage_put(s, "empty.bin", NULL, 0, NULL, NULL, NULL));
  static const char *bad[] = {"../escape.png", "a/../../b", "..", "a//b", "/abs", "", "a/./b",
                              "a\\..\\b", "a/\n/b", "a/.."};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK_MSG(pa_storage_put(s, bad[i], "x", 1, NULL, NULL, NULL) == PA_ERR_INVALID, "key %s", bad[i]);
  CHECK(pa_storage_put(s, "ok.png", "x", 1, "image/png\r\nX-Evil: 1", NULL, NULL) == PA_ERR_INVALID);
  snprintf(path, sizeof path, "%s/escape.png", tmp);
  CHECK(access(path, F_OK) != 0);
  pa_storage_free(s);
  s = NULL;
  CHECK(pa_storage_open("file://relative/dir", NULL, &s) == PA_ERR_INVALID && !s);
  snprintf(url, sizeof url, "file://%s/../x", tmp);
  CHECK(pa_storage_open(url, NULL, &s) == PA_ERR_INVALID);
  CHECK(pa_storage_open("ftp://host/x", NULL, &s) == PA_ERR_INVALID);
  CHECK(pa_storage_open("/plain/path", NULL, &s) == PA_ERR_INVALID);
}

static void test_open_s3(void) {
  pa_storage *s = NULL;
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SECRET_ACCESS_KEY");
  unsetenv("AWS_SESSION_TOKEN");
  unsetenv("AWS_ENDPOINT_URL");
  CHECK(pa_storage_open("s3://bucket/p", NULL, &s) == PA_ERR_INVALID && !s);
  pa_storage_options o = {.access_key = "A", .secret_key = "B"};
  CHECK(pa_storage_open("s3://Bad_Bucket/p", &o, &s) == PA_ERR_INVALID);
  CHECK(pa_storage_open("s3://bucket/a/../b", &o, &s) == PA_ERR_INVALID);
  o.endpoint = "ftp://x";
  CHECK(pa_storage_open("s3://bucket/p", &o, &s) == PA_ERR_INVALID);
  o.endpoint = NULL;
  setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET", 1);
  CHECK_OK(pa_storage_open("s3://bucket", NULL, &s)); /* default endpoint, no prefix */
  pa_storage_free(s);
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SECRET_ACCESS_KEY");
}

/* Every request the stub captured must carry a signature our signer reproduces. */
static void check_captured(const http_stub *st, const char *body, size_t len) {
  char hash[65];
  pa_sigv4_sha256_hex(body, len, hash);
  for (int i = 0; i < st->n_req; i++) {
    char *ours = NULL, *theirs = NULL, *sha = stub_header(st->req[i].head, "x-amz-content-sha256", 0);
    CHECK_OK(resign_captured(st->req[i].head, "AKID", "SECRET/KEY", "eu-central-1", &ours, &theirs));
    CHECK_MSG(ours && theirs && strcmp(ours, theirs) == 0, "curl %s\nours %s", theirs, ours);
    CHECK(sha && strcmp(sha, hash) == 0);
    CHECK(st->req[i].body_len == len && memcmp(st->req[i].body, body, len) == 0);
    CHECK(strncmp(st->req[i].head, "PUT /bkt/out/j%201/0.png HTTP/1.1\r\n", 35) == 0);
    free(ours);
    free(theirs);
    free(sha);
  }
}

static int open_stub_storage(const http_stub *st, int max_retries, int timeout_ms, pa_storage **s) {
  char ep[64];
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d", st->port);
  pa_storage_options o = {.endpoint = ep, .region = "eu-central-1", .access_key = "AKID",
                          .secret_key = "SECRET/KEY", .max_retries = max_retries,
                          .timeout_ms = timeout_ms};
  return pa_storage_open("s3://bkt/out/", &o, s);
}

static void test_s3_retries(void) {
  const char body[] = "\x89PNG\r\n\x1a\nretry me";
  size_t len = sizeof body - 1;
  http_stub st;
  pa_storage *s = NULL;
  char *loc = NULL, *url = NULL;
  /* 503, 503, then 200. */
  stub_response flaky[] = {{503, NULL, 0}, {503, NULL, 0}, {200, NULL, 0}};
  CHECK(stub_start(&st, flaky, 3) == 0);
  CHECK_OK(open_stub_storage(&st, 4, 5000, &s));
  CHECK_OK(pa_storage_put(s, "j 1/0.png", body, len, "image/png", &loc, &url));
  stub_stop(&st);
  CHECK(st.n_req == 3);
  check_captured(&st, body, len);
  CHECK(loc && strcmp(loc, "s3://bkt/out/j 1/0.png") == 0);
  char prefix[128];
  snprintf(prefix, sizeof prefix, "http://127.0.0.1:%d/bkt/out/j%%201/0.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKID%%2F", st.port);
  CHECK_MSG(url && strncmp(url, prefix, strlen(prefix)) == 0 && strstr(url, "&X-Amz-Expires=3600&"),
            "%s", url);
  free(loc);
  free(url);
  pa_storage_free(s);
  stub_free(&st);
  /* Always 500: gives up after max_retries + 1 attempts, with the status in the message. */
  stub_response down = {500, NULL, 0};
  CHECK(stub_start(&st, &down, 1) == 0);
  CHECK_OK(open_stub_storage(&st, 2, 5000, &s));
  CHECK(pa_storage_put(s, "j 1/0.png", body, len, "image/png", NULL, NULL) == PA_ERR_IO);
  CHECK(strstr(pa_errmsg(), "HTTP 500") && strstr(pa_errmsg(), "3 attempt"));
  stub_stop(&st);
  CHECK(st.n_req == 3);
  pa_storage_free(s);
  stub_free(&st);
  /* 403 is final: one attempt. */
  stub_response denied = {403, NULL, 0};
  CHECK(stub_start(&st, &denied, 1) == 0);
  CHECK_OK(open_stub_storage(&st, 4, 5000, &s));
  CHECK(pa_storage_put(s, "j 1/0.png", body, len, "image/png", NULL, NULL) == PA_ERR_IO);
  stub_stop(&st);
  CHECK(st.n_req == 1);
  pa_storage_free(s);
  stub_free(&st);
  /* A timeout is retried: the first answer comes after 700 ms, past the 200 ms limit. */
  stub_response slow[] = {{200, NULL, 700}, {200, NULL, 0}};
  CHECK(stub_start(&st, slow, 2) == 0);
  CHECK_OK(open_stub_storage(&st, 3, 200, &s));
  CHECK_OK(pa_storage_put(s, "j 1/0.png", body, len, "image/png", NULL, NULL));
  stub_stop(&st);
  /* The stub answers one connection at a time, so a retry sent while it sleeps on the first
   * request may time out too before it is read: at least two requests, all signed alike. */
  CHECK_MSG(st.n_req >= 2 && st.n_req <= 4, "%d requests", st.n_req);
  check_captured(&st, body, len);
  pa_storage_free(s);
  stub_free(&st);
}

/* ---- s3rver ---------------------------------------------------------------------------- */

typedef struct {
  pid_t pid;
  int port;
} s3rver;

/* Starts s3rver on 127.0.0.1 with a kernel-chosen port, logging to dir/s3rver.log, and reads the
 * port from its "listening on" line. The child dies with us (PR_SET_PDEATHSIG), so a crashed
 * test leaves no server behind. */
static int s3rver_start(const char *dir, s3rver *sv) {
  char data[600], log[600];
  snprintf(data, sizeof data, "%s/s3", dir);
  snprintf(log, sizeof log, "%s/s3rver.log", dir);
  if (mkdir(data, 0700) != 0) return -1;
  pid_t parent = getpid();
  sv->pid = fork();
  if (sv->pid < 0) return -1;
  if (sv->pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    if (!freopen(log, "w", stdout) || !freopen(log, "a", stderr)) _exit(1);
    execl(S3RVER_BIN, S3RVER_BIN, "-d", data, "-a", "127.0.0.1", "-p", "0", "--configure-bucket",
          BUCKET, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 1200; i++) { /* up to 60 s for node to start on a loaded machine */
    size_t len = 0;
    char *text = read_file(log, &len);
    char *at = text ? memmem(text, len, "listening on 127.0.0.1:", 23) : NULL;
    sv->port = at ? atoi(at + 23) : 0;
    free(text);
    if (sv->port > 0) return 0;
    if (waitpid(sv->pid, NULL, WNOHANG) == sv->pid) return -1;
    usleep(50000);
  }
  return -1;
}

static void s3rver_stop(s3rver *sv) {
  if (sv->pid <= 0) return;
  kill(sv->pid, SIGTERM);
  waitpid(sv->pid, NULL, 0);
  sv->pid = 0;
}

typedef struct {
  char *buf;
  size_t len, cap;
} grow;

static size_t grow_write(char *d, size_t size, size_t n, void *user) {
  grow *g = user;
  size_t t = size * n;
  if (g->len + t > g->cap) {
    size_t cap = (g->len + t) * 2;
    char *b = realloc(g->buf, cap);
    if (!b) return 0;
    g->buf = b;
    g->cap = cap;
  }
  memcpy(g->buf + g->len, d, t);
  g->len += t;
  return t;
}

/* GETs url; returns the HTTP status and the body in *g. */
static long http_get(const char *url, grow *g, char *ctype, size_t ccap) {
  CURL *h = curl_easy_init();
  long status = 0;
  char *ct = NULL;
  g->len = 0;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, grow_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, g);
  if (curl_easy_perform(h) == CURLE_OK) {
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
      snprintf(ctype, ccap, "%s", ct);
  }
  curl_easy_cleanup(h);
  return status;
}

/* PUTs data under key and reads it back through the presigned URL. */
static void put_and_get(pa_storage *s, const char *key, const void *data, size_t len, const char *want_loc) {
  char *loc = NULL, *url = NULL, ctype[128] = "";
  grow g = {0};
  CHECK_OK(pa_storage_put(s, key, data, len, "image/png", &loc, &url));
  CHECK_MSG(loc && strcmp(loc, want_loc) == 0, "%s", loc);
  long status = url ? http_get(url, &g, ctype, sizeof ctype) : 0;
  CHECK_MSG(status == 200, "GET %s -> %ld", url, status);
  CHECK_MSG(g.len == len && (len == 0 || memcmp(g.buf, data, len) == 0), "%s: %zu bytes back, want %zu",
            key, g.len, len);
  CHECK_MSG(strcmp(ctype, "image/png") == 0, "content type %s", ctype);
  free(g.buf);
  free(loc);
  free(url);
}

static bool test_s3rver(const char *tmp) {
  if (access(S3RVER_BIN, X_OK) != 0) {
    printf("SKIP s3rver integration: %s missing (scripts/install-deps.sh installs it with npm ci)\n",
           S3RVER_BIN);
    return false;
  }
  s3rver sv = {0};
  int started = s3rver_start(tmp, &sv);
  CHECK_MSG(started == 0, "s3rver did not start (see %s/s3rver.log)", tmp);
  if (started != 0) {
    s3rver_stop(&sv);
    return true;
  }
  char ep[64];
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d", sv.port);
  /* s3rver knows one key pair (S3RVER/S3RVER); it checks the key id, not the V4 signature. */
  pa_storage_options o = {.endpoint = ep, .access_key = "S3RVER", .secret_key = "S3RVER",
                          .presign_seconds = 600, .max_retries = 2, .timeout_ms = 10000};
  pa_storage *s = NULL;
  CHECK_OK(pa_storage_open("s3://" BUCKET "/outputs", &o, &s));
  if (s) {
    size_t big_len = 1536 * 1024 + 7; /* past curl's Expect: 100-continue threshold */
    unsigned char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++) big[i] = (unsigned char)(i * 2654435761u >> 13);
    put_and_get(s, "0f3a/image-0.png", "\x89PNG\r\n\x1a\nsmall", 13, "s3://" BUCKET "/outputs/0f3a/image-0.png");
    put_and_get(s, "0f3a/image-1.png", big, big_len, "s3://" BUCKET "/outputs/0f3a/image-1.png");
    put_and_get(s, "job 7/ü+%.png", "odd key", 7, "s3://" BUCKET "/outputs/job 7/ü+%.png");
    put_and_get(s, "0f3a/image-0.png", "replaced", 8, "s3://" BUCKET "/outputs/0f3a/image-0.png");
    put_and_get(s, "0f3a/empty.png", "", 0, "s3://" BUCKET "/outputs/0f3a/empty.png");
    free(big);
    pa_storage_free(s);
  }
  /* An unknown key id is refused by the server, once (4xx is not retried). */
  o.access_key = "NOBODY";
  CHECK_OK(pa_storage_open("s3://" BUCKET "/outputs", &o, &s));
  if (s) {
    CHECK(pa_storage_put(s, "x.png", "x", 1, "image/png", NULL, NULL) == PA_ERR_IO);
    CHECK_MSG(strstr(pa_errmsg(), "HTTP 403") && strstr(pa_errmsg(), "InvalidAccessKeyId"), "%s", pa_errmsg());
    pa_storage_free(s);
  }
  s3rver_stop(&sv);
  CHECK(kill(sv.pid, 0) != 0 || sv.pid == 0);
  return true;
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  char tmp[] = "/tmp/paella-test-storage-XXXXXX";
  CHECK(mkdtemp(tmp) != NULL);
  test_file(tmp);
  test_open_s3();
  test_s3_retries();
  bool ran = test_s3rver(tmp);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  CHECK(system(cmd) == 0);
  curl_global_cleanup();
  if (!ran && test_failed_ == 0) {
    printf("%d passed, %d failed (s3rver part skipped)\n", test_passed_, test_failed_);
    return 77;
  }
  TEST_END();
}
