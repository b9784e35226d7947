/* Object tree -> message. msgpack and JSON inputs both arrive here as msgpack_object trees,
 * so every type and presence rule is written once. The tables below say, per message,
 * which key goes where with which type; range and length limits are not checked here but
 * in proto/validate.c, the one place that enforces them. Nothing in this file allocates
 * more than the input already occupies (the input size is bounded by scan.c / json.c). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/internal.h"

typedef enum {
  F_INT,     /* int64_t */
  F_NUM,     /* double; integers accepted */
  F_STR,     /* char *, UTF-8 checked by validation, NUL bytes rejected here */
  F_PAIR,    /* double[2] from an array of two numbers */
  F_ENUM,    /* int from a name in `names` */
  F_BYTES,   /* pw_image data: bin in msgpack, base64 string in JSON */
  F_MAP,     /* a nested map described by `sub` */
  F_EVENTS,  /* unsigned bit set from an array of names */
  F_OUTPUTS, /* pw_result outputs */
  F_CODE,    /* pw_code from its name */
  F_TYPE,    /* the message type name, must match the message being decoded */
} ftype;

typedef struct field {
  const char *name;
  ftype type;
  size_t off;
  /* Offset of an int set to 1 when the field is present (not absent, not null); 0 for none.
   * Offset 0 is `version` in every message, never a flag. */
  size_t has;
  bool required;
  const char *const *names; /* F_ENUM, F_EVENTS */
  int n_names;
  pw_code bad_name; /* code for a name not in `names` */
  const struct field *sub;
  size_t n_sub;
} field;

typedef struct {
  bool from_json;
  pw_msg_type type;
  pw_error *err;
  msgpack_sbuffer extra; /* unknown top-level pairs, packed as they come */
  uint32_t n_extra;
} dctx;

#define PATH_MAX_LEN sizeof(((pw_error *)0)->field)

/* Error paths are cut at PATH_MAX_LEN on purpose: they only label a message. (vsnprintf
 * through a wrapper, because gcc flags every deliberate truncation of a direct snprintf.) */
static void path_fmt(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void path_fmt(char *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, PATH_MAX_LEN, fmt, ap);
  va_end(ap);
}

static void join(char *out, const char *prefix, const char *name, size_t name_len) {
  int n = name_len > PATH_MAX_LEN ? (int)PATH_MAX_LEN : (int)name_len;
  if (*prefix)
    path_fmt(out, "%s.%.*s", prefix, n, name);
  else
    path_fmt(out, "%.*s", n, name);
}

/* ---- scalars --------------------------------------------------------------------------- */

static int get_int(dctx *c, const msgpack_object *v, const char *path, int64_t *out) {
  if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    *out = v->via.i64;
    return 0;
  }
  if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected an integer");
  if (v->via.u64 > (uint64_t)INT64_MAX)
    return pw_fail(c->err, PW_E_OUT_OF_RANGE, path, "integer above 2^63-1");
  *out = (int64_t)v->via.u64;
  return 0;
}

static int get_num(dctx *c, const msgpack_object *v, const char *path, double *out) {
  switch (v->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)v->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)v->via.i64; return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      /* NaN marks "not set" inside the structs and JSON cannot carry it anyway */
      if (!isfinite(v->via.f64)) return pw_fail(c->err, PW_E_OUT_OF_RANGE, path, "not a finite number");
      *out = v->via.f64;
      return 0;
    default: return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected a number");
  }
}

static int get_str(dctx *c, const msgpack_object *v, const char *path, char **out) {
  if (v->type != MSGPACK_OBJECT_STR)
    return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected a string");
  const char *s = v->via.str.ptr;
  uint32_t n = v->via.str.size;
  /* C strings would silently cut at a NUL, so the wire may not contain one */
  if (n && memchr(s, 0, n)) return pw_fail(c->err, PW_E_INVALID_VALUE, path, "string contains a NUL byte");
  char *copy = malloc((size_t)n + 1);
  if (!copy) return pw_fail(c->err, PW_E_NO_MEMORY, path, "out of memory");
  if (n) memcpy(copy, s, n);
  copy[n] = '\0';
  free(*out);
  *out = copy;
  return 0;
}

static int get_name(dctx *c, const msgpack_object *v, const char *path, const field *f, int *out) {
  if (v->type != MSGPACK_OBJECT_STR)
    return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected a string");
  int i = pw_name_lookup(f->names, f->n_names, v->via.str.ptr, v->via.str.size);
  if (i < 0)
    return pw_fail(c->err, f->bad_name, path, "'%.*s' is not a known %s",
                   (int)(v->via.str.size > 40 ? 40 : v->via.str.size), v->via.str.ptr, f->name);
  *out = i;
  return 0;
}

