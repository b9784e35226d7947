/* The /v1 routes: jobs, their events (Server-Sent Events) and outputs, dead letters.
 * Every job body goes through proto (pw_job_from_json) exactly as the workers decode it. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <jansson.h>

#include "scheduler/http.h"
#include "scheduler/jobs_internal.h"

/* ---- POST /v1/jobs ------------------------------------------------------------------ */

/* The scheduler assigns ids: the body is a Job without "id", so the id is spliced in front
 * of the client's first member and proto parses the whole as one message (a client "id" then
 * fails as a duplicate key). One parse, no JSON tree rebuilt here. */
static char *splice_id(const char *body, size_t len, const char *id, size_t *out_len) {
  size_t i = 0;
  while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) i++;
  if (i == len || body[i] != '{') return NULL;
  size_t j = i + 1;
  while (j < len && (body[j] == ' ' || body[j] == '\t' || body[j] == '\r' || body[j] == '\n')) j++;
  bool empty = j < len && body[j] == '}';
  size_t cap = len + strlen(id) + 16;
  char *s = malloc(cap);
  if (!s) return NULL;
  int n = snprintf(s, cap, "{\"id\":\"%s\"%s", id, empty ? "" : ",");
  memcpy(s + n, body + i + 1, len - i - 1);
  *out_len = (size_t)n + len - i - 1;
  s[*out_len] = 0;
  return s;
}

/* Only on the error path: was the duplicate key the client's own "id"? */
static bool client_sent_id(const char *body, size_t len) {
  json_t *j = body ? json_loadb(body, len, 0, NULL) : NULL;
  bool has = json_is_object(j) && json_object_get(j, "id");
  json_decref(j);
  return has;
}

/* Prefer: wait=N (RFC 7240), capped by --max-wait; 0 when absent. */
static int prefer_wait(const http_ctx *h) {
  const char *p = http_header(h->conn, "Prefer");
  const char *w = p ? strstr(p, "wait=") : NULL;
  if (!w) return 0;
  long n = strtol(w + 5, NULL, 10);
  if (n < 0) n = 0;
  return n > h->c->max_wait_s ? h->c->max_wait_s : (int)n;
}

/* Blocks until the job settles or wait_s pass; re-reads the hash after every event. */
static enum MHD_Result reply_after_wait(http_ctx *h, const char *id, uint64_t cursor, int wait_s) {
  int64_t until = now_ms() + (int64_t)wait_s * 1000;
  char *json = NULL, status[32] = "";
  int rc;
  for (;;) {
    free(json);
    json = NULL;
    if ((rc = jobs_render(h->c, id, NULL, &json, status, sizeof status))) return http_status_error(h->conn, rc);
    int64_t left = until - now_ms();
    if ((jobs_is_final(status)) || left <= 0 || http_stopping) break;
    hub_event ev;
    if (hub_wait(&cursor, id, left > 250 ? 250 : (int)left, &ev)) free(ev.data);
  }
  enum MHD_Result ok = http_json(h->conn, jobs_is_final(status) ? 200 : 202, json);
  free(json);
  return ok;
}

static enum MHD_Result created(http_ctx *h, const char *id, int wait_s, uint64_t cursor) {
  if (wait_s > 0) return reply_after_wait(h, id, cursor, wait_s);
  char body[256], loc[128];
  snprintf(body, sizeof body, "{\"id\":\"%s\",\"status\":\"queued\",\"attempts\":0,\"times\":{\"created_ms\":%" PRId64 "}}",
           id, now_ms());
  snprintf(loc, sizeof loc, "/v1/jobs/%s", id);
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") == MHD_YES &&
                               MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, loc) == MHD_YES
                           ? http_queue(h->conn, 202, r, (int64_t)strlen(body))
                           : MHD_NO;
  MHD_destroy_response(r);
  return ok;
}

/* The Idempotency-Key header wins over the body's field; proto validates it either way. */
static int apply_idempotency_header(http_ctx *h, pw_job *job, pw_error *err) {
  const char *k = http_header(h->conn, "Idempotency-Key");
  if (!k) return 0;
  free(job->idempotency_key);
  job->idempotency_key = strdup(k);
  if (!job->idempotency_key) {
    err->code = PW_E_NO_MEMORY;
    snprintf(err->field, sizeof err->field, "idempotency_key");
    snprintf(err->message, sizeof err->message, "out of memory");
    return -1;
  }
  return pw_job_validate(job, err);
}

