/* Image storage: S3-compatible buckets (path-style URLs, so any endpoint works: AWS, MinIO,
 * s3rver) or a local directory. Keys come from the caller (derived from the job id), so a
 * retried job overwrites its own objects. */
#include "worker/storage.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/rand.h>

#include "worker/sigv4.h"

#define BACKOFF_BASE_MS 100 /* first retry delay; doubled per retry, like the AWS SDKs */
#define BACKOFF_CAP_MS 10000
#define ERROR_BODY_CAP 1024 /* enough of an S3 XML error to name its Code */
#define DEFAULT_PART_BYTES ((size_t)8 << 20) /* S3 wants parts >= 5 MiB but the last */
#define REPLY_CAP (64u << 10) /* XML answers of the multipart calls */

struct pa_storage {
  bool local;
  char *dir;        /* file: absolute directory, no trailing '/' */
  char *bucket;     /* s3 */
  char *prefix;     /* s3/file: key prefix without surrounding '/', may be "" */
  char *origin;     /* s3: scheme://authority of the endpoint */
  char *base_path;  /* s3: the endpoint's path ("" or "/x"), part of every signed URI */
  char *host;       /* s3: authority as curl sends it in Host (signed in presigned URLs) */
  char *region, *access_key, *secret_key, *session_token;
  int presign_seconds, max_retries, timeout_ms;
  size_t part_bytes; /* multipart uploads */
  bool curl_ready;  /* curl_global_init succeeded: pair it with curl_global_cleanup */
};

/* asprintf that leaves *out NULL on failure and reports it. */
static int xasprintf(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int xasprintf(char **out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vasprintf(out, fmt, ap);
  va_end(ap);
  if (n >= 0) return PA_OK;
  *out = NULL;
  return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static const char *opt_or_env(const char *v, const char *env, const char *dflt) {
  if (v && *v) return v;
  const char *e = getenv(env);
  return e && *e ? e : dflt;
}

void pa_storage_free(pa_storage *s) {
  if (!s) return;
  free(s->dir);
  free(s->bucket);
  free(s->prefix);
  free(s->origin);
  free(s->base_path);
  free(s->host);
  free(s->region);
  free(s->access_key);
  if (s->secret_key) OPENSSL_cleanse(s->secret_key, strlen(s->secret_key));
  free(s->secret_key);
  free(s->session_token);
  if (s->curl_ready) curl_global_cleanup();
  free(s);
}

/* A relative key path: non-empty segments, none "." or "..", no backslashes or control bytes.
 * Refusing ".." keeps file:// writes inside the directory and S3 keys free of segments that
 * HTTP stacks normalise away. */
static int check_key(const char *key, const char *what) {
  if (!key || !*key) return pa_fail(PA_ERR_INVALID, "storage: empty %s", what);
  const char *seg = key;
  for (const char *p = key;; p++) {
    if (*p == '/' || *p == '\0') {
      size_t n = (size_t)(p - seg);
      if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
        return pa_fail(PA_ERR_INVALID, "storage: %s \"%s\": empty, \".\" or \"..\" segment", what, key);
      if (*p == '\0') return PA_OK;
      seg = p + 1;
    } else if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '\\') {
      return pa_fail(PA_ERR_INVALID, "storage: %s \"%s\": control byte or backslash", what, key);
    }
  }
}

/* PREFIX with surrounding slashes dropped ("" when none), checked like a key. */
static int take_prefix(const char *p, char **out) {
  while (*p == '/') p++;
  size_t n = strlen(p);
  while (n && p[n - 1] == '/') n--;
  *out = strndup(p, n);
  if (!*out) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  return n ? check_key(*out, "prefix") : PA_OK;
}

/* mkdir -p of path[0..len), one component at a time. */
static int mkdirs(const char *path, size_t len) {
  char *buf = strndup(path, len);
  if (!buf) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  int rc = PA_OK;
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char c = *p;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
      rc = pa_fail(PA_ERR_IO, "storage: mkdir %s: %s", buf, strerror(errno));
      break;
    }
    *p = c;
    if (c == '\0') break;
  }
  free(buf);
  return rc;
}