static int get_pair(dctx *c, const msgpack_object *v, const char *path, double out[2]) {
  if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2)
    return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected an array of two numbers [start, end]");
  char item[PATH_MAX_LEN];
  for (int i = 0; i < 2; i++) {
    path_fmt(item, "%s[%d]", path, i);
    if (get_num(c, &v->via.array.ptr[i], item, &out[i])) return -1;
  }
  return 0;
}

static int get_bytes(dctx *c, const msgpack_object *v, const char *path, pw_image *im) {
  free(im->data);
  im->data = NULL;
  im->len = 0;
  if (c->from_json) {
    if (v->type != MSGPACK_OBJECT_STR)
      return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected a base64 string");
    bool nomem;
    if (pw_base64_decode(v->via.str.ptr, v->via.str.size, &im->data, &im->len, &nomem))
      return pw_fail(c->err, nomem ? PW_E_NO_MEMORY : PW_E_INVALID_VALUE, path,
                     nomem ? "out of memory" : "not padded standard base64");
    return 0;
  }
  if (v->type != MSGPACK_OBJECT_BIN) return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected bin");
  im->data = malloc(v->via.bin.size ? v->via.bin.size : 1);
  if (!im->data) return pw_fail(c->err, PW_E_NO_MEMORY, path, "out of memory");
  if (v->via.bin.size) memcpy(im->data, v->via.bin.ptr, v->via.bin.size);
  im->len = v->via.bin.size;
  return 0;
}

/* ---- maps ------------------------------------------------------------------------------ */

static int decode_map(dctx *c, const msgpack_object *o, const char *prefix, const field *fs,
                      size_t n, void *base, bool top);

static int get_events(dctx *c, const msgpack_object *v, const char *path, const field *f,
                      unsigned *out) {
  if (v->type != MSGPACK_OBJECT_ARRAY)
    return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected an array of event names");
  char item[PATH_MAX_LEN];
  *out = 0;
  for (uint32_t i = 0; i < v->via.array.size; i++) {
    path_fmt(item, "%s[%u]", path, i);
    int e = 0;
    if (get_name(c, &v->via.array.ptr[i], item, f, &e)) return -1;
    *out |= 1u << e;
  }
  return 0;
}

static const field OUTPUT_FIELDS[] = {
    {.name = "key", .type = F_STR, .off = offsetof(pw_output, key), .required = true},
    {.name = "url", .type = F_STR, .off = offsetof(pw_output, url)},
    {.name = "params", .type = F_STR, .off = offsetof(pw_output, params)},
};

static int get_outputs(dctx *c, const msgpack_object *v, const char *path, pw_result *r) {
  if (v->type != MSGPACK_OBJECT_ARRAY)
    return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected an array of outputs");
  uint32_t n = v->via.array.size;
  /* n <= PW_MAX_ELEMENTS (scan/json), so this allocation is bounded; the real limit is
   * validation's PW_MAX_OUTPUTS. */
  r->outputs = calloc(n ? n : 1, sizeof *r->outputs);
  if (!r->outputs) return pw_fail(c->err, PW_E_NO_MEMORY, path, "out of memory");
  char item[PATH_MAX_LEN];
  for (uint32_t i = 0; i < n; i++) {
    r->n_outputs = i + 1; /* so that pw_result_free releases what was copied so far */
    path_fmt(item, "%s[%u]", path, i);
    if (decode_map(c, &v->via.array.ptr[i], item, OUTPUT_FIELDS, sizeof OUTPUT_FIELDS / sizeof OUTPUT_FIELDS[0], &r->outputs[i], false))
      return -1;
  }
  r->n_outputs = n;
  return 0;
}

static int get_type(dctx *c, const msgpack_object *v, const char *path) {
  if (v->type != MSGPACK_OBJECT_STR) return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected a string");
  const char *want = pw_msg_type_names[c->type];
  if (strlen(want) != v->via.str.size || memcmp(want, v->via.str.ptr, v->via.str.size))
    return pw_fail(c->err, PW_E_INVALID_VALUE, path, "expected a \"%s\" message", want);
  return 0;
}