static enum MHD_Result submit_job(http_ctx *h) {
  if (!http_content_type_is(h->conn, "application/json"))
    return http_error(h->conn, 415, "unsupported_media_type", "", "send the job as application/json");
  char id[40], *text = NULL, sha[65], existing[160] = "";
  size_t text_len = 0;
  pw_job job;
  pw_error err;
  enum MHD_Result ok;
  pw_job_init(&job);
  jobs_new_id(id, sizeof id);
  if (!(text = splice_id(h->rq->body ? h->rq->body : "", h->rq->len, id, &text_len))) {
    ok = http_error(h->conn, 400, "malformed", "", "the body must be a JSON object");
    goto done;
  }
  if (pw_job_from_json(text, text_len, &job, &err) || apply_idempotency_header(h, &job, &err) ||
      pa_job_admit(&job, &h->c->limits, &err) || sched_webhook_check(h->c, &job, &err)) {
    if (err.code == PW_E_DUPLICATE_KEY && client_sent_id(h->rq->body, h->rq->len))
      ok = http_error(h->conn, 422, "invalid_value", "id", "the scheduler assigns job ids");
    else
      ok = http_proto_error(h->conn, &err, NULL);
    goto done;
  }
  if (job.has_output && !h->admin) {
    ok = http_error(h->conn, 403, "forbidden", "output", "only admin keys may choose where outputs are stored");
    goto done;
  }
  sha256_hex(h->rq->body ? h->rq->body : "", h->rq->len, sha);
  submit_outcome outcome;
  int wait_s = prefer_wait(h);
  uint64_t cursor = hub_cursor();
  int rc = jobs_submit(h->c, &job, h->owner, h->c->max_active, sha, NULL, 0, &outcome, existing, sizeof existing);
  if (rc) ok = http_status_error(h->conn, rc);
  else if (outcome == SUBMIT_CREATED) {
    sched_metrics_count(SCHED_M_SUBMITTED);
    ok = created(h, id, wait_s, cursor);
  } else if (outcome == SUBMIT_EXISTING) ok = reply_after_wait(h, existing, cursor, wait_s);
  else if (outcome == SUBMIT_IDEM_CONFLICT)
    ok = http_error(h->conn, 409, "conflict", "idempotency_key",
                    "this Idempotency-Key was used for another request (job %s)", existing);
  else ok = http_error(h->conn, 429, "quota_exceeded", "", "more than %d active jobs for this key", h->c->max_active);
done:
  free(text);
  pw_job_free(&job);
  return ok;
}

/* ---- GET /v1/jobs ------------------------------------------------------------------- */

static enum MHD_Result list_jobs(http_ctx *h) {
  const char *status = http_arg(h->conn, "status"), *cursor = http_arg(h->conn, "cursor");
  const char *lim = http_arg(h->conn, "limit");
  if (status && strcmp(status, "queued") && strcmp(status, "running") && !jobs_is_final(status))
    return http_error(h->conn, 422, "invalid_value", "status",
                      "status must be queued, running, succeeded, failed or canceled");
  long limit = 50;
  if (lim) {
    char *end;
    limit = strtol(lim, &end, 10);
    if (*end || limit < 1 || limit > 1000) return http_error(h->conn, 422, "out_of_range", "limit", "limit is 1..1000");
  }
  char *json = NULL;
  int rc = jobs_list(h->c, h->owner, status, cursor, (int)limit, &json);
  if (rc == PA_ERR_INVALID) return http_error(h->conn, 422, "invalid_value", "cursor", "%s", pa_errmsg());
  if (rc) return http_status_error(h->conn, rc);
  enum MHD_Result ok = http_json(h->conn, 200, json);
  free(json);
  return ok;
}

static enum MHD_Result get_job(http_ctx *h, const char *id) {
  char *json = NULL;
  int rc = jobs_render(h->c, id, h->owner, &json, NULL, 0);
  if (rc) return http_status_error(h->conn, rc);
  enum MHD_Result ok = http_json(h->conn, 200, json);
  free(json);
  return ok;
}

static enum MHD_Result cancel_job(http_ctx *h, const char *id) {
  char state[32];
  int rc = jobs_cancel(h->c, id, h->owner, state, sizeof state);
  if (rc == PA_ERR_INVALID) return http_error(h->conn, 409, "conflict", "", "job %s already %s", id, state);
  if (rc) return http_status_error(h->conn, rc);
  return get_job(h, id) == MHD_NO ? MHD_NO : MHD_YES;
}