static int open_local(pa_storage *s, const char *path) {
  if (path[0] != '/')
    return pa_fail(PA_ERR_INVALID, "storage: file URL needs an absolute path (file:///dir)");
  size_t n = strlen(path);
  while (n > 1 && path[n - 1] == '/') n--;
  s->local = true;
  s->prefix = strdup("");
  s->dir = strndup(path, n);
  if (!s->dir || !s->prefix) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  if (strstr(s->dir, "/../") || (n >= 3 && strcmp(s->dir + n - 3, "/..") == 0))
    return pa_fail(PA_ERR_INVALID, "storage: directory %s contains \"..\"", s->dir);
  return mkdirs(s->dir, n);
}

/* Splits the endpoint into origin (scheme://authority), host (authority) and base path. */
static int parse_endpoint(pa_storage *s, const char *endpoint) {
  const char *sep = strstr(endpoint, "://");
  if (!sep || (strncmp(endpoint, "http://", 7) != 0 && strncmp(endpoint, "https://", 8) != 0))
    return pa_fail(PA_ERR_INVALID, "storage: endpoint %s is not an http(s) URL", endpoint);
  const char *auth = sep + 3, *path = auth + strcspn(auth, "/?#");
  if (*path == '?' || *path == '#' || strchr(auth, '@') || path == auth)
    return pa_fail(PA_ERR_INVALID, "storage: endpoint %s: want scheme://host[:port][/path]", endpoint);
  size_t plen = strlen(path);
  while (plen && path[plen - 1] == '/') plen--;
  s->origin = strndup(endpoint, (size_t)(path - endpoint));
  s->host = strndup(auth, (size_t)(path - auth));
  s->base_path = strndup(path, plen);
  if (!s->origin || !s->host || !s->base_path) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  return PA_OK;
}

/* Bucket names as S3 allows them (lowercase letters, digits, '.', '-'), so they need no
 * encoding in paths. */
