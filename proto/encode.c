/* Message -> msgpack. The encoding is deterministic (fixed key order, numbers in their
 * smallest msgpack form, floats always float64) so that equal messages give equal bytes,
 * which the tests and the fuzzers use as their round-trip check. Unknown fields kept by the
 * decoder go out last, unchanged. Every encoder validates first. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/internal.h"

typedef struct {
  msgpack_sbuffer buf;
  msgpack_packer pk;
  uint32_t n; /* top-level pairs written to buf */
  int rc;     /* non-zero once any write failed (out of memory) */
} enc;

static void enc_init(enc *e) {
  msgpack_sbuffer_init(&e->buf);
  msgpack_packer_init(&e->pk, &e->buf, msgpack_sbuffer_write);
  e->n = 0;
  e->rc = 0;
}

static void key(enc *e, const char *k) { e->rc |= msgpack_pack_str_with_body(&e->pk, k, strlen(k)); }
static void str(enc *e, const char *s) { e->rc |= msgpack_pack_str_with_body(&e->pk, s, strlen(s)); }
static void map(enc *e, uint32_t n) { e->rc |= msgpack_pack_map(&e->pk, n); }

/* Top-level pairs count themselves; nested ones are counted by their map() header. */
static void top_key(enc *e, const char *k) { e->n++; key(e, k); }
static void kv_int(enc *e, const char *k, int64_t v) { key(e, k); e->rc |= msgpack_pack_int64(&e->pk, v); }
static void kv_num(enc *e, const char *k, double v) { key(e, k); e->rc |= msgpack_pack_double(&e->pk, v); }
static void kv_str(enc *e, const char *k, const char *v) { key(e, k); str(e, v); }
static void top_int(enc *e, const char *k, int64_t v) { e->n++; kv_int(e, k, v); }
static void top_num(enc *e, const char *k, double v) { e->n++; kv_num(e, k, v); }
static void top_str(enc *e, const char *k, const char *v) { e->n++; kv_str(e, k, v); }
static void top_pair(enc *e, const char *k, const double v[2]) {
  top_key(e, k);
  e->rc |= msgpack_pack_array(&e->pk, 2);
  e->rc |= msgpack_pack_double(&e->pk, v[0]);
  e->rc |= msgpack_pack_double(&e->pk, v[1]);
}

static void header(enc *e, pw_msg_type type, int64_t version) {
  top_int(e, "v", version);
  top_str(e, "type", pw_msg_type_names[type]);
}

/* Wraps the body in a map header for body + extra pairs and hands out the bytes. */
static int finish(enc *e, const pw_extra *extra, uint8_t **out, size_t *out_len, pw_error *err) {
  msgpack_sbuffer whole;
  msgpack_packer pk;
  msgpack_sbuffer_init(&whole);
  msgpack_packer_init(&pk, &whole, msgpack_sbuffer_write);
  int rc = e->rc | msgpack_pack_map(&pk, e->n + extra->count);
  rc |= msgpack_sbuffer_write(&whole, e->buf.data, e->buf.size);
  if (extra->len) rc |= msgpack_sbuffer_write(&whole, (const char *)extra->data, extra->len);
  msgpack_sbuffer_destroy(&e->buf);
  if (rc) {
    msgpack_sbuffer_destroy(&whole);
    return pw_fail(err, PW_E_NO_MEMORY, "", "out of memory while encoding");
  }
  *out_len = whole.size;
  *out = (uint8_t *)msgpack_sbuffer_release(&whole);
  return 0;
}

/* ---- job ------------------------------------------------------------------------------- */

static void image(enc *e, const char *k, const pw_image *im) {
  if (!im->present) return;
  top_key(e, k);
  map(e, 1);
  if (im->url) {
    kv_str(e, "url", im->url);
  } else {
    key(e, "data");
    e->rc |= msgpack_pack_bin_with_body(&e->pk, im->data, im->len);
  }
}

static void job_edit(enc *e, const pw_job *j) {
  image(e, "image", &j->image);
  image(e, "mask", &j->mask);
  if (j->has_outpaint) {
    top_key(e, "outpaint");
    map(e, 2);
    kv_int(e, "offset_x", j->outpaint.offset_x);
    kv_int(e, "offset_y", j->outpaint.offset_y);
  }
  if (j->has_interpolate) {
    top_key(e, "interpolate");
    map(e, 3);
    kv_str(e, "prompt_to", j->interpolate.prompt_to);
    kv_int(e, "frames", j->interpolate.frames);
    kv_str(e, "mode", pw_interp_mode_names[j->interpolate.mode]);
  }
}

