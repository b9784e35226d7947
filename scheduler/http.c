/* The HTTP server: libmicrohttpd with a thread per connection, every socket watched with
 * poll() (select() would stop accepting at descriptor 1024: a thousand idle connections would
 * lock everyone out). Connections are capped in all and per client address, and one silent
 * for --idle-timeout is closed, so idle sockets cannot exhaust threads or descriptors. A
 * request's body is gathered (bounded by the route's size limit, 413 beyond it) before the
 * route runs; requests that wait for a job or stream its events block only their own thread.
 * Routing reads the raw path (http_path), never the path libmicrohttpd decoded whole.
 * Every request ends with one JSON line in the access log (--access-log). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "scheduler/http.h"
#include "scheduler/jobs_internal.h"

atomic_bool http_stopping;

struct sched_server {
  struct MHD_Daemon *d;
  const sched_config *c;
  int access_fd; /* -1: no access log */
};

/* The request being answered on this thread (a thread per connection, and handlers run
 * inside on_request), so that http_queue can record what it sends without every handler
 * passing its request along. */
static _Thread_local http_req *tl_rq;

enum MHD_Result http_queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r, int64_t bytes) {
  http_req *rq = tl_rq;
  if (rq && rq->request_id[0] && MHD_add_response_header(r, "X-Request-Id", rq->request_id) != MHD_YES) return MHD_NO;
  enum MHD_Result ok = MHD_queue_response(conn, status, r);
  if (rq && ok == MHD_YES) {
    rq->status = status;
    rq->bytes = bytes;
  }
  return ok;
}

enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *content_type,
                           const char *body, size_t len) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES) {
    MHD_destroy_response(r);
    return MHD_NO;
  }
  enum MHD_Result ok = http_queue(conn, status, r, (int64_t)len);
  MHD_destroy_response(r);
  return ok;
}

enum MHD_Result http_json(struct MHD_Connection *conn, unsigned status, const char *json) {
  return http_reply(conn, status, "application/json", json, strlen(json));
}

enum MHD_Result http_error(struct MHD_Connection *conn, unsigned status, const char *code,
                           const char *field, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t *e = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", msg, "field", field ? field : "");
  char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
  json_decref(e);
  enum MHD_Result ok = text ? http_json(conn, status, text)
                            : http_json(conn, 500, "{\"error\":{\"code\":\"internal\",\"message\":\"\",\"field\":\"\"}}");
  free(text);
  return ok;
}

enum MHD_Result http_proto_error(struct MHD_Connection *conn, const pw_error *err, const char *prefix) {
  /* Bytes that are not a readable message at all are a bad request; a readable message with
   * a wrong field is unprocessable (the client must change a value, not its encoder). */
  bool syntax = err->code == PW_E_MALFORMED || err->code == PW_E_TRUNCATED || err->code == PW_E_TOO_DEEP ||
                err->code == PW_E_DUPLICATE_KEY || err->code == PW_E_INVALID_UTF8 ||
                err->code == PW_E_UNSUPPORTED_VERSION || (err->code == PW_E_TOO_LARGE && !err->field[0]);
  char field[192];
  snprintf(field, sizeof field, "%s%s%s", prefix ? prefix : "", prefix && err->field[0] ? "." : "", err->field);
  return http_error(conn, syntax ? 400 : 422, pw_code_name(err->code), field, "%s", err->message);
}

enum MHD_Result http_status_error(struct MHD_Connection *conn, int rc) {
  switch (rc) {
  case PA_ERR_NOTFOUND: return http_error(conn, 404, "not_found", "", "%s", pa_errmsg());
  case PA_ERR_INVALID: return http_error(conn, 409, "conflict", "", "%s", pa_errmsg());
  case PA_ERR_FORMAT: return http_error(conn, 422, "invalid_value", "", "%s", pa_errmsg());
  case PA_ERR_NOMEM: return http_error(conn, 503, "no_memory", "", "%s", pa_errmsg());
  default: return http_error(conn, 503, "unavailable", "", "registry unavailable: %s", pa_errmsg());
  }
}

