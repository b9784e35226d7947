/* Stable wire names: error codes and every enumeration. These strings are part of the
 * protocol (docs/protocol.md); renaming one breaks deployed clients. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "proto/internal.h"

typedef struct {
  pw_code code;
  const char *name;
} code_name;

static const code_name CODE_NAMES[] = {
    {PW_OK, "ok"},
    {PW_E_MALFORMED, "malformed"},
    {PW_E_TRUNCATED, "truncated"},
    {PW_E_TOO_DEEP, "too_deep"},
    {PW_E_TOO_LARGE, "too_large"},
    {PW_E_INVALID_TYPE, "invalid_type"},
    {PW_E_MISSING_FIELD, "missing_field"},
    {PW_E_OUT_OF_RANGE, "out_of_range"},
    {PW_E_INVALID_UTF8, "invalid_utf8"},
    {PW_E_INVALID_VALUE, "invalid_value"},
    {PW_E_UNKNOWN_KIND, "unknown_kind"},
    {PW_E_DUPLICATE_KEY, "duplicate_key"},
    {PW_E_UNSUPPORTED_VERSION, "unsupported_version"},
    {PW_E_CONFLICT, "conflict"},
    {PW_E_NO_MEMORY, "no_memory"},
    {PW_E_IO, "io_error"},
    {PW_E_INPUT_FETCH, "input_fetch_failed"},
    {PW_E_INVALID_IMAGE, "invalid_image"},
    {PW_E_MODEL, "model_error"},
    {PW_E_GPU, "gpu_error"},
    {PW_E_STORAGE, "storage_failed"},
    {PW_E_DEADLINE, "deadline_exceeded"},
    {PW_E_CANCELED, "canceled"},
    {PW_E_TOO_MANY_ATTEMPTS, "too_many_attempts"},
    {PW_E_INTERNAL, "internal"},
};
#define N_CODES (sizeof CODE_NAMES / sizeof CODE_NAMES[0])

const char *pw_code_name(pw_code code) {
  for (size_t i = 0; i < N_CODES; i++)
    if (CODE_NAMES[i].code == code) return CODE_NAMES[i].name;
  return "unknown";
}

int pw_code_from_name(const char *name, size_t len, pw_code *out) {
  for (size_t i = 0; i < N_CODES; i++)
    if (strlen(CODE_NAMES[i].name) == len && memcmp(CODE_NAMES[i].name, name, len) == 0) {
      *out = CODE_NAMES[i].code;
      return 0;
    }
  return -1;
}

int pw_fail(pw_error *err, pw_code code, const char *field, const char *fmt, ...) {
  if (!err) return -1;
  err->code = code;
  snprintf(err->field, sizeof err->field, "%s", field ? field : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return -1;
}

char *pw_error_json(const pw_error *err) {
  /* Field paths echo keys from the input, so they go through jansson's escaping; a path cut
   * in the middle of a UTF-8 sequence is replaced rather than emitted invalid. */
  const char *field = pw_utf8_valid(err->field, strlen(err->field)) ? err->field : "?";
  const char *msg = pw_utf8_valid(err->message, strlen(err->message)) ? err->message : "?";
  json_t *o = json_pack("{s:s, s:s, s:s}", "code", pw_code_name(err->code), "field", field,
                        "message", msg);
  if (!o) return NULL;
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return s;
}

const char *const pw_kind_names[PW_KIND_COUNT] = {"txt2img", "img2img", "inpaint",
                                                  "outpaint", "variation", "interpolate"};
const char *const pw_sampling_names[PW_SAMPLING_COUNT] = {"multinomial", "argmax"};
const char *const pw_output_format_names[PW_FORMAT_COUNT] = {"png", "jpeg", "webp"};
const char *const pw_prior_sampler_names[PW_PRIOR_SAMPLER_COUNT] = {"ddpm", "ddim"};
const char *const pw_interp_mode_names[PW_INTERP_COUNT] = {"slerp", "lerp"};
const char *const pw_event_names[PW_EVENT_COUNT] = {"start", "progress", "completed", "failed"};
const char *const pw_stage_names[PW_STAGE_COUNT] = {"queued", "fetch", "text_encode", "prior",
                                                    "denoise", "vq_decode", "upload"};
const char *const pw_status_names[PW_STATUS_COUNT] = {"succeeded", "failed", "canceled"};
const char *const pw_msg_type_names[3] = {"job", "progress", "result"};

int pw_name_lookup(const char *const *names, int n, const char *s, size_t len) {
  for (int i = 0; i < n; i++)
    if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) return i;
  return -1;
}

#define NAME_OR_UNKNOWN(table, count, v) ((unsigned)(v) < (unsigned)(count) ? table[v] : "unknown")
const char *pw_kind_name(pw_kind k) { return NAME_OR_UNKNOWN(pw_kind_names, PW_KIND_COUNT, k); }
const char *pw_sampling_name(pw_sampling s) {
  return NAME_OR_UNKNOWN(pw_sampling_names, PW_SAMPLING_COUNT, s);
}
const char *pw_prior_sampler_name(pw_prior_sampler s) {
  return NAME_OR_UNKNOWN(pw_prior_sampler_names, PW_PRIOR_SAMPLER_COUNT, s);
}
const char *pw_interp_mode_name(pw_interp_mode m) {
  return NAME_OR_UNKNOWN(pw_interp_mode_names, PW_INTERP_COUNT, m);
}
const char *pw_output_format_name(pw_output_format f) {
  return NAME_OR_UNKNOWN(pw_output_format_names, PW_FORMAT_COUNT, f);
}
const char *pw_event_name(pw_event e) { return NAME_OR_UNKNOWN(pw_event_names, PW_EVENT_COUNT, e); }
const char *pw_stage_name(pw_stage s) { return NAME_OR_UNKNOWN(pw_stage_names, PW_STAGE_COUNT, s); }
const char *pw_status_name(pw_status s) {
  return NAME_OR_UNKNOWN(pw_status_names, PW_STATUS_COUNT, s);
}

int pw_output_digits(int total) {
  if (total <= 1) return 1;
  int digits = 2;
  for (int n = total - 1; n >= 100; n /= 10) digits++;
  return digits;
}