static int check_bucket(const char *b, size_t n) {
  if (n < 3 || n > 63) return pa_fail(PA_ERR_INVALID, "storage: bucket name must be 3..63 characters");
  for (size_t i = 0; i < n; i++) {
    char c = b[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-'))
      return pa_fail(PA_ERR_INVALID, "storage: bucket name %.*s: only a-z 0-9 . -", (int)n, b);
  }
  return PA_OK;
}

static int open_s3(pa_storage *s, const char *rest, const pa_storage_options *o) {
  size_t blen = strcspn(rest, "/");
  int rc;
  PA_TRY(check_bucket(rest, blen));
  s->bucket = strndup(rest, blen);
  if (!s->bucket) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  PA_TRY(take_prefix(rest + blen, &s->prefix));
  const char *region = opt_or_env(o ? o->region : NULL, "AWS_REGION",
                                  opt_or_env(NULL, "AWS_DEFAULT_REGION", "us-east-1"));
  s->region = strdup(region);
  s->access_key = dup_or_null(opt_or_env(o ? o->access_key : NULL, "AWS_ACCESS_KEY_ID", NULL));
  s->secret_key = dup_or_null(opt_or_env(o ? o->secret_key : NULL, "AWS_SECRET_ACCESS_KEY", NULL));
  s->session_token = dup_or_null(opt_or_env(o ? o->session_token : NULL, "AWS_SESSION_TOKEN", NULL));
  if (!s->region) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  if (!s->access_key || !s->secret_key)
    return pa_fail(PA_ERR_INVALID, "storage: S3 needs an access key and a secret key "
                                   "(options or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)");
  const char *endpoint = opt_or_env(o ? o->endpoint : NULL, "AWS_ENDPOINT_URL", NULL);
  char *dflt = NULL;
  if (!endpoint) PA_TRY(xasprintf(&dflt, "https://s3.%s.amazonaws.com", s->region));
  rc = parse_endpoint(s, endpoint ? endpoint : dflt);
  free(dflt);
  if (rc) return rc;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return pa_fail(PA_ERR_IO, "storage: curl_global_init failed");
  s->curl_ready = true;
fail:
  return rc;
}

int pa_storage_open(const char *url, const pa_storage_options *o, pa_storage **out) {
  *out = NULL;
  if (!url) return pa_fail(PA_ERR_INVALID, "storage: no URL");
  pa_storage *s = calloc(1, sizeof *s);
  if (!s) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  s->presign_seconds = o && o->presign_seconds > 0 ? o->presign_seconds : 3600;
  s->max_retries = o && o->max_retries > 0 ? o->max_retries : 4;
  s->timeout_ms = o && o->timeout_ms > 0 ? o->timeout_ms : 30000;
  s->part_bytes = o && o->part_bytes > 0 ? o->part_bytes : DEFAULT_PART_BYTES;
  int rc;
  if (strncmp(url, "file://", 7) == 0) {
    rc = open_local(s, url + 7);
  } else if (strncmp(url, "s3://", 5) == 0) {
    rc = open_s3(s, url + 5, o);
  } else {
    rc = pa_fail(PA_ERR_INVALID, "storage: URL %s: want s3://bucket/prefix or file:///dir", url);
  }
  if (rc) {
    pa_storage_free(s);
    return pa_fail_context(rc, "storage %s: ", url);
  }
  *out = s;
  return PA_OK;
}

/* prefix/key (or key alone), checked. */
static int full_key(const pa_storage *s, const char *key, char **out) {
  int rc;
  *out = NULL;
  PA_TRY(check_key(key, "key")); /* also refuses a leading '/' (an empty first segment) */
  PA_TRY(xasprintf(out, "%s%s%s", s->prefix, *s->prefix ? "/" : "", key));
fail:
  return rc;
}

/* ---- file:// --------------------------------------------------------------------------- */

static int write_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Writes to a temp file next to the target and renames it, so readers never see a partial
 * image and a crash leaves at worst a stray temp file. */
static int put_local(pa_storage *s, const char *key, const void *data, size_t len, char **path_out) {
  char *path = NULL, *tmp = NULL;
  int fd = -1, rc;
  bool created = false;
  PA_TRY(xasprintf(&path, "%s/%s", s->dir, key));
  PA_TRY(xasprintf(&tmp, "%s.tmp.XXXXXX", path));
  PA_TRY(mkdirs(path, (size_t)(strrchr(path, '/') - path)));
  fd = mkstemp(tmp);
  if (fd < 0) {
    rc = pa_fail(PA_ERR_IO, "storage: create %s: %s", tmp, strerror(errno));
    goto fail;
  }
  created = true;
  if (write_all(fd, data, len) != 0 || fchmod(fd, 0644) != 0 || fsync(fd) != 0) {
    rc = pa_fail(PA_ERR_IO, "storage: write %s: %s", tmp, strerror(errno));
    goto fail;
  }
  int closed = close(fd);
  fd = -1;
  if (closed != 0 || rename(tmp, path) != 0) {
    rc = pa_fail(PA_ERR_IO, "storage: write %s: %s", path, strerror(errno));
    goto fail;
  }
  *path_out = path;
  path = NULL;
fail:
  if (fd >= 0) close(fd);
  if (rc && created) unlink(tmp);
  free(tmp);
  free(path);
  return rc;
}

/* ---- s3:// ----------------------------------------------------------------------------- */

typedef struct {
  char buf[ERROR_BODY_CAP + 1];
  size_t len;
} body_sink;

/* Keeps the head of the response (S3 error XML) and drops the rest. */
static size_t sink_write(char *data, size_t size, size_t n, void *user) {
  body_sink *b = user;
  size_t total = size * n, room = ERROR_BODY_CAP - b->len, take = total < room ? total : room;
  memcpy(b->buf + b->len, data, take);
  b->len += take;
  b->buf[b->len] = '\0';
  return total;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* 100 ms * 2^retry, capped, +-20% jitter so workers that failed together do not retry together. */
static long backoff_ms(int retry) {
  long d = BACKOFF_BASE_MS;
  for (int i = 0; i < retry && d < BACKOFF_CAP_MS; i++) d *= 2;
  if (d > BACKOFF_CAP_MS) d = BACKOFF_CAP_MS;
  unsigned short r = 0;
  if (RAND_bytes((unsigned char *)&r, sizeof r) == 1) d = d * 8 / 10 + (long)(d * 4 / 10 * r / 65535);
  return d;
}

static bool transient(CURLcode cc) {
  return cc == CURLE_OPERATION_TIMEDOUT || cc == CURLE_COULDNT_CONNECT || cc == CURLE_SEND_ERROR ||
         cc == CURLE_RECV_ERROR || cc == CURLE_GOT_NOTHING || cc == CURLE_PARTIAL_FILE ||
         cc == CURLE_COULDNT_RESOLVE_HOST;
}

/* One PUT. *status = HTTP status (0 when the transfer failed: *cc says why). */
static int put_once(pa_storage *s, CURL *h, const char *url, const char *content_type,
                    const void *data, size_t len, long *status, CURLcode *cc, body_sink *sink) {
  struct curl_slist *headers = NULL;
  pa_sigv4_signer k = {s->access_key, s->secret_key, s->region, "s3", NULL};
  int rc;
  curl_easy_reset(h);
  sink->len = 0;
  sink->buf[0] = '\0';
  *status = 0;
  PA_TRY(pa_sigv4_curl_put(h, &k, s->session_token, url, content_type, data, len, &headers));
  if (curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_write) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_WRITEDATA, sink) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK) {
    rc = pa_fail(PA_ERR_IO, "storage: curl_easy_setopt failed");
    goto fail;
  }
  *cc = curl_easy_perform(h);
  if (*cc == CURLE_OK && curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status) != CURLE_OK) *status = 0;