static int decode_field(dctx *c, const field *f, const msgpack_object *v, const char *path,
                        void *base) {
  char *at = (char *)base + f->off;
  switch (f->type) {
    case F_INT: return get_int(c, v, path, (int64_t *)at);
    case F_NUM: return get_num(c, v, path, (double *)at);
    case F_STR: return get_str(c, v, path, (char **)at);
    case F_PAIR: return get_pair(c, v, path, (double *)at);
    case F_ENUM: return get_name(c, v, path, f, (int *)at);
    case F_BYTES: return get_bytes(c, v, path, (pw_image *)at);
    case F_MAP: return decode_map(c, v, path, f->sub, f->n_sub, base, false);
    case F_EVENTS: return get_events(c, v, path, f, (unsigned *)at);
    case F_OUTPUTS: return get_outputs(c, v, path, (pw_result *)base);
    case F_CODE:
      if (v->type != MSGPACK_OBJECT_STR) return pw_fail(c->err, PW_E_INVALID_TYPE, path, "expected a string");
      if (pw_code_from_name(v->via.str.ptr, v->via.str.size, (pw_code *)at))
        return pw_fail(c->err, PW_E_INVALID_VALUE, path, "not a known error code");
      return 0;
    case F_TYPE: return get_type(c, v, path);
  }
  return pw_fail(c->err, PW_E_INTERNAL, path, "unhandled field type");
}

/* Unknown values are kept for forwarding and must survive the JSON mapping too: string keys,
 * valid UTF-8 without NUL, integers that fit int64, finite floats. Depth is already bounded. */
static int check_jsonable(dctx *c, const msgpack_object *v, const char *path) {
  switch (v->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
      if (v->via.u64 > (uint64_t)INT64_MAX) return pw_fail(c->err, PW_E_OUT_OF_RANGE, path, "integer above 2^63-1");
      return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
      if (!isfinite(v->via.f64)) return pw_fail(c->err, PW_E_INVALID_VALUE, path, "not a finite number");
      return 0;
    case MSGPACK_OBJECT_STR:
      if (!pw_utf8_valid(v->via.str.ptr, v->via.str.size)) return pw_fail(c->err, PW_E_INVALID_UTF8, path, "invalid UTF-8");
      if (v->via.str.size && memchr(v->via.str.ptr, 0, v->via.str.size))
        return pw_fail(c->err, PW_E_INVALID_VALUE, path, "string contains a NUL byte");
      return 0;
    case MSGPACK_OBJECT_ARRAY:
      for (uint32_t i = 0; i < v->via.array.size; i++)
        if (check_jsonable(c, &v->via.array.ptr[i], path)) return -1;
      return 0;
    case MSGPACK_OBJECT_MAP:
      for (uint32_t i = 0; i < v->via.map.size; i++) {
        if (v->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
          return pw_fail(c->err, PW_E_INVALID_TYPE, path, "map keys must be strings");
        if (check_jsonable(c, &v->via.map.ptr[i].key, path) || check_jsonable(c, &v->via.map.ptr[i].val, path))
          return -1;
      }
      return 0;
    case MSGPACK_OBJECT_EXT: return pw_fail(c->err, PW_E_MALFORMED, path, "ext types are not part of the protocol");
    default: return 0; /* nil, bool, negative integer, bin */
  }
}

static int keep_unknown(dctx *c, const msgpack_object_kv *kv, const char *path) {
  if (check_jsonable(c, &kv->key, path) || check_jsonable(c, &kv->val, path)) return -1;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &c->extra, msgpack_sbuffer_write);
  if (msgpack_pack_object(&pk, kv->key) || msgpack_pack_object(&pk, kv->val))
    return pw_fail(c->err, PW_E_NO_MEMORY, path, "out of memory");
  c->n_extra++;
  return 0;
}

static int find_field(const field *fs, size_t n, const msgpack_object *key) {
  for (size_t i = 0; i < n; i++)
    if (strlen(fs[i].name) == key->via.str.size && !memcmp(fs[i].name, key->via.str.ptr, key->via.str.size))
      return (int)i;
  return -1;
}

/* msgpack-c leaves ptr NULL for an empty string, which memcmp may not see. */
static bool same_key(const msgpack_object *a, const msgpack_object *b) {
  return a->via.str.size == b->via.str.size &&
         (a->via.str.size == 0 || !memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size));
}

/* Nested maps ignore unknown keys; the top-level map keeps them in c->extra. null counts as
 * absent, so JSON clients may send "seed": null. */
