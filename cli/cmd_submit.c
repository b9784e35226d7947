/* `paella submit | status | wait | batch submit|status`: clients of a running scheduler
 * (docs/api.md). --url / $PAELLA_URL, --api-key / $PAELLA_API_KEY. Job bodies are checked
 * locally through proto before they are sent, so typos fail fast with the same error object
 * the scheduler would return. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "proto/proto.h"

typedef struct {
  const char *url, *key;
} client;

typedef struct {
  char *data;
  size_t len;
} buffer;

static size_t on_data(char *p, size_t size, size_t n, void *user) {
  buffer *b = user;
  char *d = realloc(b->data, b->len + size * n + 1);
  if (!d) return 0;
  memcpy(d + b->len, p, size * n);
  b->data = d;
  b->len += size * n;
  d[b->len] = 0;
  return size * n;
}

/* One request; *out is the parsed JSON reply (NULL if not JSON). Returns the HTTP status,
 * or -1 when the scheduler could not be reached. */
static long request(const client *c, const char *method, const char *path, const char *ctype, const char *body,
                    size_t len, const char *extra_header, json_t **out) {
  CURL *h = curl_easy_init();
  buffer b = {0};
  struct curl_slist *hdrs = NULL;
  char url[2048], auth[600], ct[200];
  long status = -1;
  *out = NULL;
  if (!h) return -1;
  snprintf(url, sizeof url, "%s%s", c->url, path);
  if (c->key) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->key);
    hdrs = curl_slist_append(hdrs, auth);
  }
  if (ctype) {
    snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
    hdrs = curl_slist_append(hdrs, ct);
  }
  if (extra_header) hdrs = curl_slist_append(hdrs, extra_header);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 3700L);
  if (body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  }
  CURLcode rc = curl_easy_perform(h);
  if (rc == CURLE_OK) {
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    *out = b.data ? json_loads(b.data, 0, NULL) : NULL;
  } else {
    fprintf(stderr, "paella: %s: %s\n", url, curl_easy_strerror(rc));
  }
  free(b.data);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  return status;
}

static void print_json(const json_t *j) {
  char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
  if (s) puts(s);
  free(s);
}

/* Prints an API error and returns the exit status 1. */
static int api_failed(long status, const json_t *j) {
  const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
  const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
  const char *field = json_string_value(json_object_get(json_object_get(j, "error"), "field"));
  fprintf(stderr, "paella: HTTP %ld %s%s%s%s%s\n", status, code ? code : "", field && *field ? " (" : "",
          field && *field ? field : "", field && *field ? ")" : "", msg ? msg : "");
  return 1;
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  if (!f) return NULL;
  buffer b = {0};
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    if (!on_data(chunk, 1, n, &b)) break;
  if (f != stdin) fclose(f);
  *len = b.len;
  return b.data ? b.data : calloc(1, 1);
}

/* Common options: --url, --api-key; leaves the rest in argv order. Returns argc left. */
static int common_opts(int argc, char **argv, client *c, char **rest) {
  int n = 0;
  c->url = getenv("PAELLA_URL") ? getenv("PAELLA_URL") : "http://127.0.0.1:8080";
  c->key = getenv("PAELLA_API_KEY");
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--url") && i + 1 < argc) c->url = argv[++i];
    else if (!strcmp(argv[i], "--api-key") && i + 1 < argc) c->key = argv[++i];
    else rest[n++] = argv[i];
  }
  return n;
}

static bool is_final(const char *s) {
  return s && (!strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "canceled"));
}

/* ---- submit ------------------------------------------------------------------------- */

static int job_body(int n, char **a, char **body, size_t *len, const char **idem, int *wait_s) {
  json_t *j = json_object();
  const char *file = NULL;
  for (int i = 0; i < n; i++) {
    const char *v = i + 1 < n ? a[i + 1] : NULL;
    if (!strcmp(a[i], "--prompt") && v) json_object_set_new(j, "prompt", json_string(a[++i]));
    else if ((!strcmp(a[i], "--width") || !strcmp(a[i], "--height") || !strcmp(a[i], "--steps") ||
              !strcmp(a[i], "--seed")) && v)
    {
      json_object_set_new(j, a[i] + 2, json_integer(strtoll(v, NULL, 10)));
      i++;
    }
    else if (!strcmp(a[i], "--wait") && v) *wait_s = atoi(a[++i]);
    else if (!strcmp(a[i], "--idempotency-key") && v) *idem = a[++i];
    else if (a[i][0] != '-' || !strcmp(a[i], "-")) file = a[i];
    else {
      json_decref(j);
      return 2;
    }
  }
  if (file) {
    json_decref(j);
    *body = read_all(file, len);
    if (!*body) fprintf(stderr, "paella submit: cannot read %s\n", file);
    return *body ? 0 : 1;
  }
  *body = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  *len = *body ? strlen(*body) : 0;
  return 0;
}