fail:
  curl_slist_free_all(headers);
  return rc;
}

/* PUT with retries on 5xx and transient transfer errors. */
static int put_s3(pa_storage *s, const char *key, const void *data, size_t len,
                  const char *content_type) {
  char *enc = NULL, *url = NULL;
  body_sink *sink = calloc(1, sizeof *sink);
  CURL *h = curl_easy_init();
  long status = 0;
  CURLcode cc = CURLE_OK;
  int rc;
  if (!sink || !h) {
    rc = pa_fail(PA_ERR_NOMEM, "storage: out of memory");
    goto fail;
  }
  PA_TRY(pa_sigv4_uri_encode(key, true, &enc));
  PA_TRY(xasprintf(&url, "%s%s/%s/%s", s->origin, s->base_path, s->bucket, enc));
  for (int attempt = 0;; attempt++) {
    PA_TRY(put_once(s, h, url, content_type, data, len, &status, &cc, sink));
    if (status >= 200 && status < 300) break;
    bool retry = status >= 500 || (status == 0 && transient(cc));
    if (!retry || attempt >= s->max_retries) {
      if (status)
        rc = pa_fail(PA_ERR_IO, "storage: PUT %s: HTTP %ld after %d attempt(s): %.300s", url, status,
                     attempt + 1, sink->buf);
      else
        rc = pa_fail(PA_ERR_IO, "storage: PUT %s: %s after %d attempt(s)", url,
                     curl_easy_strerror(cc), attempt + 1);
      goto fail;
    }
    sleep_ms(backoff_ms(attempt));
  }
fail:
  curl_easy_cleanup(h);
  free(sink);
  free(enc);
  free(url);
  return rc;
}

static int presign(pa_storage *s, const char *key, char **out) {
  char date[17], *enc = NULL, *uri = NULL;
  int rc;
  PA_TRY(pa_sigv4_amz_date(time(NULL), date));
  PA_TRY(pa_sigv4_uri_encode(key, true, &enc));
  PA_TRY(xasprintf(&uri, "%s/%s/%s", s->base_path, s->bucket, enc));
  pa_sigv4_signer k = {s->access_key, s->secret_key, s->region, "s3", date};
  PA_TRY(pa_sigv4_presign_get(&k, s->session_token, s->origin, s->host, uri, s->presign_seconds, out));
fail:
  free(enc);
  free(uri);
  return rc;
}

int pa_storage_put(pa_storage *s, const char *key, const void *data, size_t len,
                   const char *content_type, char **location, char **url) {
  char *fk = NULL, *path = NULL, *loc = NULL, *u = NULL;
  int rc;
  if (location) *location = NULL;
  if (url) *url = NULL;
  if (!data && len) return pa_fail(PA_ERR_INVALID, "storage: no data");
  for (const char *p = content_type ? content_type : ""; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) /* it goes into a header line verbatim */
      return pa_fail(PA_ERR_INVALID, "storage: content type has a control byte");
  PA_TRY(full_key(s, key, &fk));
  if (s->local) {
    PA_TRY(put_local(s, fk, data, len, &path));
    PA_TRY(xasprintf(&loc, "file://%s", path));
  } else {
    PA_TRY(put_s3(s, fk, data, len, content_type));
    PA_TRY(xasprintf(&loc, "s3://%s/%s", s->bucket, fk));
    if (url) PA_TRY(presign(s, fk, &u));
  }
  if (location) {
    *location = loc;
    loc = NULL;
  }
  if (url) {
    *url = u;
    u = NULL;
  }
fail:
  free(fk);
  free(path);
  free(loc);
  free(u);
  return rc;
}

