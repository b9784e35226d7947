/* The one place where the protocol's limits are enforced (the numbers are in limits.h).
 * Both decoders call these after filling a struct, and both encoders call them before
 * writing one, so an invalid message can neither enter nor leave a process. Checks run in
 * field order and stop at the first failure, which is what the error reports. */
#include <math.h>
#include <string.h>

#include "proto/internal.h"

#define TRY(expr)               \
  do {                          \
    if ((expr) != 0) return -1; \
  } while (0)

int pw_check_version(int64_t v, pw_error *err) {
  if (v > PW_VERSION)
    return pw_fail(err, PW_E_UNSUPPORTED_VERSION, "v", "schema version %lld is newer than %d",
                   (long long)v, PW_VERSION);
  if (v < 1) return pw_fail(err, PW_E_OUT_OF_RANGE, "v", "schema versions start at 1");
  return 0;
}

static int int_range(int64_t v, int64_t lo, int64_t hi, const char *path, pw_error *err) {
  if (v < lo || v > hi)
    return pw_fail(err, PW_E_OUT_OF_RANGE, path, "%lld is outside %lld..%lld", (long long)v,
                   (long long)lo, (long long)hi);
  return 0;
}

static int num_range(double v, double lo, double hi, const char *path, pw_error *err) {
  if (!(v >= lo && v <= hi)) /* also catches NaN */
    return pw_fail(err, PW_E_OUT_OF_RANGE, path, "%g is outside %g..%g", v, lo, hi);
  return 0;
}

/* UTF-8 text of at most `max` bytes; NULL is an error only when `required`. */
static int text(const char *s, size_t max, bool required, const char *path, pw_error *err) {
  if (!s) return required ? pw_fail(err, PW_E_MISSING_FIELD, path, "required field is missing") : 0;
  size_t n = strlen(s);
  if (n > max) return pw_fail(err, PW_E_TOO_LARGE, path, "%zu bytes, the limit is %zu", n, max);
  if (!pw_utf8_valid(s, n)) return pw_fail(err, PW_E_INVALID_UTF8, path, "not valid UTF-8");
  return 0;
}