/* ---- GET /v1/jobs/{id}/events: Server-Sent Events ------------------------------------- */

typedef struct {
  const sched_config *c;
  char id[PW_MAX_ID_BYTES + 1];
  char owner[64];
  uint64_t cursor;
  char *out; /* pending bytes */
  size_t out_len, out_off;
  char last_status[32];
  bool done, started;
  int64_t idle_since;
} sse_state;

static void sse_append(sse_state *s, const char *event, const char *data) {
  size_t need = strlen(event) + strlen(data) + 32;
  char *b = realloc(s->out, s->out_len + need);
  if (!b) return;
  s->out = b;
  s->out_len += (size_t)snprintf(b + s->out_len, need, "event: %s\ndata: %s\n\n", event, data);
}

/* Emits a status event when the job's status changed; ends the stream once settled. */
static void sse_status(sse_state *s) {
  char *json = NULL, status[32];
  if (jobs_render(s->c, s->id, s->owner, &json, status, sizeof status)) {
    s->done = true;
    return;
  }
  if (strcmp(status, s->last_status) != 0 && !strchr(status, '?')) {
    sse_append(s, "status", json);
    snprintf(s->last_status, sizeof s->last_status, "%s", status);
  }
  if (jobs_is_final(status)) s->done = true;
  free(json);
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  sse_state *s = cls;
  while (s->out_off == s->out_len) {
    s->out_off = s->out_len = 0;
    if (s->done || http_stopping) return MHD_CONTENT_READER_END_OF_STREAM;
    if (!s->started) {
      s->started = true;
      sse_status(s);
      continue;
    }
    hub_event ev;
    if (hub_wait(&s->cursor, s->id, 1000, &ev)) {
      bool step_event = !strcmp(ev.type, "progress") || !strcmp(ev.type, "preview");
      if (step_event || !strcmp(ev.type, "start")) sse_append(s, ev.type, ev.data);
      free(ev.data);
      s->idle_since = now_ms();
      if (!step_event) sse_status(s);
    } else {
      sse_status(s); /* also catches transitions whose event this replica missed */
      if (s->out_len == 0 && now_ms() - s->idle_since > 10000) {
        /* A comment line every 10 s finds closed clients and keeps proxies from timing out. */
        sse_append(s, "ping", "{}");
        s->idle_since = now_ms();
      }
    }
  }
  size_t n = s->out_len - s->out_off < max ? s->out_len - s->out_off : max;
  memcpy(buf, s->out + s->out_off, n);
  s->out_off += n;
  return (ssize_t)n;
}

static void sse_free(void *cls) {
  sse_state *s = cls;
  free(s->out);
  free(s);
}

static enum MHD_Result job_events(http_ctx *h, const char *id) {
  char *json = NULL;
  int rc = jobs_render(h->c, id, h->owner, &json, NULL, 0); /* 404 before the stream starts */
  free(json);
  if (rc) return http_status_error(h->conn, rc);
  sse_state *s = calloc(1, sizeof *s);
  if (!s) return MHD_NO;
  s->c = h->c;
  s->cursor = hub_cursor();
  s->idle_since = now_ms();
  snprintf(s->id, sizeof s->id, "%s", id);
  snprintf(s->owner, sizeof s->owner, "%s", h->owner);
  struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, s, sse_free);
  if (!r) {
    sse_free(s);
    return MHD_NO;
  }
  enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream") == MHD_YES &&
                               MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") == MHD_YES
                           ? http_queue(h->conn, 200, r, -1)
                           : MHD_NO;
  MHD_destroy_response(r);
  return ok;
}

/* ---- GET /v1/jobs/{id}/outputs/{n}: a finished image (read from the store when the result
 * has no URL, as for directory stores; presigned URLs redirected), so the dashboard can show
 * it ----------------------------------------------------------------------------------- */

static const char *image_type(const char *name) {
  size_t n = strlen(name); /* the worker names outputs N.png, N.jpg or N.webp */
  return n > 4 && !strcmp(name + n - 4, ".jpg") ? "image/jpeg" : n > 5 && !strcmp(name + n - 5, ".webp") ? "image/webp" : "image/png";
}