int pa_storage_key(const pa_storage *s, const char *key, char **out) { return full_key(s, key, out); }

int pa_storage_name(const pa_storage *s, const char *object, char **out) {
  *out = NULL;
  int rc = check_key(object, "object");
  if (rc) return rc;
  return s->local ? xasprintf(out, "%s", object) : xasprintf(out, "s3://%s/%s", s->bucket, object);
}

/* ---- signed S3 requests (GET, multipart) ------------------------------------------------ */

/* A response body kept whole up to `max` bytes (more is an error: *over). */
typedef struct {
  char *data;
  size_t len, max;
  bool over;
} reply_buf;

static size_t reply_write(char *data, size_t size, size_t n, void *user) {
  reply_buf *b = user;
  size_t total = size * n;
  if (b->over || b->len + total > b->max) {
    b->over = true;
    return total; /* keep reading (the status line decides), drop the bytes */
  }
  char *p = realloc(b->data, b->len + total + 1);
  if (!p) return 0; /* curl reports a write error */
  memcpy(p + b->len, data, total);
  b->len += total;
  p[b->len] = '\0';
  b->data = p;
  return total;
}

/* The ETag response header (UploadPart answers with the part's). */
static size_t etag_header(char *line, size_t size, size_t n, void *user) {
  char **etag = user;
  size_t total = size * n;
  if (total > 5 && !strncasecmp(line, "etag:", 5) && !*etag) {
    const char *v = line + 5;
    size_t len = total - 5;
    while (len && (*v == ' ' || *v == '\t')) v++, len--;
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ')) len--;
    *etag = strndup(v, len);
  }
  return total;
}

typedef struct {
  const char *method; /* GET, PUT, POST, DELETE */
  const char *object; /* key from the bucket's root */
  const char *query;  /* canonical query ("uploads=", "partNumber=1&uploadId=X"), "" when none */
  const void *body;
  size_t len;
  size_t max_reply;   /* bytes of the answer kept */
} s3_call;

/* Headers of one request signed here (not by curl: 7.88 signs "?uploads" as "uploads" where S3
 * canonicalises it to "uploads=", and it does not sort queries). */
static int sign_call(pa_storage *s, const s3_call *q, const char *uri, struct curl_slist **list) {
  char hash[65], date[17], *auth = NULL, *line = NULL;
  int rc;
  PA_TRY(pa_sigv4_sha256_hex(q->body ? q->body : "", q->len, hash));
  PA_TRY(pa_sigv4_amz_date(time(NULL), date));
  pa_sigv4_header hs[4] = {{"host", s->host}, {"x-amz-content-sha256", hash}, {"x-amz-date", date},
                           {"x-amz-security-token", s->session_token}};
  pa_sigv4_request r = {q->method, uri, q->query, hs, s->session_token ? 4 : 3, hash};
  pa_sigv4_signer k = {s->access_key, s->secret_key, s->region, "s3", date};
  PA_TRY(pa_sigv4_authorization(&k, &r, &auth, NULL));
  const char *names[] = {"Authorization", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token"};
  const char *values[] = {auth, hash, date, s->session_token};
  for (int i = 0; i < 4 && values[i]; i++) {
    PA_TRY(xasprintf(&line, "%s: %s", names[i], values[i]));
    struct curl_slist *l = curl_slist_append(*list, line);
    free(line);
    line = NULL;
    if (!l) {
      rc = pa_fail(PA_ERR_NOMEM, "storage: out of memory");
      goto fail;
    }
    *list = l;
  }
  struct curl_slist *l = curl_slist_append(*list, "Expect:"); /* no 100-continue round trip */
  if (!l) rc = pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  else *list = l;
fail:
  free(auth);
  return rc;
}

static int call_once(pa_storage *s, CURL *h, const s3_call *q, const char *uri, long *status, CURLcode *cc,
                     reply_buf *reply, char **etag) {
  struct curl_slist *headers = NULL;
  char *url = NULL;
  int rc;
  curl_easy_reset(h);
  free(reply->data);
  *reply = (reply_buf){NULL, 0, q->max_reply, false};
  free(*etag);
  *etag = NULL;
  *status = 0;
  PA_TRY(sign_call(s, q, uri, &headers));
  PA_TRY(xasprintf(&url, "%s%s%s%s", s->origin, uri, *q->query ? "?" : "", q->query));
  bool get = !strcmp(q->method, "GET");
  if (curl_easy_setopt(h, CURLOPT_URL, url) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers) != CURLE_OK ||
      (get ? curl_easy_setopt(h, CURLOPT_HTTPGET, 1L)
           : curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, q->method)) != CURLE_OK ||
      (!get && (curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->len) != CURLE_OK ||
                curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->len ? q->body : "") != CURLE_OK)) ||
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, reply_write) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_WRITEDATA, reply) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, etag_header) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_HEADERDATA, etag) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
      curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK) {
    rc = pa_fail(PA_ERR_IO, "storage: curl_easy_setopt failed");
    goto fail;
  }
  *cc = curl_easy_perform(h);
  if (*cc == CURLE_OK && curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status) != CURLE_OK) *status = 0;
