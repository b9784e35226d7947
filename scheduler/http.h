/* The HTTP plumbing shared by the scheduler's handlers (http.c: server, bodies, replies;
 * api.c: the /v1 routes; batch_api.c: batches). */
#ifndef PAELLA_SCHEDULER_HTTP_H
#define PAELLA_SCHEDULER_HTTP_H

#include <microhttpd.h>

#include "scheduler/sched.h"

/* The request path split on '/' BEFORE percent-decoding, then each segment decoded: an
 * encoded '/' (%2F) stays inside its segment and can never make a new route, and a segment
 * that decodes to a NUL byte (or is badly encoded) makes the whole path unroutable (404).
 * "/" has 0 segments, "/v1/jobs/ID" has 3. */
#define HTTP_MAX_SEGMENTS 8
typedef struct {
  int n;
  bool ok;                            /* false: no route can match (bad encoding, NUL, '/', too deep) */
  const char *seg[HTTP_MAX_SEGMENTS]; /* into buf */
  char *buf;
} http_path;

typedef struct {
  char *body;
  size_t len, cap, limit;
  bool too_large, begun;
  http_path path;
  /* for the access log */
  char *target;          /* the request target as sent (path and query) */
  char method[16];
  char key_id[64];       /* the API key's name once authenticated, never the secret */
  char request_id[65];   /* X-Request-Id as sent (when sane), else generated; echoed back */
  int64_t start_us;
  unsigned status;       /* 0: no response was queued (connection dropped) */
  int64_t bytes;         /* body bytes of the response, -1 for streams */
} http_req;

typedef struct {
  const sched_config *c;
  struct MHD_Connection *conn;
  const char *method, *url;
  http_req *rq;
  const sched_key *key; /* NULL in open mode */
  const char *owner;    /* key name, "anonymous" in open mode */
  bool admin;
} http_ctx;

extern atomic_bool http_stopping;

/* Every response goes out through here: it is recorded for the access log (status, body
 * bytes; -1 for a stream) and carries the request's X-Request-Id. */
enum MHD_Result http_queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r, int64_t bytes);
enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *content_type,
                           const char *body, size_t len);
enum MHD_Result http_json(struct MHD_Connection *conn, unsigned status, const char *json);
/* {"error":{"code","message","field"}} */
enum MHD_Result http_error(struct MHD_Connection *conn, unsigned status, const char *code,
                           const char *field, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* A proto validation failure: 400 for unreadable messages, 422 for invalid fields. */
enum MHD_Result http_proto_error(struct MHD_Connection *conn, const pw_error *err, const char *field_prefix);
/* 503 for Redis failures, 404/409/422 for the other pa_status codes. */
enum MHD_Result http_status_error(struct MHD_Connection *conn, int rc);
const char *http_header(struct MHD_Connection *conn, const char *name);
const char *http_arg(struct MHD_Connection *conn, const char *name);
bool http_content_type_is(struct MHD_Connection *conn, const char *type);

/* Splits and decodes a raw request target ("/a/b%20c?x=1"); the query is ignored. */
int http_path_parse(const char *raw, http_path *out);
void http_path_free(http_path *p);

/* Routes under /v1 get the segments after their own name: "/v1/jobs/ID/cancel" reaches the
 * jobs routes as {"ID", "cancel"}. */
enum MHD_Result api_route(http_ctx *h);
enum MHD_Result api_batches(http_ctx *h, const char *const *seg, int n);
/* GET .../{id}/deliveries of a job or a batch (api.c). */
enum MHD_Result api_deliveries(http_ctx *h, const char *id, bool batch);

#endif
