/* POST /v1/batches and GET /v1/batches/{id}. A batch arrives either as a JSONL body (an
 * optional first line {"settings": {...}, "shard_size": N, "name": "..."} then one prompt
 * per line) or as multipart/form-data with the fields settings, shard_size, name and an
 * uploaded file of prompts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "scheduler/http.h"

typedef struct {
  batch_request r;
  char *file;
  size_t file_len;
  char shard[16];
  bool oom;
} form;

static void grow_append(form *f, char **buf, size_t *len, const char *data, size_t n) {
  char *b = realloc(*buf, *len + n + 1);
  if (!b) {
    f->oom = true;
    return;
  }
  memcpy(b + *len, data, n);
  *len += n;
  b[*len] = 0;
  *buf = b;
}

static enum MHD_Result form_field(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                  const char *content_type, const char *encoding, const char *data, uint64_t off,
                                  size_t size) {
  (void)kind, (void)filename, (void)content_type, (void)encoding, (void)off;
  form *f = cls;
  size_t dummy = 0;
  if (!strcmp(key, "file") || !strcmp(key, "prompts")) grow_append(f, &f->file, &f->file_len, data, size);
  else if (!strcmp(key, "settings")) {
    dummy = f->r.settings_json ? strlen(f->r.settings_json) : 0;
    grow_append(f, &f->r.settings_json, &dummy, data, size);
  } else if (!strcmp(key, "name")) {
    size_t have = strlen(f->r.name);
    snprintf(f->r.name + have, sizeof f->r.name - have, "%.*s", (int)size, data);
  } else if (!strcmp(key, "shard_size")) {
    size_t have = strlen(f->shard);
    snprintf(f->shard + have, sizeof f->shard - have, "%.*s", (int)size, data);
  }
  return f->oom ? MHD_NO : MHD_YES;
}

/* The first JSONL line is a header when it is an object without "prompt". */
static int split_header(form *f, const char *body, size_t len, pw_error *err) {
  const char *nl = memchr(body, '\n', len);
  size_t first = nl ? (size_t)(nl - body) : len;
  json_t *h = first && body[0] == '{' ? json_loadb(body, first, JSON_REJECT_DUPLICATES, NULL) : NULL;
  if (!h || json_object_get(h, "prompt")) {
    json_decref(h);
    f->r.items = (char *)body;
    f->r.items_len = len;
    return 0;
  }
  json_t *s = json_object_get(h, "settings"), *n = json_object_get(h, "name"), *ss = json_object_get(h, "shard_size");
  int rc = 0;
  if (s) f->r.settings_json = json_dumps(s, JSON_COMPACT | JSON_ENCODE_ANY);
  if (json_is_string(n)) snprintf(f->r.name, sizeof f->r.name, "%s", json_string_value(n));
  if (json_is_integer(ss)) snprintf(f->shard, sizeof f->shard, "%lld", (long long)json_integer_value(ss));
  if ((n && !json_is_string(n)) || (ss && !json_is_integer(ss))) {
    err->code = PW_E_INVALID_TYPE;
    snprintf(err->field, sizeof err->field, "%s", n && !json_is_string(n) ? "name" : "shard_size");
    snprintf(err->message, sizeof err->message, "wrong type");
    rc = -1;
  }
  json_decref(h);
  f->r.items = (char *)body + first + (nl != NULL);
  f->r.items_len = len - first - (nl != NULL);
  return rc;
}

/* Batch names become job id prefixes and directory names: the job id charset, <= 56 bytes
 * so "{name}-NNNNNN" fits an id. */
static bool valid_name(const char *s) {
  size_t n = strlen(s);
  if (n > 56 || s[0] == '.') return false;
  return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static enum MHD_Result parse_form(http_ctx *h, form *f, pw_error *err, bool *bad) {
  *bad = false;
  const char *body = h->rq->body ? h->rq->body : "";
  if (http_content_type_is(h->conn, "multipart/form-data")) {
    struct MHD_PostProcessor *pp = MHD_create_post_processor(h->conn, 65536, form_field, f);
    if (!pp) return http_error(h->conn, 400, "malformed", "", "unreadable multipart body");
    enum MHD_Result ok = MHD_post_process(pp, body, h->rq->len);
    MHD_destroy_post_processor(pp);
    if (ok != MHD_YES || f->oom) return http_error(h->conn, 400, "malformed", "", "unreadable multipart body");
    f->r.items = f->file ? f->file : "";
    f->r.items_len = f->file_len;
  } else if (http_content_type_is(h->conn, "application/x-ndjson") || http_content_type_is(h->conn, "application/jsonl") ||
             http_content_type_is(h->conn, "application/x-jsonlines") || http_content_type_is(h->conn, "text/plain")) {
    if (split_header(f, body, h->rq->len, err)) {
      *bad = true;
      return http_proto_error(h->conn, err, NULL);
    }
  } else {
    *bad = true;
    return http_error(h->conn, 415, "unsupported_media_type", "",
                      "send JSONL (application/x-ndjson) or multipart/form-data with a file");
  }
  const char *qn = http_arg(h->conn, "name"), *qs = http_arg(h->conn, "shard_size");
  if (qn) snprintf(f->r.name, sizeof f->r.name, "%s", qn);
  if (qs) snprintf(f->shard, sizeof f->shard, "%s", qs);
  char *end = NULL;
  long ss = f->shard[0] ? strtol(f->shard, &end, 10) : 0;
  *bad = true;
  if (f->shard[0] && (*end || ss < 1 || ss > 100000))
    return http_error(h->conn, 422, "out_of_range", "shard_size", "shard_size is 1..100000");
  if (f->r.name[0] && !valid_name(f->r.name))
    return http_error(h->conn, 422, "invalid_value", "name", "name: 1..56 of A-Z a-z 0-9 _ -");
  f->r.shard_size = (int)ss;
  *bad = false;
  return MHD_YES;
}

static enum MHD_Result submit_batch(http_ctx *h) {
  form f = {0};
  pw_error err = {0};
  bool bad;
  enum MHD_Result ok = parse_form(h, &f, &err, &bad);
  if (!bad) {
    char id[160], *json = NULL;
    int rc = batch_submit(h->c, &f.r, h->owner, id, sizeof id, &err, &json);
    if (rc == PA_ERR_INVALID && err.code) ok = http_proto_error(h->conn, &err, NULL);
    else if (rc == PA_ERR_UNSUPPORTED) ok = http_error(h->conn, 503, "unavailable", "", "%s", pa_errmsg());
    else if (rc) ok = http_status_error(h->conn, rc);
    else ok = http_json(h->conn, 202, json);
    free(json);
  }
  free(f.file);
  free(f.r.settings_json);
  return ok;
}

enum MHD_Result api_batches(http_ctx *h, const char *const *seg, int n) {
  if (n == 0 && !strcmp(h->method, "POST")) return submit_batch(h);
  if (n == 2 && !strcmp(h->method, "GET") && !strcmp(seg[1], "deliveries") && seg[0][0] && valid_name(seg[0]))
    return api_deliveries(h, seg[0], true);
  if (n == 1 && !strcmp(h->method, "GET") && seg[0][0] && valid_name(seg[0])) {
    char *json = NULL;
    int rc = batch_render(h->c, seg[0], h->owner, &json);
    if (rc) return http_status_error(h->conn, rc);
    enum MHD_Result ok = http_json(h->conn, 200, json);
    free(json);
    return ok;
  }
  return http_error(h->conn, 404, "not_found", "", "no route %s %s", h->method, h->url);
}