fail:
  curl_slist_free_all(headers);
  free(url);
  return rc;
}

/* One call with the PUT path's retries (5xx, transient transfer errors). On success
 * *reply holds the answer (free reply->data) and *etag (optional) the ETag header. A 404 is
 * PA_ERR_NOTFOUND, other statuses PA_ERR_IO naming the S3 error. */
static int s3_call_run(pa_storage *s, const s3_call *q, reply_buf *reply, char **etag) {
  char *enc = NULL, *uri = NULL, *tag = NULL;
  CURL *h = curl_easy_init();
  long status = 0;
  CURLcode cc = CURLE_OK;
  int rc;
  *reply = (reply_buf){0};
  if (!h) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  PA_TRY(pa_sigv4_uri_encode(q->object, true, &enc));
  PA_TRY(xasprintf(&uri, "%s/%s/%s", s->base_path, s->bucket, enc));
  for (int attempt = 0;; attempt++) {
    PA_TRY(call_once(s, h, q, uri, &status, &cc, reply, &tag));
    if (status >= 200 && status < 300 && !reply->over) break;
    bool retry = status >= 500 || (status == 0 && transient(cc));
    if (!retry || attempt >= s->max_retries) {
      if (status == 404) rc = pa_fail(PA_ERR_NOTFOUND, "storage: %s %s: no such object", q->method, uri);
      else if (reply->over) rc = pa_fail(PA_ERR_IO, "storage: %s %s: larger than %zu bytes", q->method, uri, q->max_reply);
      else if (status)
        rc = pa_fail(PA_ERR_IO, "storage: %s %s: HTTP %ld after %d attempt(s): %.300s", q->method, uri, status,
                     attempt + 1, reply->data ? reply->data : "");
      else
        rc = pa_fail(PA_ERR_IO, "storage: %s %s: %s after %d attempt(s)", q->method, uri, curl_easy_strerror(cc),
                     attempt + 1);
      goto fail;
    }
    sleep_ms(backoff_ms(attempt));
  }
  if (etag) {
    *etag = tag;
    tag = NULL;
  }
fail:
  if (rc) {
    free(reply->data);
    *reply = (reply_buf){0};
  }
  curl_easy_cleanup(h);
  free(tag);
  free(enc);
  free(uri);
  return rc;
}

/* ---- reads ------------------------------------------------------------------------------- */

static int get_local(pa_storage *s, const char *object, size_t max_bytes, void **data, size_t *len) {
  char *path = NULL;
  int rc, fd = -1;
  struct stat st;
  PA_TRY(xasprintf(&path, "%s/%s", s->dir, object));
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = pa_fail(errno == ENOENT ? PA_ERR_NOTFOUND : PA_ERR_IO, "storage: read %s: %s", path,
                 fd < 0 ? strerror(errno) : "not a regular file");
    goto fail;
  }
  if ((uint64_t)st.st_size > max_bytes) {
    rc = pa_fail(PA_ERR_IO, "storage: %s: larger than %zu bytes", path, max_bytes);
    goto fail;
  }
  char *buf = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (buf && got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (!buf || got != (size_t)st.st_size) {
    free(buf);
    rc = pa_fail(buf ? PA_ERR_IO : PA_ERR_NOMEM, "storage: read %s", path);
    goto fail;
  }
  *data = buf;
  *len = got;
fail:
  if (fd >= 0) close(fd);
  free(path);
  return rc;
}

