/* `paella models pull [--dir DIR]`: the five published checkpoints from their Hugging Face
 * repositories, laid out as `--models DIR` expects them (docs/models.md).
 *
 * Per file: a HEAD of {endpoint}/{repo}/resolve/{revision}/{file} (redirects not followed)
 * gives the size (X-Linked-Size, else Content-Length) and, for LFS files, the SHA-256 (the
 * X-Linked-Etag, else the ETag, when it is 64 hex digits), as the Hugging Face clients read
 * them. The bytes go to FILE.incomplete beside the target, resumed with a Range request
 * when a partial file is there (also after a dropped connection, up to PULL_ATTEMPTS
 * tries); the size and the SHA-256 are checked, and only then is the file renamed into
 * place. A mismatch removes the partial file. HF_ENDPOINT (or --endpoint) replaces
 * https://huggingface.co; HF_TOKEN is sent as a bearer token to the endpoint only. */
#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "model/pipeline.h"

#define CMD "paella models pull"
#define PULL_ATTEMPTS 5

typedef struct {
  const char *repo, *remote, *local;
} model_file;

/* The published files and where `--models DIR` looks for them (model/pipeline.h). */
static const model_file model_files[] = {
    {"dome272/Paella", PA_FILE_PAELLA, PA_FILE_PAELLA},
    {"dome272/Paella", PA_FILE_PRIOR, PA_FILE_PRIOR},
    {"dome272/Paella", PA_FILE_VQGAN, PA_FILE_VQGAN},
    {"google/byt5-xl", "pytorch_model.bin", PA_DIR_BYT5 "/pytorch_model.bin"},
    {"laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "model.safetensors", PA_DIR_CLIP "/model.safetensors"},
};

typedef struct {
  const char *dir, *endpoint, *revision, *token;
  bool quiet;
} pull_opts;

/* What the HEAD said about a file. */
typedef struct {
  long long size;     /* -1: unknown */
  char sha256[65];    /* "" when the Hub gave none (not an LFS file) */
} remote_meta;

static void usage(FILE *f) {
  fprintf(f,
          "usage: paella models pull [--dir DIR] [--endpoint URL] [--revision REV] [-q]\n"
          "\n"
          "Downloads the published checkpoints into DIR (default $PAELLA_MODELS, else ./models):\n");
  for (size_t i = 0; i < sizeof model_files / sizeof model_files[0]; i++)
    fprintf(f, "  %-52s from %s\n", model_files[i].local, model_files[i].repo);
  fprintf(f,
          "\n--endpoint defaults to $HF_ENDPOINT, else https://huggingface.co; $HF_TOKEN is sent as a\n"
          "bearer token. Partial downloads (FILE.incomplete) are resumed; each file's size and\n"
          "SHA-256 (as the Hub reports them) are checked before it is moved into place; files\n"
          "already present with the right size are kept.\n"
          "Exit status: 0 all present, 1 a file failed (the others are kept), 2 bad command line.\n");
}

/* ---- HTTP ----------------------------------------------------------------------------- */

static struct curl_slist *auth_header(const pull_opts *o) {
  char line[600];
  if (!o->token || !*o->token) return NULL;
  snprintf(line, sizeof line, "Authorization: Bearer %s", o->token);
  return curl_slist_append(NULL, line);
}

/* Copies a header's value (trimmed, quotes and a W/ prefix removed) when `line` is `name`. */
static bool header_value(const char *line, size_t len, const char *name, char *out, size_t cap) {
  size_t n = strlen(name);
  if (len <= n || strncasecmp(line, name, n) || line[n] != ':') return false;
  const char *v = line + n + 1, *end = line + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  if (end - v >= 2 && !strncmp(v, "W/", 2)) v += 2;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '"')) end--;
  if (v < end && *v == '"') v++;
  snprintf(out, cap, "%.*s", (int)(end - v), v);
  return true;
}

typedef struct {
  char linked_etag[128], etag[128], linked_size[32], length[32];
} head_fields;

static size_t on_head_header(char *line, size_t size, size_t n, void *user) {
  head_fields *h = user;
  size_t len = size * n;
  if (!header_value(line, len, "x-linked-etag", h->linked_etag, sizeof h->linked_etag) &&
      !header_value(line, len, "etag", h->etag, sizeof h->etag) &&
      !header_value(line, len, "x-linked-size", h->linked_size, sizeof h->linked_size))
    header_value(line, len, "content-length", h->length, sizeof h->length);
  return len;
}