const char *http_header(struct MHD_Connection *conn, const char *name) {
  return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

const char *http_arg(struct MHD_Connection *conn, const char *name) {
  return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

bool http_content_type_is(struct MHD_Connection *conn, const char *type) {
  const char *ct = http_header(conn, MHD_HTTP_HEADER_CONTENT_TYPE);
  size_t n = strlen(type);
  return ct && strncasecmp(ct, type, n) == 0 && (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

/* ---- bodies ------------------------------------------------------------------------- */

static size_t body_limit(const sched_config *c, const char *url) {
  return strncmp(url, "/v1/batches", 11) == 0 ? c->max_batch_body : c->max_body;
}

/* ---- the raw path -------------------------------------------------------------------- */

static int hex_digit(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Decodes one segment in place; false when it is badly encoded or decodes to NUL or '/'. */
static bool decode_segment(char *s) {
  char *out = s;
  for (char *in = s; *in; in++) {
    if (*in != '%') {
      *out++ = *in;
      continue;
    }
    int hi = hex_digit(in[1]), lo = hi < 0 ? -1 : hex_digit(in[2]);
    if (lo < 0) return false;
    char ch = (char)(hi << 4 | lo);
    if (ch == 0 || ch == '/') return false;
    *out++ = ch;
    in += 2;
  }
  *out = 0;
  return true;
}

int http_path_parse(const char *raw, http_path *p) {
  memset(p, 0, sizeof *p);
  size_t len = strcspn(raw, "?#");
  if (!(p->buf = malloc(len + 1))) return pa_fail(PA_ERR_NOMEM, "out of memory");
  memcpy(p->buf, raw, len);
  p->buf[len] = 0;
  if (p->buf[0] != '/') return PA_OK; /* "*" or an absolute URI: no route */
  p->ok = true;
  if (!p->buf[1]) return PA_OK; /* "/" */
  for (char *seg = p->buf + 1; seg; p->n++) {
    char *slash = strchr(seg, '/');
    if (slash) *slash = 0;
    if (p->n == HTTP_MAX_SEGMENTS || !decode_segment(seg)) {
      p->ok = false;
      return PA_OK;
    }
    p->seg[p->n] = seg;
    seg = slash ? slash + 1 : NULL;
  }
  return PA_OK;
}

void http_path_free(http_path *p) {
  free(p->buf);
  memset(p, 0, sizeof *p);
}

/* libmicrohttpd calls this with the request target as sent, before it decodes anything; the
 * request state starts here so the router sees the raw path. */
static void *request_created(void *cls, const char *uri, struct MHD_Connection *conn) {
  (void)cls, (void)conn;
  http_req *rq = calloc(1, sizeof *rq);
  if (rq && (http_path_parse(uri, &rq->path) || !(rq->target = strdup(uri)))) {
    http_path_free(&rq->path);
    free(rq);
    rq = NULL;
  }
  return rq;
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A client's X-Request-Id is kept when it is 1..64 characters of [A-Za-z0-9._:-] (so it can
 * be logged and echoed as it is); otherwise the scheduler makes one. */
static void set_request_id(struct MHD_Connection *conn, http_req *rq) {
  const char *given = http_header(conn, "X-Request-Id");
  size_t n = given ? strlen(given) : 0;
  if (n && n < sizeof rq->request_id && strspn(given, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") == n) {
    memcpy(rq->request_id, given, n + 1);
    return;
  }
  unsigned char r[12];
  if (RAND_bytes(r, sizeof r) != 1) memset(r, 0, sizeof r);
  for (size_t i = 0; i < sizeof r; i++) snprintf(rq->request_id + 2 * i, 3, "%02x", r[i]);
}

static void begin(const sched_config *c, struct MHD_Connection *conn, const char *url, const char *method,
                  http_req *rq) {
  rq->begun = true;
  rq->start_us = now_us();
  snprintf(rq->method, sizeof rq->method, "%s", method);
  set_request_id(conn, rq);
  rq->limit = body_limit(c, url);
  const char *cl = http_header(conn, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl && strtoull(cl, NULL, 10) > rq->limit) rq->too_large = true; /* refused unread */
}

static bool append(http_req *rq, const char *data, size_t n) {
  if (rq->too_large || rq->len + n > rq->limit) {
    rq->too_large = true;
    return true; /* keep reading (and discarding) so the 413 reaches the client */
  }
  if (rq->len + n + 1 > rq->cap) {
    size_t cap = rq->cap ? rq->cap : 4096;
    while (cap < rq->len + n + 1) cap *= 2;
    char *b = realloc(rq->body, cap);
    if (!b) return false;
    rq->body = b;
    rq->cap = cap;
  }
  memcpy(rq->body + rq->len, data, n);
  rq->len += n;
  rq->body[rq->len] = 0;
  return true;
}

/* One JSON line: time, method, path (raw, with the query), status (0: no response was sent),
 * bytes (-1: a stream), duration_ms, remote, key (the API key's name), request_id. A single
 * write() on an O_APPEND descriptor, so concurrent lines never interleave. */
static void access_log(int fd, struct MHD_Connection *conn, const http_req *rq) {
  char when[40], remote[INET6_ADDRSTRLEN] = "";
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000);
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  const struct sockaddr *sa = ci ? ci->client_addr : NULL;
  if (sa && sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, remote, sizeof remote);
  else if (sa && sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, remote, sizeof remote);
  json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:I,s:f,s:s,s:s,s:s}", "time", when, "method", rq->method, "path",
                        rq->target ? rq->target : "", "status", (json_int_t)rq->status, "bytes",
                        (json_int_t)rq->bytes, "duration_ms", (double)(now_us() - rq->start_us) / 1000.0,
                        "remote", remote, "key", rq->key_id, "request_id", rq->request_id);
  char *line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
  json_decref(o);
  if (!line) return;
  size_t len = strlen(line);
  line[len] = '\n'; /* json_dumps leaves the NUL there: room for the newline */
  ssize_t w;
  do w = write(fd, line, len + 1);
  while (w < 0 && errno == EINTR);
  free(line);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
  (void)toe;
  sched_server *s = cls;
  http_req *rq = *con_cls;
  if (rq && rq->begun && s->access_fd >= 0) access_log(s->access_fd, conn, rq);
  if (rq) {
    free(rq->target);
    free(rq->body);
    http_path_free(&rq->path);
    free(rq);
  }
  *con_cls = NULL;
}

/* ---- authentication, limits and dispatch -------------------------------------------- */

static enum MHD_Result authorize(http_ctx *h) {
  const char *authz = http_header(h->conn, MHD_HTTP_HEADER_AUTHORIZATION);
  char from_query[300];
  const char *token = http_arg(h->conn, "access_token"); /* EventSource and <img> cannot set headers */
  if (!authz && token) {
    snprintf(from_query, sizeof from_query, "Bearer %s", token);
    authz = from_query;
  }
  switch (auth_check(h->c, authz, &h->key)) {
  case AUTH_MISSING: return http_error(h->conn, 401, "unauthorized", "", "a bearer API key is required");
  case AUTH_INVALID: return http_error(h->conn, 401, "unauthorized", "", "unknown API key");
  case AUTH_OK: break;
  }
  h->owner = h->key ? h->key->name : "anonymous";
  snprintf(h->rq->key_id, sizeof h->rq->key_id, "%s", h->owner);
  h->admin = !h->key || h->key->admin;
  double retry = 0;
  if (!ratelimit_take(h->c, h->owner, &retry)) {
    char after[32];
    snprintf(after, sizeof after, "%d", (int)retry + 1);
    static const char body[] = "{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many requests\",\"field\":\"\"}}";
    struct MHD_Response *r = MHD_create_response_from_buffer(sizeof body - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") == MHD_YES &&
                                 MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, after) == MHD_YES
                             ? http_queue(h->conn, 429, r, (int64_t)sizeof body - 1)
                             : MHD_NO;
    MHD_destroy_response(r);
    return ok;
  }
  return api_route(h);
}

static enum MHD_Result dashboard_page(http_ctx *h) {
  return http_reply(h->conn, 200, "text/html; charset=utf-8", sched_dashboard_html, strlen(sched_dashboard_html));
}

/* Liveness: 503 from the moment the process starts stopping, so balancers stop sending. */
static enum MHD_Result healthz(http_ctx *h) {
  return http_stopping ? http_error(h->conn, 503, "stopping", "", "shutting down")
                       : http_json(h->conn, 200, "{\"status\":\"ok\"}");
}

/* Ready when Redis answers. The body also reports the worker fleet: how many workers are
 * live and which advertise other limits than this scheduler checks submissions with
 * (fleet_mismatch; still ready: the scheduler can take jobs, the operator must align them). */
static enum MHD_Result readyz(http_ctx *h) {
  redisReply *r = sched_cmdf(h->c, "PING");
  bool ok = r && r->type == REDIS_REPLY_STATUS;
  if (r && r->type == REDIS_REPLY_ERROR) pa_fail(PA_ERR_IO, "redis PING: %s", r->str); /* NOAUTH, ... */
  if (r) freeReplyObject(r);
  if (!ok || http_stopping) return http_error(h->conn, 503, "unavailable", "", "redis unreachable: %s", pa_errmsg());
  json_t *differ = NULL;
  int live = 0, mismatched = 0;
  char *mine = pa_job_limits_json(&h->c->limits, NULL);
  json_t *limits = mine ? json_loads(mine, 0, NULL) : NULL;
  free(mine);
  json_t *body = sched_fleet(h->c, &differ, &live, &mismatched) == PA_OK
                     ? json_pack("{s:s, s:o, s:{s:i, s:o}}", "status", "ready", "limits", limits ? limits : json_null(),
                                 "fleet", "workers", live, "mismatch", differ)
                     : NULL;
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  enum MHD_Result rc = text ? http_json(h->conn, 200, text) : http_json(h->conn, 200, "{\"status\":\"ready\"}");
  free(text);
  return rc;
}

/* docs/openapi.json, linked in (scheduler/CMakeLists.txt) */
static enum MHD_Result openapi_page(http_ctx *h) {
  return http_reply(h->conn, 200, "application/json", sched_openapi_json, (size_t)(sched_openapi_json_end - sched_openapi_json));
}

static enum MHD_Result metrics_page(http_ctx *h) {
  char *text = sched_metrics_render(h->c);
  if (!text) return http_error(h->conn, 503, "unavailable", "", "metrics unavailable");
  enum MHD_Result ok = http_reply(h->conn, 200, "text/plain; version=0.0.4", text, strlen(text));
  free(text);
  return ok;
}

typedef enum MHD_Result (*http_handler)(http_ctx *h);

/* Routes without authentication, GET/HEAD only: "" is "/". */
static const struct {
  const char *name;
  http_handler handler;
} PUBLIC_ROUTES[] = {
    {"", dashboard_page}, {"healthz", healthz}, {"readyz", readyz}, {"metrics", metrics_page},
    {"openapi.json", openapi_page},
};

static http_handler public_handler(const http_path *p) {
  if (p->n > 1) return NULL;
  const char *name = p->n ? p->seg[0] : "";
  for (size_t i = 0; i < sizeof PUBLIC_ROUTES / sizeof PUBLIC_ROUTES[0]; i++)
    if (!strcmp(name, PUBLIC_ROUTES[i].name)) return PUBLIC_ROUTES[i].handler;
  return NULL;
}

static enum MHD_Result dispatch(sched_server *s, struct MHD_Connection *conn, const char *url, const char *method,
                                const char *upload, size_t *upload_size, http_req *rq) {
  if (!rq->begun) {
    begin(s->c, conn, url, method, rq);
    return MHD_YES;
  }
  if (*upload_size) {
    bool ok = append(rq, upload, *upload_size);
    *upload_size = 0;
    return ok ? MHD_YES : MHD_NO;
  }
  http_ctx h = {.c = s->c, .conn = conn, .method = method, .url = url, .rq = rq};
  if (rq->too_large)
    return http_error(conn, 413, "too_large", "", "the request body exceeds %zu bytes", rq->limit);
  http_handler pub = rq->path.ok ? public_handler(&rq->path) : NULL;
  if (pub) {
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) return http_error(conn, 405, "method_not_allowed", "", "use GET");
    return pub(&h);
  }
  if (!rq->path.ok || rq->path.n < 2 || strcmp(rq->path.seg[0], "v1"))
    return http_error(conn, 404, "not_found", "", "no route %s", url);
  return authorize(&h);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  (void)version;
  http_req *rq = *con_cls;
  if (!rq) return MHD_NO; /* out of memory in request_created: drop the connection */
  tl_rq = rq;
  enum MHD_Result ok = dispatch(cls, conn, url, method, upload, upload_size, rq);
  tl_rq = NULL;
  return ok;
}

static void close_access_log(int fd) {
  if (fd > STDERR_FILENO) close(fd);
}

/* "-": stderr; "off": none; else the file, appended to (created 0640). */
static int open_access_log(const char *spec, int *fd) {
  *fd = -1;
  if (!strcmp(spec, "off")) return PA_OK;
  if (!strcmp(spec, "-")) {
    *fd = STDERR_FILENO;
    return PA_OK;
  }
  *fd = open(spec, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  return *fd >= 0 ? PA_OK : pa_fail(PA_ERR_IO, "--access-log %s: %s", spec, strerror(errno));
}

int sched_server_start(const sched_config *c, sched_server **out) {
  sched_server *s = calloc(1, sizeof *s);
  if (!s) return pa_fail(PA_ERR_NOMEM, "server");
  s->c = c;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->listen_port)};
  if (inet_pton(AF_INET, c->listen_host, &addr.sin_addr) != 1) {
    free(s);
    return pa_fail(PA_ERR_INVALID, "--listen %s: want an IPv4 address", c->listen_host);
  }
  if (open_access_log(c->access_log, &s->access_fd)) {
    free(s);
    return PA_ERR_IO;
  }
  http_stopping = false;
  s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                              MHD_USE_ERROR_LOG,
                          (uint16_t)c->listen_port, NULL, NULL, on_request, s,
                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                          MHD_OPTION_URI_LOG_CALLBACK, request_created, NULL,
                          MHD_OPTION_NOTIFY_COMPLETED, completed, s,
                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->idle_timeout_s,
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
                          MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)c->max_per_ip,
                          MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                          MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512 * 1024),
                          MHD_OPTION_END);
  if (!s->d) {
    close_access_log(s->access_fd);
    free(s);
    return pa_fail(PA_ERR_IO, "cannot listen on %s:%d", c->listen_host, c->listen_port);
  }
  *out = s;
  return PA_OK;
}

int sched_server_port(const sched_server *s) {
  const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
  return i ? i->port : -1;
}

int sched_server_connections(const sched_server *s) {
  const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
  return i ? (int)i->num_connections : -1;
}

void sched_server_stop(sched_server *s) {
  if (!s) return;
  http_stopping = true; /* SSE streams and waits end at their next wake-up */
  hub_publish("", "stop", NULL);
  MHD_stop_daemon(s->d);
  close_access_log(s->access_fd);
  free(s);
}