/* The scheduler assigns the id; proto validates with a placeholder so errors show locally. */
static int check_locally(const char *body, size_t len) {
  json_t *j = json_loadb(body, len, 0, NULL);
  if (!json_is_object(j)) {
    json_decref(j);
    return 0; /* let the scheduler report the syntax error */
  }
  if (!json_object_get(j, "id")) json_object_set_new(j, "id", json_string("local-check"));
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  pw_job job;
  pw_error err;
  pw_job_init(&job);
  int rc = text && pw_job_from_json(text, strlen(text), &job, &err) ? 1 : 0;
  if (rc) {
    char *e = pw_error_json(&err);
    fprintf(stderr, "%s\n", e ? e : err.message);
    free(e);
  }
  pw_job_free(&job);
  free(text);
  return rc;
}

int cmd_submit(int argc, char **argv) {
  client c;
  char **a = calloc((size_t)argc + 1, sizeof *a), *body = NULL, prefer[64], idem_hdr[300];
  int n = common_opts(argc, argv, &c, a), wait_s = 0, rc;
  size_t len = 0;
  const char *idem = NULL;
  if (n == 0 || !strcmp(a[0], "--help")) {
    fprintf(n ? stdout : stderr, "usage: paella submit [--url URL] [--api-key KEY] [--wait S] [--idempotency-key K]\n"
                                 "                     (JOB.json | - | --prompt TEXT [--width N --height N --steps N --seed N])\n");
    free(a);
    return n ? 0 : 2;
  }
  if ((rc = job_body(n, a, &body, &len, &idem, &wait_s)) || (rc = check_locally(body, len))) goto done;
  snprintf(prefer, sizeof prefer, "Prefer: wait=%d", wait_s);
  snprintf(idem_hdr, sizeof idem_hdr, "Idempotency-Key: %s", idem ? idem : "");
  json_t *j = NULL;
  long st = request(&c, "POST", "/v1/jobs", "application/json", body, len, idem ? idem_hdr : wait_s ? prefer : NULL, &j);
  rc = st == 200 || st == 202 ? (print_json(j), 0) : st < 0 ? 1 : api_failed(st, j);
  json_decref(j);
done:
  free(body);
  free(a);
  return rc;
}

/* ---- status / wait ------------------------------------------------------------------ */

int cmd_status(int argc, char **argv) {
  client c;
  char **a = calloc((size_t)argc + 1, sizeof *a), path[256];
  int n = common_opts(argc, argv, &c, a), rc;
  if (n != 1 || a[0][0] == '-') {
    fprintf(stderr, "usage: paella status [--url URL] [--api-key KEY] JOB_ID\n");
    free(a);
    return 2;
  }
  snprintf(path, sizeof path, "/v1/jobs/%s", a[0]);
  json_t *j = NULL;
  long st = request(&c, "GET", path, NULL, NULL, 0, NULL, &j);
  rc = st == 200 ? (print_json(j), 0) : st < 0 ? 1 : api_failed(st, j);
  json_decref(j);
  free(a);
  return rc;
}

int cmd_wait(int argc, char **argv) {
  client c;
  char **a = calloc((size_t)argc + 1, sizeof *a), path[256];
  int n = common_opts(argc, argv, &c, a), timeout_s = 600;
  const char *id = NULL;
  for (int i = 0; i < n; i++)
    if (!strcmp(a[i], "--timeout") && i + 1 < n) timeout_s = atoi(a[++i]);
    else if (a[i][0] != '-') id = a[i];
  if (!id) {
    fprintf(stderr, "usage: paella wait [--url URL] [--api-key KEY] [--timeout S] JOB_ID\n");
    free(a);
    return 2;
  }
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  int rc = 1;
  for (int waited = 0; waited <= timeout_s * 2; waited++) {
    json_t *j = NULL;
    long st = request(&c, "GET", path, NULL, NULL, 0, NULL, &j);
    const char *s = json_string_value(json_object_get(j, "status"));
    if (st != 200) {
      rc = st < 0 ? 1 : api_failed(st, j);
      json_decref(j);
      break;
    }
    if (is_final(s)) {
      print_json(j);
      rc = strcmp(s, "succeeded") ? 1 : 0;
      json_decref(j);
      break;
    }
    json_decref(j);
    usleep(500000);
  }
  free(a);
  return rc;
}