static int decode_map(dctx *c, const msgpack_object *o, const char *prefix, const field *fs,
                      size_t n, void *base, bool top) {
  if (o->type != MSGPACK_OBJECT_MAP) return pw_fail(c->err, PW_E_INVALID_TYPE, prefix, "expected a map");
  bool present[32] = {false};
  char path[PATH_MAX_LEN];
  const msgpack_object_kv *kv = o->via.map.ptr;
  for (uint32_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object *key = &kv[i].key;
    if (key->type != MSGPACK_OBJECT_STR) return pw_fail(c->err, PW_E_INVALID_TYPE, prefix, "map keys must be strings");
    join(path, prefix, key->via.str.ptr, key->via.str.size);
    for (uint32_t j = 0; j < i; j++)
      if (same_key(&kv[j].key, key)) return pw_fail(c->err, PW_E_DUPLICATE_KEY, path, "key appears twice");
    int idx = find_field(fs, n, key);
    if (idx < 0) {
      if (top && keep_unknown(c, &kv[i], path)) return -1;
      continue;
    }
    if (kv[i].val.type == MSGPACK_OBJECT_NIL) continue;
    if (decode_field(c, &fs[idx], &kv[i].val, path, base)) return -1;
    present[idx] = true;
    if (fs[idx].has) *(int *)((char *)base + fs[idx].has) = 1;
  }
  for (size_t i = 0; i < n; i++)
    if (fs[i].required && !present[i]) {
      join(path, prefix, fs[i].name, strlen(fs[i].name));
      return pw_fail(c->err, PW_E_MISSING_FIELD, path, "required field is missing");
    }
  return 0;
}

/* ---- message tables -------------------------------------------------------------------- */

#define ENUM(table, count) .names = table, .n_names = count, .bad_name = PW_E_INVALID_VALUE
#define SUB(table) .sub = table, .n_sub = sizeof table / sizeof table[0]

#define IMAGE_FIELDS(member)                                                        \
  {.name = "data", .type = F_BYTES, .off = offsetof(pw_job, member)},               \
  {.name = "url", .type = F_STR, .off = offsetof(pw_job, member.url)}
static const field IMAGE_SUB[] = {IMAGE_FIELDS(image)};
static const field MASK_SUB[] = {IMAGE_FIELDS(mask)};

static const field PRIOR_SUB[] = {
    {.name = "steps", .type = F_INT, .off = offsetof(pw_job, prior.steps)},
    {.name = "guidance", .type = F_NUM, .off = offsetof(pw_job, prior.guidance)},
    {.name = "sampler", .type = F_ENUM, .off = offsetof(pw_job, prior.sampler),
     ENUM(pw_prior_sampler_names, PW_PRIOR_SAMPLER_COUNT)},
};
static const field OUTPAINT_SUB[] = {
    {.name = "offset_x", .type = F_INT, .off = offsetof(pw_job, outpaint.offset_x), .required = true},
    {.name = "offset_y", .type = F_INT, .off = offsetof(pw_job, outpaint.offset_y), .required = true},
};
static const field INTERPOLATE_SUB[] = {
    {.name = "prompt_to", .type = F_STR, .off = offsetof(pw_job, interpolate.prompt_to), .required = true},
    {.name = "frames", .type = F_INT, .off = offsetof(pw_job, interpolate.frames)},
    {.name = "mode", .type = F_ENUM, .off = offsetof(pw_job, interpolate.mode),
     ENUM(pw_interp_mode_names, PW_INTERP_COUNT)},
};
static const field OUTPUT_SUB[] = {
    {.name = "bucket", .type = F_STR, .off = offsetof(pw_job, output.bucket)},
    {.name = "prefix", .type = F_STR, .off = offsetof(pw_job, output.prefix)},
    {.name = "dir", .type = F_STR, .off = offsetof(pw_job, output.dir)},
};
static const field WEBHOOK_SUB[] = {
    {.name = "url", .type = F_STR, .off = offsetof(pw_job, webhook.url), .required = true},
    {.name = "secret_id", .type = F_STR, .off = offsetof(pw_job, webhook.secret_id)},
    {.name = "events", .type = F_EVENTS, .off = offsetof(pw_job, webhook.events),
     ENUM(pw_event_names, PW_EVENT_COUNT)},
};

