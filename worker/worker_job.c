/* One job's inputs (inline or fetched images), its pa_gen_request(s) and its outputs. */
#include <curl/curl.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/admission.h"
#include "worker/job_map.h"
#include "worker/log.h"
#include "worker/worker_internal.h"

void job_fail(job_ctx *jc, pw_code code, bool transient, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(jc->message, sizeof jc->message, fmt, ap);
  va_end(ap);
  jc->failed = true;
  jc->transient = transient;
  jc->code = code;
}

/* Without a seed in the job, re-running it (after a crash) must still give the same images,
 * so the seed derives from the job id rather than from a random source. */
uint64_t job_default_seed(const char *job_id) {
  unsigned char md[32];
  unsigned len = 0;
  uint64_t s = 0;
  if (EVP_Digest(job_id, strlen(job_id), md, &len, EVP_sha256(), NULL))
    for (int i = 0; i < 8; i++) s = s << 8 | md[i];
  return s & (uint64_t)PW_SEED_MAX;
}

/* ---- input images ---------------------------------------------------------------------- */

typedef struct {
  uint8_t *buf;
  size_t len, cap;
  bool too_big;
} grow_buf;

static size_t on_body(char *data, size_t size, size_t nmemb, void *user) {
  grow_buf *g = user;
  size_t n = size * nmemb;
  if (g->len + n > PW_MAX_IMAGE_BYTES) {
    g->too_big = true;
    return 0; /* aborts the transfer */
  }
  if (g->len + n > g->cap) {
    size_t cap = (g->len + n) * 2;
    uint8_t *b = realloc(g->buf, cap);
    if (!b) return 0;
    g->buf = b;
    g->cap = cap;
  }
  memcpy(g->buf + g->len, data, n);
  g->len += n;
  return n;
}

/* GET url into *out (http/https only, size-capped, redirects limited). PW code on failure. */
static pw_code fetch_url(job_ctx *jc, const char *url, grow_buf *g) {
  if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) {
    job_fail(jc, PW_E_INPUT_FETCH, false, "input URL %.200s: only http and https are fetched by the worker", url);
    return PW_E_INPUT_FETCH;
  }
  CURL *c = curl_easy_init();
  if (!c) {
    job_fail(jc, PW_E_NO_MEMORY, true, "curl_easy_init failed");
    return PW_E_NO_MEMORY;
  }
  char err[CURL_ERROR_SIZE] = "";
  long status = 0;
  int ok = curl_easy_setopt(c, CURLOPT_URL, url) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)jc->w->cfg->fetch_timeout_ms) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK &&
           curl_easy_setopt(c, CURLOPT_WRITEDATA, g) == CURLE_OK;
  CURLcode cc = ok ? curl_easy_perform(c) : CURLE_FAILED_INIT;
  if (cc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  if (g->too_big) {
    job_fail(jc, PW_E_INPUT_FETCH, false, "GET %.200s: larger than %u bytes", url, PW_MAX_IMAGE_BYTES);
    return PW_E_INPUT_FETCH;
  }
  if (cc != CURLE_OK || status < 200 || status > 299) {
    /* 5xx and network errors may pass; 4xx will not */
    bool transient = cc != CURLE_OK || status >= 500;
    job_fail(jc, PW_E_INPUT_FETCH, transient, "GET %.200s: %s", url,
             cc != CURLE_OK ? (err[0] ? err : curl_easy_strerror(cc)) : (status == 404 ? "404 not found" : "HTTP error"));
    if (cc == CURLE_OK) snprintf(jc->message + strlen(jc->message), sizeof jc->message - strlen(jc->message),
                                 " (status %ld)", status);
    return PW_E_INPUT_FETCH;
  }
  return PW_OK;
}