int pa_storage_get(pa_storage *s, const char *object, size_t max_bytes, void **data, size_t *len) {
  int rc;
  *data = NULL;
  *len = 0;
  PA_TRY(check_key(object, "object"));
  if (s->local) return get_local(s, object, max_bytes, data, len);
  s3_call q = {"GET", object, "", NULL, 0, max_bytes};
  reply_buf b;
  PA_TRY(s3_call_run(s, &q, &b, NULL));
  *data = b.data ? b.data : calloc(1, 1);
  *len = b.len;
  if (!*data) rc = pa_fail(PA_ERR_NOMEM, "storage: out of memory");
fail:
  return rc;
}

/* ---- streamed uploads -------------------------------------------------------------------- */

struct pa_storage_upload {
  pa_storage *s;
  char *object;     /* PREFIX/key */
  uint64_t size;    /* bytes written so far */
  /* file:// */
  char *path, *tmp;
  int fd;
  /* s3:// */
  char *upload_id;  /* URI-encoded, as it goes into queries */
  char *part;       /* the part being filled, part_bytes */
  size_t part_len;
  char **etags;     /* of parts 1..n_parts */
  int n_parts;
};

/* The text of <tag>...</tag> in an S3 XML answer, malloc'd; NULL when absent. */
static char *xml_text(const char *xml, const char *tag) {
  char open_tag[64], close_tag[64];
  snprintf(open_tag, sizeof open_tag, "<%s>", tag);
  snprintf(close_tag, sizeof close_tag, "</%s>", tag);
  const char *a = xml ? strstr(xml, open_tag) : NULL, *b = a ? strstr(a, close_tag) : NULL;
  return a && b ? strndup(a + strlen(open_tag), (size_t)(b - a - (ptrdiff_t)strlen(open_tag))) : NULL;
}

static int start_multipart(pa_storage_upload *u) {
  s3_call q = {"POST", u->object, "uploads=", NULL, 0, REPLY_CAP};
  reply_buf b;
  int rc;
  PA_TRY(s3_call_run(u->s, &q, &b, NULL));
  char *id = xml_text(b.data, "UploadId");
  free(b.data);
  if (!id || !*id) {
    free(id);
    return pa_fail(PA_ERR_IO, "storage: CreateMultipartUpload %s: no UploadId in the answer", u->object);
  }
  rc = pa_sigv4_uri_encode(id, false, &u->upload_id);
  free(id);
  if (rc == PA_OK && !(u->part = malloc(u->s->part_bytes))) rc = pa_fail(PA_ERR_NOMEM, "storage: out of memory");
fail:
  return rc;
}

int pa_storage_upload_open(pa_storage *s, const char *key, const char *content_type, pa_storage_upload **out) {
  (void)content_type; /* parts carry no type; S3 stores the upload's as binary */
  pa_storage_upload *u = calloc(1, sizeof *u);
  int rc;
  *out = NULL;
  if (!u) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  u->s = s;
  u->fd = -1;
  PA_TRY(full_key(s, key, &u->object));
  if (s->local) {
    PA_TRY(xasprintf(&u->path, "%s/%s", s->dir, u->object));
    PA_TRY(xasprintf(&u->tmp, "%s.tmp.XXXXXX", u->path));
    PA_TRY(mkdirs(u->path, (size_t)(strrchr(u->path, '/') - u->path)));
    if ((u->fd = mkstemp(u->tmp)) < 0) {
      rc = pa_fail(PA_ERR_IO, "storage: create %s: %s", u->tmp, strerror(errno));
      free(u->tmp); /* nothing to unlink */
      u->tmp = NULL;
      goto fail;
    }
  } else {
    PA_TRY(start_multipart(u));
  }
  *out = u;
  return PA_OK;
fail:
  pa_storage_upload_abort(u);
  return rc;
}

static int put_part(pa_storage_upload *u) {
  char query[600];
  int rc, n = u->n_parts + 1;
  if (n > 10000) return pa_fail(PA_ERR_INVALID, "storage: %s: more than 10000 parts", u->object);
  snprintf(query, sizeof query, "partNumber=%d&uploadId=%s", n, u->upload_id);
  s3_call q = {"PUT", u->object, query, u->part, u->part_len, ERROR_BODY_CAP};
  reply_buf b;
  char *etag = NULL, **more = realloc(u->etags, (size_t)n * sizeof *more);
  if (!more) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  u->etags = more;
  PA_TRY(s3_call_run(u->s, &q, &b, &etag));
  free(b.data);
  if (!etag) return pa_fail(PA_ERR_IO, "storage: UploadPart %d of %s: no ETag", n, u->object);
  u->etags[u->n_parts++] = etag;
  u->part_len = 0;
fail:
  return rc;
}

