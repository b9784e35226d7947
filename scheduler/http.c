/* The HTTP server: libmicrohttpd with a thread per connection, every socket watched with
 * poll() (select() would stop accepting at descriptor 1024: a thousand idle connections would
 * lock everyone out). Connections are capped in all and per client address, and one silent
 * for --idle-timeout is closed, so idle sockets cannot exhaust threads or descriptors. A
 * request's body is gathered (bounded by the route's size limit, 413 beyond it) before the
 * route runs; requests that wait for a job or stream its events block only their own thread.
 * Routing reads the raw path (http_path), never the path libmicrohttpd decoded whole. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "scheduler/http.h"

atomic_bool http_stopping;

struct sched_server {
  struct MHD_Daemon *d;
  const sched_config *c;
};

enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *content_type,
                           const char *body, size_t len) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES) {
    MHD_destroy_response(r);
    return MHD_NO;
  }
  enum MHD_Result ok = MHD_queue_response(conn, status, r);
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
  if (rq && http_path_parse(uri, &rq->path)) {
    free(rq);
    rq = NULL;
  }
  return rq;
}

static void begin(const sched_config *c, struct MHD_Connection *conn, const char *url, http_req *rq) {
  rq->begun = true;
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

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)conn, (void)toe;
  http_req *rq = *con_cls;
  if (rq) {
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
  h->admin = !h->key || h->key->admin;
  double retry = 0;
  if (!ratelimit_take(h->c, h->owner, &retry)) {
    char after[32];
    snprintf(after, sizeof after, "%d", (int)retry + 1);
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen("{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many requests\",\"field\":\"\"}}"),
        (void *)"{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many requests\",\"field\":\"\"}}",
        MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") == MHD_YES &&
                                 MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, after) == MHD_YES
                             ? MHD_queue_response(h->conn, 429, r)
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

static enum MHD_Result readyz(http_ctx *h) {
  redisReply *r = sched_cmdf(h->c, "PING");
  bool ok = r && r->type == REDIS_REPLY_STATUS;
  if (r && r->type == REDIS_REPLY_ERROR) pa_fail(PA_ERR_IO, "redis PING: %s", r->str); /* NOAUTH, ... */
  if (r) freeReplyObject(r);
  return ok && !http_stopping ? http_json(h->conn, 200, "{\"status\":\"ready\"}")
                              : http_error(h->conn, 503, "unavailable", "", "redis unreachable: %s", pa_errmsg());
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

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  (void)version;
  sched_server *s = cls;
  http_req *rq = *con_cls;
  if (!rq) return MHD_NO; /* out of memory in request_created: drop the connection */
  if (!rq->begun) {
    begin(s->c, conn, url, rq);
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

int sched_server_start(const sched_config *c, sched_server **out) {
  sched_server *s = calloc(1, sizeof *s);
  if (!s) return pa_fail(PA_ERR_NOMEM, "server");
  s->c = c;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->listen_port)};
  if (inet_pton(AF_INET, c->listen_host, &addr.sin_addr) != 1) {
    free(s);
    return pa_fail(PA_ERR_INVALID, "--listen %s: want an IPv4 address", c->listen_host);
  }
  http_stopping = false;
  s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                              MHD_USE_ERROR_LOG,
                          (uint16_t)c->listen_port, NULL, NULL, on_request, s,
                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                          MHD_OPTION_URI_LOG_CALLBACK, request_created, NULL,
                          MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->idle_timeout_s,
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
                          MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)c->max_per_ip,
                          MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                          MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512 * 1024),
                          MHD_OPTION_END);
  if (!s->d) {
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
  free(s);
}