static int load_image(job_ctx *jc, const pw_image *src, const char *what, pa_image **out) {
  grow_buf g = {0};
  const uint8_t *bytes = src->data;
  size_t len = src->len;
  if (!bytes) {
    if (fetch_url(jc, src->url, &g) != PW_OK) {
      free(g.buf);
      return -1;
    }
    bytes = g.buf;
    len = g.len;
  }
  int rc = pa_image_decode(bytes, len, out);
  free(g.buf);
  if (rc) job_fail(jc, PW_E_INVALID_IMAGE, false, "%s: %s", what, pa_errmsg());
  return rc ? -1 : 0;
}

/* Decodes the job's image and mask and sizes them as the kind needs (see pa_gen_request). */
int job_fetch_inputs(job_ctx *jc) {
  const pw_job *j = &jc->job;
  pa_image *raw = NULL, *rawmask = NULL;
  int rc = 0;
  if (!j->image.present) return 0;
  if (load_image(jc, &j->image, "image", &raw)) return -1;
  if (j->kind == PW_KIND_INPAINT && load_image(jc, &j->mask, "mask", &rawmask)) {
    pa_image_free(raw);
    return -1;
  }
  pw_error why;
  if (pa_job_admit_images(j, raw, rawmask, &why)) { /* as the scheduler checks inline inputs */
    job_fail(jc, PW_E_INVALID_IMAGE, false, "%s: %s", why.field, why.message);
    pa_image_free(raw);
    pa_image_free(rawmask);
    return -1;
  }
  if (j->kind == PW_KIND_OUTPAINT || j->kind == PW_KIND_VARIATION) {
    jc->image = raw; /* outpaint places it as it is; CLIP preprocessing crops a variation's */
    return 0;
  }
  if (pa_image_fit(raw, (int)j->width, (int)j->height, &jc->image) ||
      (rawmask && pa_image_fit(rawmask, (int)j->width, (int)j->height, &jc->mask))) {
    job_fail(jc, PW_E_INVALID_IMAGE, false, "resizing the input: %s", pa_errmsg());
    rc = -1;
  }
  pa_image_free(raw);
  pa_image_free(rawmask);
  return rc;
}

/* ---- the request ------------------------------------------------------------------------- */

/* Run `run` of the job (an interpolation frame, else 0). Progress goes to the job context. */
int job_request(job_ctx *jc, int run, pa_gen_request *r) {
  pa_request_from_job(&jc->job, run, jc->seed, r);
  r->image = jc->image;
  r->mask = jc->mask;
  r->progress_user = jc;
  return pa_gen_request_check(jc->w->pipe, r);
}

/* ---- outputs ----------------------------------------------------------------------------- */

/* The job's own output target, when it names one. */
static int open_job_store(job_ctx *jc, pa_storage **out) {
  const pw_job *j = &jc->job;
  char url[2048];
  *out = NULL;
  if (!j->has_output) return PA_OK;
  if (j->output.dir)
    snprintf(url, sizeof url, "file://%s%s", j->output.dir[0] == '/' ? "" : "/", j->output.dir);
  else
    snprintf(url, sizeof url, "s3://%s/%s", j->output.bucket, j->output.prefix ? j->output.prefix : "");
  return pa_storage_open(url, NULL, out);
}

/* Image `index` of the job in its output format, with its generation parameters (*params,
 * malloc'd: the same text goes into the result record, freed with it). */
static int encode_output(job_ctx *jc, const pa_image *img, int index, void **buf, size_t *len, char **params) {
  const pw_job *j = &jc->job;
  *params = pa_job_params_json(j, jc->seed, index, pa_pipeline_checksums(jc->w->pipe));
  pa_image_encoding enc = {pa_image_format_of_job(j), (int)j->output_quality, *params};
  return *params ? pa_image_encode(img, &enc, buf, len) : pa_fail(PA_ERR_NOMEM, "out of memory");
}