/* Ids end up in object keys and file names: a small charset, no path tricks. */
static int ident(const char *s, size_t max, bool required, const char *path, pw_error *err) {
  if (!s) return required ? pw_fail(err, PW_E_MISSING_FIELD, path, "required field is missing") : 0;
  size_t n = strlen(s);
  if (n == 0) return pw_fail(err, PW_E_INVALID_VALUE, path, "must not be empty");
  if (n > max) return pw_fail(err, PW_E_TOO_LARGE, path, "%zu bytes, the limit is %zu", n, max);
  if (s[0] == '.') return pw_fail(err, PW_E_INVALID_VALUE, path, "must not start with '.'");
  if (strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") != n)
    return pw_fail(err, PW_E_INVALID_VALUE, path, "allowed characters are A-Z a-z 0-9 . _ : -");
  return 0;
}

static bool has_control(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
  return false;
}

static bool has_dotdot_segment(const char *s) {
  for (const char *p = s; (p = strstr(p, "..")) != NULL; p += 2) {
    bool starts = p == s || p[-1] == '/';
    bool ends = p[2] == '\0' || p[2] == '/';
    if (starts && ends) return true;
  }
  return false;
}

/* Keys, prefixes and directories: text without control characters or ".." segments. */
static int path_text(const char *s, size_t max, const char *path, pw_error *err) {
  TRY(text(s, max, true, path, err));
  if (has_control(s) || has_dotdot_segment(s))
    return pw_fail(err, PW_E_INVALID_VALUE, path, "control characters or '..' segments");
  return 0;
}

/* `schemes` is a space-separated list such as "http https". */
static int url(const char *s, const char *schemes, const char *path, pw_error *err) {
  TRY(text(s, PW_MAX_URL_BYTES, true, path, err));
  const char *colon = strstr(s, "://");
  size_t scheme_len = colon ? (size_t)(colon - s) : 0;
  bool ok = false;
  for (const char *p = schemes; *p && scheme_len;) {
    size_t n = strcspn(p, " ");
    if (n == scheme_len && !strncmp(p, s, n)) ok = true;
    p += n + (p[n] == ' ');
  }
  if (!ok || colon[3] == '\0') return pw_fail(err, PW_E_INVALID_VALUE, path, "expected a %s URL", schemes);
  for (const char *p = s; *p; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f)
      return pw_fail(err, PW_E_INVALID_VALUE, path, "URLs may not contain spaces or control characters");
  return 0;
}

static int bucket(const char *s, const char *path, pw_error *err) {
  size_t n = strlen(s);
  bool ok = n >= 3 && n <= 63 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789.-") == n &&
            s[0] != '.' && s[0] != '-' && s[n - 1] != '.' && s[n - 1] != '-';
  if (!ok) return pw_fail(err, PW_E_INVALID_VALUE, path, "not an S3 bucket name (3-63 of a-z 0-9 . -)");
  return 0;
}

/* ---- job ------------------------------------------------------------------------------- */

static int image(const pw_image *im, const char *name, pw_error *err) {
  char path[64];
  if (im->data && im->url) return pw_fail(err, PW_E_CONFLICT, name, "give data or url, not both");
  if (!im->data && !im->url) return pw_fail(err, PW_E_MISSING_FIELD, name, "needs data or url");
  if (im->url) {
    snprintf(path, sizeof path, "%s.url", name);
    return url(im->url, "http https s3", path, err);
  }
  snprintf(path, sizeof path, "%s.data", name);
  if (im->len == 0) return pw_fail(err, PW_E_INVALID_VALUE, path, "empty image");
  if (im->len > PW_MAX_IMAGE_BYTES)
    return pw_fail(err, PW_E_TOO_LARGE, path, "%zu bytes, the limit is %u", im->len, PW_MAX_IMAGE_BYTES);
  return 0;
}

/* `allowed`: the field may be given for this kind; `required`: it must be. */
static int kind_field(bool given, bool allowed, bool required, const char *path, pw_error *err) {
  if (given && !allowed) return pw_fail(err, PW_E_CONFLICT, path, "not used by this job kind");
  if (!given && required) return pw_fail(err, PW_E_MISSING_FIELD, path, "required by this job kind");
  return 0;
}

static int size_px(int64_t v, const char *path, pw_error *err) {
  TRY(int_range(v, PW_SIZE_MIN, PW_SIZE_MAX, path, err));
  if (v % PW_SIZE_MULTIPLE)
    return pw_fail(err, PW_E_OUT_OF_RANGE, path, "%lld is not a multiple of %d", (long long)v, PW_SIZE_MULTIPLE);
  return 0;
}

static int job_sampler(const pw_job *j, pw_error *err) {
  TRY(size_px(j->width, "width", err));
  TRY(size_px(j->height, "height", err));
  TRY(int_range(j->batch, 1, PW_BATCH_MAX, "batch", err));
  TRY(int_range(j->steps, 1, PW_STEPS_MAX, "steps", err));
  TRY(int_range(j->renoise_steps, 0, j->steps - 1, "renoise_steps", err));
  TRY(num_range(j->cfg[0], PW_CFG_MIN, PW_CFG_MAX, "cfg[0]", err));
  TRY(num_range(j->cfg[1], PW_CFG_MIN, PW_CFG_MAX, "cfg[1]", err));
  TRY(num_range(j->temperature[0], PW_TEMP_MIN, PW_TEMP_MAX, "temperature[0]", err));
  TRY(num_range(j->temperature[1], PW_TEMP_MIN, PW_TEMP_MAX, "temperature[1]", err));
  TRY(num_range(j->t_start, 0.0, 1.0, "t_start", err));
  TRY(num_range(j->t_end, 0.0, 1.0, "t_end", err));
  if (!(j->t_end < j->t_start)) return pw_fail(err, PW_E_CONFLICT, "t_end", "t_end must be below t_start");
  TRY(int_range(j->sampling, 0, PW_SAMPLING_COUNT - 1, "sampling", err));
  TRY(int_range(j->prior.steps, 1, PW_PRIOR_STEPS_MAX, "prior.steps", err));
  TRY(num_range(j->prior.guidance, 0.0, PW_PRIOR_GUIDANCE_MAX, "prior.guidance", err));
  TRY(int_range(j->prior.sampler, 0, PW_PRIOR_SAMPLER_COUNT - 1, "prior.sampler", err));
  TRY(int_range(j->preview_every, 0, PW_STEPS_MAX, "preview_every", err));
  return 0;
}

static int job_kind(const pw_job *j, pw_error *err) {
  pw_kind k = j->kind;
  bool needs_image = k == PW_KIND_IMG2IMG || k == PW_KIND_INPAINT || k == PW_KIND_OUTPAINT ||
                     k == PW_KIND_VARIATION;
  TRY(kind_field(j->image.present, needs_image, needs_image, "image", err));
  TRY(kind_field(j->mask.present, k == PW_KIND_INPAINT || k == PW_KIND_OUTPAINT, k == PW_KIND_INPAINT, "mask", err));
  TRY(kind_field(j->has_outpaint, k == PW_KIND_OUTPAINT, k == PW_KIND_OUTPAINT, "outpaint", err));
  TRY(kind_field(j->has_interpolate, k == PW_KIND_INTERPOLATE, k == PW_KIND_INTERPOLATE, "interpolate", err));
  if (j->image.present) TRY(image(&j->image, "image", err));
  if (j->mask.present) TRY(image(&j->mask, "mask", err));
  if (j->has_outpaint) {
    TRY(int_range(j->outpaint.offset_x, -PW_SIZE_MAX, PW_SIZE_MAX, "outpaint.offset_x", err));
    TRY(int_range(j->outpaint.offset_y, -PW_SIZE_MAX, PW_SIZE_MAX, "outpaint.offset_y", err));
    if (j->outpaint.offset_x % PW_OFFSET_MULTIPLE || j->outpaint.offset_y % PW_OFFSET_MULTIPLE)
      return pw_fail(err, PW_E_OUT_OF_RANGE, j->outpaint.offset_x % PW_OFFSET_MULTIPLE ? "outpaint.offset_x" : "outpaint.offset_y",
                     "offsets must be multiples of %d (the token grid)", PW_OFFSET_MULTIPLE);
  }
  if (j->has_interpolate) {
    TRY(text(j->interpolate.prompt_to, PW_MAX_PROMPT_BYTES, true, "interpolate.prompt_to", err));
    TRY(int_range(j->interpolate.frames, PW_FRAMES_MIN, PW_FRAMES_MAX, "interpolate.frames", err));
    TRY(int_range(j->interpolate.mode, 0, PW_INTERP_COUNT - 1, "interpolate.mode", err));
    if (j->batch != 1) return pw_fail(err, PW_E_CONFLICT, "batch", "interpolate makes `frames` images; batch must be 1");
  }
  return 0;
}

static int job_output(const pw_job *j, pw_error *err) {
  TRY(int_range(j->output_format, 0, PW_FORMAT_COUNT - 1, "output_format", err));
  TRY(int_range(j->output_quality, PW_QUALITY_MIN, PW_QUALITY_MAX, "output_quality", err));
  if (!j->has_output) return 0;
  if (j->output.dir && (j->output.bucket || j->output.prefix))
    return pw_fail(err, PW_E_CONFLICT, "output.dir", "give a bucket (and prefix) or a dir, not both");
  if (j->output.dir) return path_text(j->output.dir, PW_MAX_PATH_BYTES, "output.dir", err);
  if (!j->output.bucket) return pw_fail(err, PW_E_MISSING_FIELD, "output.bucket", "needs a bucket or a dir");
  TRY(bucket(j->output.bucket, "output.bucket", err));
  if (j->output.prefix) {
    TRY(path_text(j->output.prefix, PW_MAX_PREFIX_BYTES, "output.prefix", err));
    if (j->output.prefix[0] == '/') return pw_fail(err, PW_E_INVALID_VALUE, "output.prefix", "must not start with '/'");
  }
  return 0;
}

static int job_delivery(const pw_job *j, pw_error *err) {
  if (j->has_webhook) {
    TRY(url(j->webhook.url, "http https", "webhook.url", err));
    TRY(ident(j->webhook.secret_id, PW_MAX_KEY_BYTES, false, "webhook.secret_id", err));
    if (j->webhook.events == 0 || (j->webhook.events & ~PW_EVENTS_ALL))
      return pw_fail(err, PW_E_INVALID_VALUE, "webhook.events", "needs at least one known event");
  }
  TRY(int_range(j->priority, 0, PW_PRIORITY_MAX, "priority", err));
  TRY(int_range(j->deadline_ms, 0, PW_TIME_MAX, "deadline_ms", err));
  if (j->idempotency_key) {
    size_t n = strlen(j->idempotency_key);
    if (n == 0 || n > PW_MAX_KEY_BYTES)
      return pw_fail(err, n ? PW_E_TOO_LARGE : PW_E_INVALID_VALUE, "idempotency_key", "1..%d bytes", PW_MAX_KEY_BYTES);
    for (size_t i = 0; i < n; i++)
      if (j->idempotency_key[i] < 0x21 || j->idempotency_key[i] > 0x7e)
        return pw_fail(err, PW_E_INVALID_VALUE, "idempotency_key", "printable ASCII only");
  }
  TRY(int_range(j->attempt, 0, PW_ATTEMPT_MAX, "attempt", err));
  return 0;
}

int pw_job_validate(const pw_job *job, pw_error *err) {
  pw_job copy = *job; /* shallow: a job built in code may leave the defaults to us */
  pw_job_apply_defaults(&copy);
  const pw_job *j = &copy;
  TRY(pw_check_version(j->version, err));
  TRY(ident(j->id, PW_MAX_ID_BYTES, true, "id", err));
  if ((unsigned)j->kind >= PW_KIND_COUNT) return pw_fail(err, PW_E_UNKNOWN_KIND, "kind", "not a job kind");
  TRY(text(j->prompt, PW_MAX_PROMPT_BYTES, j->kind != PW_KIND_VARIATION, "prompt", err));
  TRY(text(j->negative_prompt, PW_MAX_PROMPT_BYTES, false, "negative_prompt", err));
  if (j->has_seed) TRY(int_range(j->seed, 0, PW_SEED_MAX, "seed", err));
  TRY(job_sampler(j, err));
  TRY(job_kind(j, err));
  TRY(job_output(j, err));
  return job_delivery(j, err);
}

/* ---- progress and result --------------------------------------------------------------- */

int pw_progress_validate(const pw_progress *p, pw_error *err) {
  TRY(pw_check_version(p->version, err));
  TRY(ident(p->job_id, PW_MAX_ID_BYTES, true, "job_id", err));
  TRY(int_range(p->total, 1, PW_PROGRESS_TOTAL_MAX, "total", err));
  TRY(int_range(p->step, 0, p->total, "step", err));
  TRY(int_range(p->stage, 0, PW_STAGE_COUNT - 1, "stage", err));
  if (p->preview) TRY(path_text(p->preview, PW_MAX_URL_BYTES, "preview", err));
  return int_range(p->ts_ms, 0, PW_TIME_MAX, "ts_ms", err);
}

static int result_outputs(const pw_result *r, pw_error *err) {
  if (r->n_outputs > PW_MAX_OUTPUTS)
    return pw_fail(err, PW_E_TOO_LARGE, "outputs", "%zu outputs, the limit is %d", r->n_outputs, PW_MAX_OUTPUTS);
  char path[64];
  for (size_t i = 0; i < r->n_outputs; i++) {
    snprintf(path, sizeof path, "outputs[%zu].key", i);
    TRY(path_text(r->outputs[i].key, PW_MAX_PATH_BYTES, path, err));
    if (!r->outputs[i].key[0]) return pw_fail(err, PW_E_INVALID_VALUE, path, "must not be empty");
    snprintf(path, sizeof path, "outputs[%zu].url", i);
    if (r->outputs[i].url) TRY(url(r->outputs[i].url, "http https s3 file", path, err));
    snprintf(path, sizeof path, "outputs[%zu].params", i);
    TRY(text(r->outputs[i].params, PW_PARAMS_MAX_BYTES, false, path, err));
  }
  return 0;
}

static int result_timings(const pw_result *r, pw_error *err) {
  char path[64];
  for (int i = 0; i < PW_STAGE_COUNT; i++) {
    if (isnan(r->timings_ms[i])) continue;
    snprintf(path, sizeof path, "timings_ms.%s", pw_stage_names[i]);
    TRY(num_range(r->timings_ms[i], 0.0, PW_TIMING_MAX_MS, path, err));
  }
  if (!isnan(r->total_ms)) TRY(num_range(r->total_ms, 0.0, PW_TIMING_MAX_MS, "timings_ms.total", err));
  return 0;
}

int pw_result_validate(const pw_result *r, pw_error *err) {
  TRY(pw_check_version(r->version, err));
  TRY(ident(r->job_id, PW_MAX_ID_BYTES, true, "job_id", err));
  TRY(int_range(r->status, 0, PW_STATUS_COUNT - 1, "status", err));
  TRY(result_outputs(r, err));
  TRY(result_timings(r, err));
  if (r->has_seed) TRY(int_range(r->seed, 0, PW_SEED_MAX, "seed", err));
  TRY(kind_field(r->has_error, r->status != PW_STATUS_SUCCEEDED, r->status == PW_STATUS_FAILED, "error", err));
  if (r->has_error) {
    if (r->error_code == PW_OK || !strcmp(pw_code_name(r->error_code), "unknown"))
      return pw_fail(err, PW_E_INVALID_VALUE, "error.code", "not an error code");
    TRY(text(r->error_message, PW_MAX_MESSAGE_TEXT, false, "error.message", err));
  }
  return 0;
}