#define OUTPUT_SERVE_MAX ((size_t)64 << 20)

/* Output `object` of the job read back from its store. */
static enum MHD_Result serve_object(http_ctx *h, const redisReply *hr, const char *object) {
  size_t jl = 0, len = 0;
  const char *jb = jobs_field(hr, "job", &jl);
  pw_job job;
  pw_error err;
  pa_storage *store = NULL;
  void *data = NULL;
  pw_job_init(&job);
  int rc = jb && pw_job_decode(jb, jl, &job, &err) == 0 ? sched_storage_of_job(h->c, &job, &store) : PA_ERR_FORMAT;
  if (rc == PA_OK) rc = pa_storage_get(store, object, OUTPUT_SERVE_MAX, &data, &len);
  pw_job_free(&job);
  if (rc == PA_ERR_NOTFOUND || rc == PA_ERR_FORMAT) return http_error(h->conn, 404, "not_found", "", "output file is gone");
  if (rc) return http_error(h->conn, 503, "unavailable", "", "storage: %s", pa_errmsg());
  struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(data);
    return MHD_NO;
  }
  enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, image_type(object)) == MHD_YES
                           ? http_queue(h->conn, 200, r, (int64_t)len)
                           : MHD_NO;
  MHD_destroy_response(r);
  return ok;
}

static enum MHD_Result serve_file(http_ctx *h, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    if (fd >= 0) close(fd);
    return http_error(h->conn, 404, "not_found", "", "output file is gone");
  }
  struct MHD_Response *r = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
  if (!r) {
    close(fd);
    return MHD_NO;
  }
  enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, image_type(path)) == MHD_YES
                           ? http_queue(h->conn, 200, r, (int64_t)st.st_size)
                           : MHD_NO;
  MHD_destroy_response(r);
  return ok;
}

static enum MHD_Result job_output(http_ctx *h, const char *id, const char *index) {
  redisReply *hr = NULL;
  int rc = jobs_fetch(h->c, id, &hr);
  if (rc) return http_status_error(h->conn, rc);
  const char *owner = jobs_field(hr, "owner", NULL);
  size_t len = 0;
  const char *mp = jobs_field(hr, "result", &len);
  pw_result res;
  pw_error err;
  pw_result_init(&res);
  long n = strtol(index, NULL, 10);
  enum MHD_Result ok;
  if (!owner || strcmp(owner, h->owner) || !mp || pw_result_decode(mp, len, &res, &err) || n < 0 ||
      (size_t)n >= res.n_outputs) {
    ok = http_error(h->conn, 404, "not_found", "", "no output %s of job %s", index, id);
  } else if (!res.outputs[n].url) {
    ok = serve_object(h, hr, res.outputs[n].key);
  } else if (!strncmp(res.outputs[n].url, "file://", 7)) { /* recorded by an older worker */
    ok = serve_file(h, res.outputs[n].url + 7);
  } else {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    ok = r && MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, res.outputs[n].url) == MHD_YES
             ? http_queue(h->conn, 302, r, 0)
             : MHD_NO;
    if (r) MHD_destroy_response(r);
  }
  pw_result_free(&res);
  freeReplyObject(hr);
  return ok;
}

/* GET /v1/jobs/{id}/preview: the latest preview image of a job with preview_every, served as
 * its outputs are (read back from the store by key, or a 302 to its URL); 404 before the first one. */
static enum MHD_Result job_preview(http_ctx *h, const char *id) {
  redisReply *hr = NULL;
  int rc = jobs_fetch(h->c, id, &hr);
  if (rc) return http_status_error(h->conn, rc);
  const char *owner = jobs_field(hr, "owner", NULL), *url = jobs_field(hr, "preview_url", NULL);
  enum MHD_Result ok;
  if (!owner || strcmp(owner, h->owner) || !url || !*url) {
    ok = http_error(h->conn, 404, "not_found", "", "no preview of job %s (yet)", id);
  } else if (!strncmp(url, "file://", 7)) { /* recorded by an older worker */
    ok = serve_file(h, url + 7);
  } else if (strncmp(url, "https://", 8) && strncmp(url, "http://", 7)) { /* a key in the job's store */
    ok = serve_object(h, hr, url);
  } else {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    ok = r && MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, url) == MHD_YES ? http_queue(h->conn, 302, r, 0)
                                                                                     : MHD_NO;
    if (r) MHD_destroy_response(r);
  }
  freeReplyObject(hr);
  return ok;
}