static const field JOB_FIELDS[] = {
    {.name = "v", .type = F_INT, .off = offsetof(pw_job, version)},
    {.name = "type", .type = F_TYPE},
    {.name = "id", .type = F_STR, .off = offsetof(pw_job, id), .required = true},
    {.name = "kind", .type = F_ENUM, .off = offsetof(pw_job, kind), .names = pw_kind_names,
     .n_names = PW_KIND_COUNT, .bad_name = PW_E_UNKNOWN_KIND},
    {.name = "prompt", .type = F_STR, .off = offsetof(pw_job, prompt)},
    {.name = "negative_prompt", .type = F_STR, .off = offsetof(pw_job, negative_prompt)},
    {.name = "seed", .type = F_INT, .off = offsetof(pw_job, seed), .has = offsetof(pw_job, has_seed)},
    {.name = "width", .type = F_INT, .off = offsetof(pw_job, width)},
    {.name = "height", .type = F_INT, .off = offsetof(pw_job, height)},
    {.name = "batch", .type = F_INT, .off = offsetof(pw_job, batch)},
    {.name = "steps", .type = F_INT, .off = offsetof(pw_job, steps)},
    {.name = "renoise_steps", .type = F_INT, .off = offsetof(pw_job, renoise_steps)},
    {.name = "cfg", .type = F_PAIR, .off = offsetof(pw_job, cfg)},
    {.name = "temperature", .type = F_PAIR, .off = offsetof(pw_job, temperature)},
    {.name = "t_start", .type = F_NUM, .off = offsetof(pw_job, t_start)},
    {.name = "t_end", .type = F_NUM, .off = offsetof(pw_job, t_end)},
    {.name = "sampling", .type = F_ENUM, .off = offsetof(pw_job, sampling),
     ENUM(pw_sampling_names, PW_SAMPLING_COUNT)},
    {.name = "prior", .type = F_MAP, SUB(PRIOR_SUB)},
    {.name = "image", .type = F_MAP, .has = offsetof(pw_job, image.present), SUB(IMAGE_SUB)},
    {.name = "mask", .type = F_MAP, .has = offsetof(pw_job, mask.present), SUB(MASK_SUB)},
    {.name = "outpaint", .type = F_MAP, .has = offsetof(pw_job, has_outpaint), SUB(OUTPAINT_SUB)},
    {.name = "interpolate", .type = F_MAP, .has = offsetof(pw_job, has_interpolate), SUB(INTERPOLATE_SUB)},
    {.name = "output_format", .type = F_ENUM, .off = offsetof(pw_job, output_format),
     ENUM(pw_output_format_names, PW_FORMAT_COUNT)},
    {.name = "output_quality", .type = F_INT, .off = offsetof(pw_job, output_quality)},
    {.name = "preview_every", .type = F_INT, .off = offsetof(pw_job, preview_every)},
    {.name = "output", .type = F_MAP, .has = offsetof(pw_job, has_output), SUB(OUTPUT_SUB)},
    {.name = "webhook", .type = F_MAP, .has = offsetof(pw_job, has_webhook), SUB(WEBHOOK_SUB)},
    {.name = "priority", .type = F_INT, .off = offsetof(pw_job, priority)},
    {.name = "deadline_ms", .type = F_INT, .off = offsetof(pw_job, deadline_ms)},
    {.name = "idempotency_key", .type = F_STR, .off = offsetof(pw_job, idempotency_key)},
    {.name = "attempt", .type = F_INT, .off = offsetof(pw_job, attempt)},
};

static const field PROGRESS_FIELDS[] = {
    {.name = "v", .type = F_INT, .off = offsetof(pw_progress, version)},
    {.name = "type", .type = F_TYPE},
    {.name = "job_id", .type = F_STR, .off = offsetof(pw_progress, job_id), .required = true},
    {.name = "step", .type = F_INT, .off = offsetof(pw_progress, step), .required = true},
    {.name = "total", .type = F_INT, .off = offsetof(pw_progress, total), .required = true},
    {.name = "stage", .type = F_ENUM, .off = offsetof(pw_progress, stage), .required = true,
     ENUM(pw_stage_names, PW_STAGE_COUNT)},
    {.name = "ts_ms", .type = F_INT, .off = offsetof(pw_progress, ts_ms), .required = true},
    {.name = "preview", .type = F_STR, .off = offsetof(pw_progress, preview)},
};

