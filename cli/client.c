#include "cli/client.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/opts.h"
#include "cli/output.h"
#include "ops/error.h"

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

void client_init(client *c) {
  c->url = getenv("PAELLA_URL") ? getenv("PAELLA_URL") : "http://127.0.0.1:8080";
  c->key = getenv("PAELLA_API_KEY");
}

int client_option(client *c, int argc, char **argv, int *i) {
  const char *a = argv[*i], **dst = !strncmp(a, "--url", 5) ? &c->url : !strncmp(a, "--api-key", 9) ? &c->key : NULL;
  size_t n = dst == &c->url ? 5 : 9;
  if (!dst || (a[n] && a[n] != '=')) return 0;
  if (a[n] == '=') *dst = a + n + 1;
  else if (*i + 1 < argc) *dst = argv[++*i];
  else return cli_usage_error("paella", a, "missing value");
  return 1;
}

/* A request handle with the URL, key and headers set; NULL when out of memory. */
static CURL *prepare(const client *c, const char *method, const char *path, const char *ctype,
                     const char *const *headers, struct curl_slist **hdrs, char url[4096]) {
  CURL *h = curl_easy_init();
  char line[700];
  if (!h) return NULL;
  snprintf(url, 4096, "%s%s", strncmp(path, "http", 4) ? c->url : "", path);
  if (c->key) {
    snprintf(line, sizeof line, "Authorization: Bearer %s", c->key);
    *hdrs = curl_slist_append(*hdrs, line);
  }
  if (ctype) {
    snprintf(line, sizeof line, "Content-Type: %s", ctype);
    *hdrs = curl_slist_append(*hdrs, line);
  }
  for (int i = 0; headers && headers[i]; i++) *hdrs = curl_slist_append(*hdrs, headers[i]);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 3700L);
  return h;
}

/* Runs the request into b; the HTTP status or -1 (message printed). */
static long perform(CURL *h, const char *path, buffer *b) {
  long status = -1;
  curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
  CURLcode rc = curl_easy_perform(h);
  if (rc == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  else fprintf(stderr, "paella: %s: %s\n", path, curl_easy_strerror(rc));
  return status;
}

long client_request(const client *c, const char *method, const char *path, const char *ctype, const char *body,
                    size_t len, const char *const *headers, json_t **out) {
  struct curl_slist *hdrs = NULL;
  buffer b = {0};
  char url[4096];
  CURL *h = prepare(c, method, path, ctype, headers, &hdrs, url);
  long status = -1;
  *out = NULL;
  if (h && body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  }
  if (h) status = perform(h, url, &b);
  if (status > 0 && b.data) *out = json_loads(b.data, 0, NULL);
  free(b.data);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  return status;
}

long client_download(const client *c, const char *path, const char *dest) {
  struct curl_slist *hdrs = NULL;
  buffer b = {0};
  char url[4096];
  CURL *h = prepare(c, "GET", path, NULL, NULL, &hdrs, url);
  long status = -1;
  if (h) {
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_UNRESTRICTED_AUTH, 0L); /* the API key stays with the scheduler */
    status = perform(h, url, &b);
  }
  if (status == 200 && cli_output_write(dest, b.data ? b.data : "", b.len)) {
    fprintf(stderr, "paella: %s\n", pa_errmsg());
    status = -1;
  }
  free(b.data);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  return status;
}

void client_print_json(const json_t *j) {
  char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
  if (s) puts(s);
  free(s);
}

int client_api_failed(long status, const json_t *j) {
  const json_t *e = json_object_get(j, "error");
  const char *code = json_string_value(json_object_get(e, "code"));
  const char *msg = json_string_value(json_object_get(e, "message"));
  const char *field = json_string_value(json_object_get(e, "field"));
  fprintf(stderr, "paella: HTTP %ld %s", status, code ? code : "(no error object)");
  if (field && *field) fprintf(stderr, " (%s)", field);
  fprintf(stderr, "%s%s\n", msg ? ": " : "", msg ? msg : "");
  return CLI_EXIT_FAILURE;
}

char *client_read_all(const char *path, size_t *len) {
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

bool client_is_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
  return false;
}