int pa_storage_upload_write(pa_storage_upload *u, const void *data, size_t len) {
  const char *p = data;
  u->size += len;
  if (u->s->local)
    return write_all(u->fd, data, len) == 0 ? PA_OK : pa_fail(PA_ERR_IO, "storage: write %s: %s", u->tmp, strerror(errno));
  while (len) {
    size_t take = u->s->part_bytes - u->part_len < len ? u->s->part_bytes - u->part_len : len;
    memcpy(u->part + u->part_len, p, take);
    u->part_len += take;
    p += take;
    len -= take;
    if (u->part_len == u->s->part_bytes) {
      int rc = put_part(u);
      if (rc) return rc;
    }
  }
  return PA_OK;
}

static int complete_multipart(pa_storage_upload *u) {
  size_t cap = 128 + (size_t)u->n_parts * 160, n = 0;
  char *xml = malloc(cap);
  int rc;
  if (!xml) return pa_fail(PA_ERR_NOMEM, "storage: out of memory");
  n += (size_t)snprintf(xml + n, cap - n, "<CompleteMultipartUpload>");
  for (int i = 0; i < u->n_parts; i++)
    n += (size_t)snprintf(xml + n, cap - n, "<Part><PartNumber>%d</PartNumber><ETag>%.100s</ETag></Part>", i + 1,
                          u->etags[i]);
  n += (size_t)snprintf(xml + n, cap - n, "</CompleteMultipartUpload>");
  char query[600];
  snprintf(query, sizeof query, "uploadId=%s", u->upload_id);
  s3_call q = {"POST", u->object, query, xml, n, REPLY_CAP};
  reply_buf b;
  rc = s3_call_run(u->s, &q, &b, NULL);
  /* S3 may answer 200 and put the failure in the body */
  if (rc == PA_OK && (!b.data || strstr(b.data, "<Error>")))
    rc = pa_fail(PA_ERR_IO, "storage: CompleteMultipartUpload %s: %.300s", u->object, b.data ? b.data : "(empty)");
  free(b.data);
  free(xml);
  return rc;
}

int pa_storage_upload_commit(pa_storage_upload *u, uint64_t *size) {
  int rc = PA_OK;
  if (u->s->local) {
    if (fchmod(u->fd, 0644) != 0 || fsync(u->fd) != 0)
      rc = pa_fail(PA_ERR_IO, "storage: write %s: %s", u->tmp, strerror(errno));
    int closed = close(u->fd);
    u->fd = -1;
    if (rc == PA_OK && (closed != 0 || rename(u->tmp, u->path) != 0))
      rc = pa_fail(PA_ERR_IO, "storage: write %s: %s", u->path, strerror(errno));
    if (rc == PA_OK) { /* renamed: nothing left to remove */
      free(u->tmp);
      u->tmp = NULL;
    }
  } else {
    if (u->part_len || u->n_parts == 0) rc = put_part(u); /* the last (or only) part may be small */
    if (rc == PA_OK) rc = complete_multipart(u);
  }
  if (rc == PA_OK && size) *size = u->size;
  if (rc == PA_OK && !u->s->local) {
    free(u->upload_id); /* completed: nothing to abort */
    u->upload_id = NULL;
  }
  pa_storage_upload_abort(u);
  return rc;
}

void pa_storage_upload_abort(pa_storage_upload *u) {
  if (!u) return;
  if (u->fd >= 0) close(u->fd);
  if (u->tmp) unlink(u->tmp);
  if (u->upload_id) { /* best effort: S3 lifecycle rules reap what stays (s3rver lacks the call) */
    char query[600], *why = strdup(pa_errmsg()); /* the caller reports the failure that got here */
    snprintf(query, sizeof query, "uploadId=%s", u->upload_id);
    s3_call q = {"DELETE", u->object, query, NULL, 0, ERROR_BODY_CAP};
    reply_buf b;
    if (s3_call_run(u->s, &q, &b, NULL) == PA_OK) free(b.data);
    if (why) pa_fail(PA_ERR_IO, "%s", why);
    free(why);
  }
  for (int i = 0; i < u->n_parts; i++) free(u->etags[i]);
  free(u->etags);
  free(u->part);
  free(u->upload_id);
  free(u->object);
  free(u->path);
  free(u->tmp);
  free(u);
}