static void job_delivery(enc *e, const pw_job *j) {
  /* written only when not the default, so that older messages keep their exact bytes */
  if (j->output_format != PW_FORMAT_PNG) top_str(e, "output_format", pw_output_format_names[j->output_format]);
  if (j->output_quality != PW_DEFAULT_OUTPUT_QUALITY) top_int(e, "output_quality", j->output_quality);
  if (j->preview_every != PW_DEFAULT_PREVIEW_EVERY) top_int(e, "preview_every", j->preview_every);
  if (j->has_output) {
    top_key(e, "output");
    if (j->output.dir) {
      map(e, 1);
      kv_str(e, "dir", j->output.dir);
    } else {
      map(e, j->output.prefix ? 2 : 1);
      kv_str(e, "bucket", j->output.bucket);
      if (j->output.prefix) kv_str(e, "prefix", j->output.prefix);
    }
  }
  if (j->has_webhook) {
    top_key(e, "webhook");
    map(e, j->webhook.secret_id ? 3 : 2);
    kv_str(e, "url", j->webhook.url);
    if (j->webhook.secret_id) kv_str(e, "secret_id", j->webhook.secret_id);
    key(e, "events");
    e->rc |= msgpack_pack_array(&e->pk, (size_t)__builtin_popcount(j->webhook.events));
    for (int i = 0; i < PW_EVENT_COUNT; i++)
      if (j->webhook.events & (1u << i)) str(e, pw_event_names[i]);
  }
  top_int(e, "priority", j->priority);
  if (j->deadline_ms) top_int(e, "deadline_ms", j->deadline_ms);
  if (j->idempotency_key) top_str(e, "idempotency_key", j->idempotency_key);
  top_int(e, "attempt", j->attempt);
}

int pw_job_encode(const pw_job *job, uint8_t **out, size_t *out_len, pw_error *err) {
  pw_job j = *job; /* shallow: only scalar defaults are filled in */
  pw_job_apply_defaults(&j);
  if (pw_job_validate(&j, err)) return -1;
  enc e;
  enc_init(&e);
  header(&e, PW_MSG_JOB, j.version);
  top_str(&e, "id", j.id);
  top_str(&e, "kind", pw_kind_names[j.kind]);
  if (j.prompt) top_str(&e, "prompt", j.prompt);
  if (j.negative_prompt) top_str(&e, "negative_prompt", j.negative_prompt);
  if (j.has_seed) top_int(&e, "seed", j.seed);
  top_int(&e, "width", j.width);
  top_int(&e, "height", j.height);
  top_int(&e, "batch", j.batch);
  top_int(&e, "steps", j.steps);
  top_int(&e, "renoise_steps", j.renoise_steps);
  top_pair(&e, "cfg", j.cfg);
  top_pair(&e, "temperature", j.temperature);
  top_num(&e, "t_start", j.t_start);
  top_num(&e, "t_end", j.t_end);
  top_str(&e, "sampling", pw_sampling_names[j.sampling]);
  top_key(&e, "prior");
  map(&e, 3);
  kv_int(&e, "steps", j.prior.steps);
  kv_num(&e, "guidance", j.prior.guidance);
  kv_str(&e, "sampler", pw_prior_sampler_names[j.prior.sampler]);
  job_edit(&e, &j);
  job_delivery(&e, &j);
  return finish(&e, &j.extra, out, out_len, err);
}

/* ---- progress and result --------------------------------------------------------------- */

int pw_progress_encode(const pw_progress *p, uint8_t **out, size_t *out_len, pw_error *err) {
  if (pw_progress_validate(p, err)) return -1;
  enc e;
  enc_init(&e);
  header(&e, PW_MSG_PROGRESS, p->version);
  top_str(&e, "job_id", p->job_id);
  top_int(&e, "step", p->step);
  top_int(&e, "total", p->total);
  top_str(&e, "stage", pw_stage_names[p->stage]);
  top_int(&e, "ts_ms", p->ts_ms);
  if (p->preview) top_str(&e, "preview", p->preview);
  return finish(&e, &p->extra, out, out_len, err);
}

static void result_timings(enc *e, const pw_result *r) {
  uint32_t n = !isnan(r->total_ms);
  for (int i = 0; i < PW_STAGE_COUNT; i++) n += !isnan(r->timings_ms[i]);
  if (!n) return;
  top_key(e, "timings_ms");
  map(e, n);
  for (int i = 0; i < PW_STAGE_COUNT; i++)
    if (!isnan(r->timings_ms[i])) kv_num(e, pw_stage_names[i], r->timings_ms[i]);
  if (!isnan(r->total_ms)) kv_num(e, "total", r->total_ms);
}

int pw_result_encode(const pw_result *r, uint8_t **out, size_t *out_len, pw_error *err) {
  if (pw_result_validate(r, err)) return -1;
  enc e;
  enc_init(&e);
  header(&e, PW_MSG_RESULT, r->version);
  top_str(&e, "job_id", r->job_id);
  top_str(&e, "status", pw_status_names[r->status]);
  top_key(&e, "outputs");
  e.rc |= msgpack_pack_array(&e.pk, r->n_outputs);
  for (size_t i = 0; i < r->n_outputs; i++) {
    map(&e, 1 + (r->outputs[i].url != NULL) + (r->outputs[i].params != NULL));
    kv_str(&e, "key", r->outputs[i].key);
    if (r->outputs[i].url) kv_str(&e, "url", r->outputs[i].url);
    if (r->outputs[i].params) kv_str(&e, "params", r->outputs[i].params);
  }
  result_timings(&e, r);
  if (r->has_seed) top_int(&e, "seed", r->seed);
  if (r->has_error) {
    top_key(&e, "error");
    map(&e, r->error_message ? 2 : 1);
    kv_str(&e, "code", pw_code_name(r->error_code));
    if (r->error_message) kv_str(&e, "message", r->error_message);
  }
  return finish(&e, &r->extra, out, out_len, err);
}