/* ---- GET /v1/jobs/{id}/deliveries (and a batch's): the workers' webhook attempts ------- */

enum MHD_Result api_deliveries(http_ctx *h, const char *id, bool batch) {
  char *json = NULL;
  int rc = sched_webhook_deliveries(h->c, id, h->owner, batch, &json);
  if (rc) return http_status_error(h->conn, rc);
  enum MHD_Result ok = http_json(h->conn, 200, json);
  free(json);
  return ok;
}

/* ---- /v1/deadletters ---------------------------------------------------------------- */

static enum MHD_Result deadletters(http_ctx *h, const char *const *seg, int n) {
  if (!h->admin) return http_error(h->conn, 403, "forbidden", "", "dead letters need an admin key");
  if (n == 0 && !strcmp(h->method, "GET")) {
    const char *lim = http_arg(h->conn, "limit");
    long limit = lim ? strtol(lim, NULL, 10) : 50;
    if (limit < 1 || limit > 1000) return http_error(h->conn, 422, "out_of_range", "limit", "limit is 1..1000");
    char *json = NULL;
    int rc = dlq_list(h->c, http_arg(h->conn, "cursor"), (int)limit, &json);
    if (rc == PA_ERR_INVALID) return http_error(h->conn, 422, "invalid_value", "cursor", "%s", pa_errmsg());
    if (rc) return http_status_error(h->conn, rc);
    enum MHD_Result ok = http_json(h->conn, 200, json);
    free(json);
    return ok;
  }
  if (n == 2 && !strcmp(seg[1], "requeue") && !strcmp(h->method, "POST")) {
    char job_id[PW_MAX_ID_BYTES + 1];
    int rc = dlq_requeue(h->c, seg[0], job_id, sizeof job_id);
    if (rc) return http_status_error(h->conn, rc);
    char body[160];
    snprintf(body, sizeof body, "{\"job_id\":\"%s\",\"status\":\"queued\"}", job_id);
    return http_json(h->conn, 202, body);
  }
  return http_error(h->conn, 404, "not_found", "", "no route %s %s", h->method, h->url);
}

/* ---- dispatch ----------------------------------------------------------------------- */

static bool valid_id(const char *s, size_t n) {
  if (n == 0 || n > PW_MAX_ID_BYTES || s[0] == '.') return false;
  for (size_t i = 0; i < n; i++)
    if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-", s[i])) return false;
  return true;
}

/* seg: what follows /v1/jobs. */
static enum MHD_Result job_routes(http_ctx *h, const char *const *seg, int n) {
  bool get = !strcmp(h->method, "GET"), post = !strcmp(h->method, "POST");
  if (n == 0) {
    if (post) return submit_job(h);
    if (get) return list_jobs(h);
    return http_error(h->conn, 405, "method_not_allowed", "", "use GET or POST");
  }
  const char *id = seg[0];
  if (!valid_id(id, strlen(id))) return http_error(h->conn, 404, "not_found", "", "no such job");
  if (n == 1 && get) return get_job(h, id);
  if (n == 2 && !strcmp(seg[1], "cancel") && post) return cancel_job(h, id);
  if (n == 2 && !strcmp(seg[1], "events") && get) return job_events(h, id);
  if (n == 3 && !strcmp(seg[1], "outputs") && get) return job_output(h, id, seg[2]);
  if (n == 2 && !strcmp(seg[1], "deliveries") && get) return api_deliveries(h, id, false);
  if (n == 2 && !strcmp(seg[1], "preview") && get) return job_preview(h, id);
  return http_error(h->conn, 404, "not_found", "", "no route %s %s", h->method, h->url);
}

/* The collections under /v1 (http.c checked segment 0 is "v1" and that there are >= 2). */
enum MHD_Result api_route(http_ctx *h) {
  const http_path *p = &h->rq->path;
  const char *collection = p->seg[1];
  const char *const *rest = p->seg + 2;
  int n = p->n - 2;
  if (!strcmp(collection, "jobs")) return job_routes(h, rest, n);
  if (!strcmp(collection, "batches")) return api_batches(h, rest, n);
  if (!strcmp(collection, "deadletters")) return deadletters(h, rest, n);
  return http_error(h->conn, 404, "not_found", "", "no route %s %s", h->method, h->url);
}