static bool is_sha256_hex(const char *s) {
  return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

static int head(const pull_opts *o, const char *url, remote_meta *m) {
  head_fields h = {0};
  struct curl_slist *hdrs = auth_header(o);
  CURL *c = curl_easy_init();
  long status = 0;
  if (!c) return fprintf(stderr, CMD ": out of memory\n"), CLI_EXIT_FAILURE;
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_head_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  curl_slist_free_all(hdrs);
  if (rc != CURLE_OK) return fprintf(stderr, CMD ": %s: %s\n", url, curl_easy_strerror(rc)), CLI_EXIT_FAILURE;
  if (status >= 400)
    return fprintf(stderr, CMD ": %s: HTTP %ld%s\n", url, status,
                   status == 401 || status == 403 ? " (a gated or private repository: set HF_TOKEN)" : ""),
           CLI_EXIT_FAILURE;
  const char *size = h.linked_size[0] ? h.linked_size : h.length;
  m->size = *size ? strtoll(size, NULL, 10) : -1;
  const char *etag = h.linked_etag[0] ? h.linked_etag : h.etag;
  m->sha256[0] = 0;
  if (is_sha256_hex(etag)) memcpy(m->sha256, etag, sizeof m->sha256); /* 64 digits + NUL */
  return 0;
}

/* ---- download ------------------------------------------------------------------------- */

typedef struct {
  FILE *f;
  CURL *c;
  long long start, expected;
  const char *name;
  bool show, restarted;
} transfer;

/* A server that ignores the Range header answers 200 with the whole file: start over. */
static size_t on_body(char *data, size_t size, size_t n, void *user) {
  transfer *t = user;
  long status = 0;
  curl_easy_getinfo(t->c, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200 && status != 206) return n * size; /* an error body: ignored */
  if (status == 200 && t->start > 0 && !t->restarted) {
    t->restarted = true;
    if (ftruncate(fileno(t->f), 0) || fseek(t->f, 0, SEEK_SET)) return 0;
    t->start = 0;
  }
  return fwrite(data, size, n, t->f) * size;
}

static int on_progress(void *user, curl_off_t dl_total, curl_off_t dl_now, curl_off_t ul_total, curl_off_t ul_now) {
  transfer *t = user;
  (void)dl_total, (void)ul_total, (void)ul_now;
  if (!t->show || t->expected <= 0) return 0;
  long long now = t->start + dl_now;
  int fill = (int)(now * 30 / t->expected);
  fprintf(stderr, "\r%-28.28s [%.*s%*s] %6.1f / %.1f MB ", t->name, fill, "##############################", 30 - fill, "",
          now / 1e6, t->expected / 1e6);
  return 0;
}

/* One GET from byte `start` of `part`; 0 when the transfer completed. */
static int fetch_once(const pull_opts *o, const char *url, const char *part, const char *name, long long expected) {
  struct stat st;
  long long start = stat(part, &st) == 0 ? (long long)st.st_size : 0;
  transfer t = {.f = fopen(part, "ab"), .start = start, .expected = expected, .name = name,
                .show = !o->quiet && isatty(2)};
  char range[64];
  long status = 0;
  if (!t.f) return fprintf(stderr, CMD ": %s: %s\n", part, strerror(errno)), CLI_EXIT_FAILURE;
  struct curl_slist *hdrs = auth_header(o);
  t.c = curl_easy_init();
  curl_easy_setopt(t.c, CURLOPT_URL, url);
  curl_easy_setopt(t.c, CURLOPT_FOLLOWLOCATION, 1L); /* the Hub redirects LFS files to its CDN */
  curl_easy_setopt(t.c, CURLOPT_HTTPHEADER, hdrs);   /* curl keeps it from other hosts */
  curl_easy_setopt(t.c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(t.c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(t.c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(t.c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(t.c, CURLOPT_XFERINFODATA, &t);
  curl_easy_setopt(t.c, CURLOPT_LOW_SPEED_LIMIT, 1L); /* a stalled transfer is retried */
  curl_easy_setopt(t.c, CURLOPT_LOW_SPEED_TIME, 60L);
  if (start > 0) {
    snprintf(range, sizeof range, "%lld-", start);
    curl_easy_setopt(t.c, CURLOPT_RANGE, range);
  }
  CURLcode rc = curl_easy_perform(t.c);
  curl_easy_getinfo(t.c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(t.c);
  curl_slist_free_all(hdrs);
  bool closed = fclose(t.f) == 0;
  if (t.show) fputc('\n', stderr);
  if (rc == CURLE_OK && status == 416) return 0; /* nothing left to fetch: the size check decides */
  if (rc != CURLE_OK || !closed || (status != 200 && status != 206)) {
    fprintf(stderr, CMD ": %s: %s\n", name, rc != CURLE_OK ? curl_easy_strerror(rc) : !closed ? strerror(errno) : "");
    if (rc == CURLE_OK && closed) fprintf(stderr, CMD ": %s: HTTP %ld\n", name, status);
    return CLI_EXIT_FAILURE;
  }
  return 0;
}

static int sha256_file(const char *path, char hex[65]) {
  FILE *f = fopen(path, "rb");
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char buf[1 << 16], md[32];
  unsigned mdlen = 0;
  size_t n;
  int ok = f && ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
  while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) ok = EVP_DigestUpdate(ctx, buf, n);
  ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen == 32;
  for (unsigned i = 0; ok && i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
  EVP_MD_CTX_free(ctx);
  if (f) fclose(f);
  return ok ? 0 : -1;
}

/* The partial file against what the Hub said; on success it is renamed to `final`. */
static int verify_and_place(const char *part, const char *final, const char *name, const remote_meta *m) {
  struct stat st;
  char got[65] = "";
  if (stat(part, &st) != 0) return fprintf(stderr, CMD ": %s: %s\n", part, strerror(errno)), CLI_EXIT_FAILURE;
  if (m->size >= 0 && st.st_size != m->size) {
    if (st.st_size > m->size) unlink(part); /* cannot be resumed */
    return fprintf(stderr, CMD ": %s: %lld bytes, expected %lld\n", name, (long long)st.st_size, m->size), CLI_EXIT_FAILURE;
  }
  if (m->sha256[0] && (sha256_file(part, got) || strcmp(got, m->sha256))) {
    unlink(part);
    return fprintf(stderr, CMD ": %s: SHA-256 mismatch: got %s, the Hub says %s (download removed)\n", name, got,
                   m->sha256), CLI_EXIT_FAILURE;
  }
  if (rename(part, final)) return fprintf(stderr, CMD ": %s: %s\n", final, strerror(errno)), CLI_EXIT_FAILURE;
  return 0;
}

/* mkdir -p of the directory part of `path` */
static int make_parents(char *path) {
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    int bad = mkdir(path, 0755) && errno != EEXIST;
    *p = '/';
    if (bad) return fprintf(stderr, CMD ": mkdir: %s\n", strerror(errno)), CLI_EXIT_FAILURE;
  }
  return 0;
}

/* One file: present, or downloaded, verified and placed. *downloaded tells which. */
static int pull_one(const pull_opts *o, const model_file *mf, bool *downloaded) {
  char url[2048], final[4096], part[4200];
  remote_meta m;
  struct stat st;
  int rc;
  snprintf(url, sizeof url, "%s/%s/resolve/%s/%s", o->endpoint, mf->repo, o->revision, mf->remote);
  snprintf(final, sizeof final, "%s/%s", o->dir, mf->local);
  snprintf(part, sizeof part, "%s.incomplete", final);
  *downloaded = false;
  if ((rc = head(o, url, &m)) || (rc = make_parents(final))) return rc;
  if (stat(final, &st) == 0 && S_ISREG(st.st_mode) && (m.size < 0 || st.st_size == m.size)) return 0;
  for (int attempt = 1; attempt <= PULL_ATTEMPTS; attempt++) {
    if ((rc = fetch_once(o, url, part, mf->local, m.size)) == 0) break;
    if (attempt < PULL_ATTEMPTS) fprintf(stderr, CMD ": %s: resuming (attempt %d of %d)\n", mf->local, attempt + 1, PULL_ATTEMPTS);
  }
  if (rc) return rc;
  *downloaded = true;
  return verify_and_place(part, final, mf->local, &m);
}

static int parse(int argc, char **argv, pull_opts *o) {
  for (int i = 1; i < argc; i++) {
    const char **dst = !strcmp(argv[i], "--dir") ? &o->dir : !strcmp(argv[i], "--endpoint") ? &o->endpoint
                     : !strcmp(argv[i], "--revision") ? &o->revision : NULL;
    if (dst && i + 1 < argc) *dst = argv[++i];
    else if (dst) return cli_usage_error(CMD, argv[i], "missing value");
    else if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet")) o->quiet = true;
    else return cli_usage_error(CMD, argv[i], "unknown option or argument (see --help)");
  }
  size_t n = strlen(o->endpoint);
  while (n > 1 && o->endpoint[n - 1] == '/') n--; /* "https://hub/" and "https://hub" alike */
  static char endpoint[2048];
  snprintf(endpoint, sizeof endpoint, "%.*s", (int)n, o->endpoint);
  o->endpoint = endpoint;
  return 0;
}

int cmd_models(int argc, char **argv) {
  if (argc < 2 || client_is_help(argc, argv)) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
  }
  if (strcmp(argv[1], "pull")) return cli_usage_error("paella models", NULL, "unknown subcommand '%s' (pull)", argv[1]);
  pull_opts o = {.dir = getenv("PAELLA_MODELS") && *getenv("PAELLA_MODELS") ? getenv("PAELLA_MODELS") : "models",
                 .endpoint = getenv("HF_ENDPOINT") && *getenv("HF_ENDPOINT") ? getenv("HF_ENDPOINT") : "https://huggingface.co",
                 .revision = "main", .token = getenv("HF_TOKEN")};
  int rc = parse(argc - 1, argv + 1, &o), failed = 0, fetched = 0;
  if (rc) return rc;
  size_t n = sizeof model_files / sizeof model_files[0];
  for (size_t i = 0; i < n; i++) {
    bool downloaded;
    if (pull_one(&o, &model_files[i], &downloaded)) {
      failed++;
      continue;
    }
    if (!o.quiet) fprintf(stderr, "%-52s %s\n", model_files[i].local, downloaded ? "downloaded, verified" : "present");
    fetched += downloaded;
  }
  if (!o.quiet)
    fprintf(stderr, "paella models: %zu of %zu files in %s (%d downloaded)%s\n", n - (size_t)failed, n, o.dir, fetched,
            failed ? "; rerun to resume the rest" : "");
  return failed ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