static int put_image(job_ctx *jc, pa_storage *s, const pa_image *img, int index, int total, pw_output *o) {
  void *bytes = NULL;
  size_t len = 0;
  char key[128], *url = NULL;
  pa_image_format f = pa_image_format_of_job(&jc->job);
  /* deterministic: a re-run overwrites */
  snprintf(key, sizeof key, "%s/%0*d%s", jc->job.id, pw_output_digits(total), index, pa_image_format_extension(f));
  int rc = encode_output(jc, img, index, &bytes, &len, &o->params); /* the record carries what the image embeds */
  if (rc) {
    job_fail(jc, PW_E_INTERNAL, false, "%s encoding: %s", pa_image_format_name(f), pa_errmsg());
    return rc;
  }
  if (!job_still_owned(jc)) { /* checked right before the write: a fenced attempt writes nothing */
    free(bytes);
    return PA_ERR_CANCELED;
  }
  rc = pa_storage_put(s, key, bytes, len, pa_image_format_mime(f), NULL, &url);
  free(bytes);
  if (rc) {
    job_fail(jc, PW_E_STORAGE, true, "upload %s: %s", key, pa_errmsg());
    return rc;
  }
  /* The key from the store's root ("prefix/JOB/0.png"), never a server path: the scheduler
   * reads it back from the same store (batch shards, GET .../outputs/N). */
  o->url = url && strlen(url) <= PW_MAX_URL_BYTES ? url : NULL;
  if (o->url != url) free(url);
  if (pa_storage_key(s, key, &o->key)) {
    job_fail(jc, PW_E_NO_MEMORY, true, "out of memory");
    return PA_ERR_NOMEM;
  }
  return PA_OK;
}

void job_preview(void *user, int step, int total, const pa_image *img) {
  job_ctx *jc = user;
  pa_storage *own = NULL;
  void *bytes = NULL;
  size_t len = 0;
  char key[128], *object = NULL, *url = NULL;
  pa_image_encoding enc = {PA_IMAGE_PNG, 0, NULL};
  double t = pa_mono();
  snprintf(key, sizeof key, "%s/preview.png", jc->job.id);
  int rc = open_job_store(jc, &own);
  pa_storage *s = own ? own : jc->w->store;
  if (!rc) rc = pa_image_encode(img, &enc, &bytes, &len);
  if (!rc && !job_still_owned(jc)) rc = PA_ERR_CANCELED; /* a fenced attempt writes nothing */
  else if (!rc) rc = pa_storage_put(s, key, bytes, len, "image/png", NULL, &url);
  /* as outputs: a presigned URL (S3), else the key from the store's root, never a server path */
  if (!rc && !(url && strlen(url) <= PW_MAX_URL_BYTES)) rc = pa_storage_key(s, key, &object);
  if (!rc) notify_preview(jc->w, jc, step, total, object ? object : url);
  else if (rc != PA_ERR_CANCELED)
    pa_log(PA_LOG_WARN, jc->job.id, json_pack("{s:i, s:s}", "step", step, "error", pa_errmsg()), "preview not stored");
  free(bytes);
  free(object);
  free(url);
  pa_storage_free(own);
  jc->overhead += pa_mono() - t;
}

int job_store_outputs(job_ctx *jc, pw_result *res) {
  pa_storage *own = NULL;
  int total = 0, rc = open_job_store(jc, &own);
  if (rc) {
    job_fail(jc, PW_E_STORAGE, false, "output target: %s", pa_errmsg());
    return rc;
  }
  for (int f = 0; f < jc->n_runs; f++) total += jc->results[f].n;
  if (!(res->outputs = calloc((size_t)total, sizeof *res->outputs))) {
    pa_storage_free(own);
    job_fail(jc, PW_E_NO_MEMORY, true, "out of memory");
    return PA_ERR_NOMEM;
  }
  for (int f = 0, k = 0; f < jc->n_runs && !rc; f++)
    for (int b = 0; b < jc->results[f].n && !rc; b++, k++) {
      rc = put_image(jc, own ? own : jc->w->store, jc->results[f].images[b], k, total, &res->outputs[k]);
      if (!rc) res->n_outputs = (size_t)k + 1;
      else free(res->outputs[k].params), res->outputs[k].params = NULL; /* not counted, so not freed with it */
    }
  pa_storage_free(own);
  return rc;
}