/* ---- batch -------------------------------------------------------------------------- */

static void progress_bar(const json_t *b) {
  long long total = json_integer_value(json_object_get(b, "total"));
  long long done = total - json_integer_value(json_object_get(b, "pending"));
  int width = 40, filled = total ? (int)(done * width / total) : width;
  json_t *eta = json_object_get(b, "eta_seconds");
  fprintf(stderr, "\r[%.*s%*s] %lld/%lld", filled, "########################################", width - filled, "", done, total);
  if (json_is_number(eta)) fprintf(stderr, "  eta %.0f s   ", json_number_value(eta));
  fflush(stderr);
}

static int batch_follow(const client *c, const char *id, bool follow) {
  char path[256];
  snprintf(path, sizeof path, "/v1/batches/%s", id);
  for (;;) {
    json_t *j = NULL;
    long st = request(c, "GET", path, NULL, NULL, 0, NULL, &j);
    if (st != 200) {
      int rc = st < 0 ? 1 : api_failed(st, j);
      json_decref(j);
      return rc;
    }
    bool done = !strcmp(json_string_value(json_object_get(j, "status")) ? json_string_value(json_object_get(j, "status")) : "", "completed");
    if (follow) progress_bar(j);
    if (done || !follow) {
      if (follow) fputc('\n', stderr);
      print_json(j);
      json_decref(j);
      return 0;
    }
    json_decref(j);
    usleep(500000);
  }
}

static int batch_submit_cmd(const client *c, int n, char **a) {
  const char *file = NULL, *settings = NULL, *name = NULL, *shard = NULL;
  bool follow = true;
  for (int i = 0; i < n; i++)
    if (!strcmp(a[i], "--settings") && i + 1 < n) settings = a[++i];
    else if (!strcmp(a[i], "--name") && i + 1 < n) name = a[++i];
    else if (!strcmp(a[i], "--shard-size") && i + 1 < n) shard = a[++i];
    else if (!strcmp(a[i], "--no-wait")) follow = false;
    else file = a[i];
  size_t len = 0;
  char *items = file ? read_all(file, &len) : NULL;
  if (!items) {
    fprintf(stderr, "usage: paella batch submit [--settings JSON] [--name N] [--shard-size N] [--no-wait] PROMPTS.jsonl\n");
    return 2;
  }
  json_t *head = json_object();
  if (settings) json_object_set_new(head, "settings", json_loads(settings, 0, NULL));
  if (name) json_object_set_new(head, "name", json_string(name));
  if (shard) json_object_set_new(head, "shard_size", json_integer(atoi(shard)));
  char *h = json_dumps(head, JSON_COMPACT);
  json_decref(head);
  size_t hl = h ? strlen(h) : 0;
  char *body = malloc(hl + len + 2);
  memcpy(body, h, hl);
  body[hl] = '\n';
  memcpy(body + hl + 1, items, len);
  free(h);
  free(items);
  json_t *j = NULL;
  long st = request(c, "POST", "/v1/batches", "application/x-ndjson", body, hl + 1 + len, NULL, &j);
  free(body);
  int rc = st == 202 ? 0 : st < 0 ? 1 : api_failed(st, j);
  char id[160];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")) ? json_string_value(json_object_get(j, "id")) : "");
  json_decref(j);
  return rc ? rc : batch_follow(c, id, follow);
}

int cmd_batch(int argc, char **argv) {
  client c;
  char **a = calloc((size_t)argc + 1, sizeof *a);
  int n = common_opts(argc, argv, &c, a), rc = 2;
  if (n >= 2 && !strcmp(a[0], "submit")) rc = batch_submit_cmd(&c, n - 1, a + 1);
  else if (n >= 2 && !strcmp(a[0], "status")) rc = batch_follow(&c, a[1], n > 2 && !strcmp(a[2], "--follow"));
  else fprintf(stderr, "usage: paella batch submit|status ... (--url URL, --api-key KEY)\n");
  free(a);
  return rc;
}