static const field TIMINGS_SUB[] = {
    {.name = "queued", .type = F_NUM, .off = offsetof(pw_result, timings_ms[PW_STAGE_QUEUED])},
    {.name = "fetch", .type = F_NUM, .off = offsetof(pw_result, timings_ms[PW_STAGE_FETCH])},
    {.name = "text_encode", .type = F_NUM, .off = offsetof(pw_result, timings_ms[PW_STAGE_TEXT_ENCODE])},
    {.name = "prior", .type = F_NUM, .off = offsetof(pw_result, timings_ms[PW_STAGE_PRIOR])},
    {.name = "denoise", .type = F_NUM, .off = offsetof(pw_result, timings_ms[PW_STAGE_DENOISE])},
    {.name = "vq_decode", .type = F_NUM, .off = offsetof(pw_result, timings_ms[PW_STAGE_VQ_DECODE])},
    {.name = "upload", .type = F_NUM, .off = offsetof(pw_result, timings_ms[PW_STAGE_UPLOAD])},
    {.name = "total", .type = F_NUM, .off = offsetof(pw_result, total_ms)},
};
static const field ERROR_SUB[] = {
    {.name = "code", .type = F_CODE, .off = offsetof(pw_result, error_code), .required = true},
    {.name = "message", .type = F_STR, .off = offsetof(pw_result, error_message)},
};
static const field RESULT_FIELDS[] = {
    {.name = "v", .type = F_INT, .off = offsetof(pw_result, version)},
    {.name = "type", .type = F_TYPE},
    {.name = "job_id", .type = F_STR, .off = offsetof(pw_result, job_id), .required = true},
    {.name = "status", .type = F_ENUM, .off = offsetof(pw_result, status), .required = true,
     ENUM(pw_status_names, PW_STATUS_COUNT)},
    {.name = "outputs", .type = F_OUTPUTS},
    {.name = "timings_ms", .type = F_MAP, SUB(TIMINGS_SUB)},
    {.name = "seed", .type = F_INT, .off = offsetof(pw_result, seed), .has = offsetof(pw_result, has_seed)},
    {.name = "error", .type = F_MAP, .has = offsetof(pw_result, has_error), SUB(ERROR_SUB)},
};

#define N(table) (sizeof table / sizeof table[0])
/* decode_map tracks presence in a bool[32] */
_Static_assert(N(JOB_FIELDS) <= 32 && N(PROGRESS_FIELDS) <= 32 && N(RESULT_FIELDS) <= 32,
               "a map has more fields than decode_map tracks");

/* ---- entry points ---------------------------------------------------------------------- */

/* The version is read before anything else so that a message from a newer schema is
 * reported as such rather than as whatever field changed meaning. */
static int peek_version(dctx *c, const msgpack_object *root, int64_t *version) {
  for (uint32_t i = 0; i < root->via.map.size; i++) {
    const msgpack_object_kv *kv = &root->via.map.ptr[i];
    if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 1 && kv->key.via.str.ptr[0] == 'v' &&
        kv->val.type != MSGPACK_OBJECT_NIL) {
      if (get_int(c, &kv->val, "v", version)) return -1;
      return pw_check_version(*version, c->err);
    }
  }
  return 0;
}

static int decode_top(const msgpack_object *root, bool from_json, pw_msg_type type,
                      const field *fs, size_t n, void *msg, int64_t *version, pw_extra *extra,
                      pw_error *err) {
  dctx c = {.from_json = from_json, .type = type, .err = err};
  msgpack_sbuffer_init(&c.extra);
  int rc = -1;
  if (root->type != MSGPACK_OBJECT_MAP) {
    pw_fail(err, PW_E_INVALID_TYPE, "", "a message must be a map");
    goto fail;
  }
  if (peek_version(&c, root, version) || decode_map(&c, root, "", fs, n, msg, true)) goto fail;
  extra->count = c.n_extra;
  extra->len = c.extra.size;
  extra->data = (uint8_t *)msgpack_sbuffer_release(&c.extra);
  rc = 0;
fail:
  msgpack_sbuffer_destroy(&c.extra);
  return rc;
}

int pw_job_from_object(const msgpack_object *root, bool from_json, pw_job *job, pw_error *err) {
  if (decode_top(root, from_json, PW_MSG_JOB, JOB_FIELDS, N(JOB_FIELDS), job, &job->version,
                 &job->extra, err))
    return -1;
  pw_job_apply_defaults(job);
  return 0;
}

int pw_progress_from_object(const msgpack_object *root, bool from_json, pw_progress *p,
                            pw_error *err) {
  return decode_top(root, from_json, PW_MSG_PROGRESS, PROGRESS_FIELDS, N(PROGRESS_FIELDS), p,
                    &p->version, &p->extra, err);
}

int pw_result_from_object(const msgpack_object *root, bool from_json, pw_result *r,
                          pw_error *err) {
  return decode_top(root, from_json, PW_MSG_RESULT, RESULT_FIELDS, N(RESULT_FIELDS), r,
                    &r->version, &r->extra, err);
}
