/* The paella wire protocol: Job, Progress and Result messages, their C types, msgpack
 * encode/decode, and the JSON mapping used at the HTTP edge. docs/protocol.md is the
 * reference for every field; proto/limits.h holds every limit and default.
 *
 * Messages are maps with string keys and a version field "v". Decoders reject what they do
 * not understand with a pw_error (stable code name + field path + message), ignore unknown
 * top-level fields but keep their bytes in `extra` so that a forwarded message carries them
 * on. Both input formats go through the same object decoder and pw_*_validate, so the HTTP
 * edge and the queue enforce exactly the same rules. Library code never exits. */
#ifndef PAELLA_PROTO_PROTO_H
#define PAELLA_PROTO_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "proto/limits.h"

/* ---- error codes: the numbers and names are stable, append only ---------------------- */
typedef enum {
  PW_OK = 0,
  /* the message itself is wrong (validation) */
  PW_E_MALFORMED = 1,           /* not msgpack/JSON at all, trailing bytes, ext types */
  PW_E_TRUNCATED = 2,           /* msgpack ends inside a value */
  PW_E_TOO_DEEP = 3,            /* nesting deeper than PW_MAX_DEPTH */
  PW_E_TOO_LARGE = 4,           /* a byte length or element count above its limit */
  PW_E_INVALID_TYPE = 5,        /* e.g. a string where an integer belongs */
  PW_E_MISSING_FIELD = 6,       /* a required field is absent */
  PW_E_OUT_OF_RANGE = 7,        /* a number outside its range or not a multiple it must be */
  PW_E_INVALID_UTF8 = 8,        /* a text field is not valid UTF-8 */
  PW_E_INVALID_VALUE = 9,       /* an enum name, charset, URL or base64 that is not allowed */
  PW_E_UNKNOWN_KIND = 10,       /* job kind is not one of the six */
  PW_E_DUPLICATE_KEY = 11,      /* the same key twice in one map */
  PW_E_UNSUPPORTED_VERSION = 12, /* "v" newer than this code understands */
  PW_E_CONFLICT = 13,           /* fields that contradict each other or the job kind */
  /* running the job failed (Result.error.code) */
  PW_E_NO_MEMORY = 32,
  PW_E_IO = 33,
  PW_E_INPUT_FETCH = 34,        /* the input image URL could not be fetched */
  PW_E_INVALID_IMAGE = 35,      /* the input image/mask could not be decoded */
  PW_E_MODEL = 36,              /* weights missing or a network failed */
  PW_E_GPU = 37,                /* CUDA error or out of device memory */
  PW_E_STORAGE = 38,            /* the output could not be stored */
  PW_E_DEADLINE = 39,           /* the job's deadline passed */
  PW_E_CANCELED = 40,           /* canceled by a client */
  PW_E_TOO_MANY_ATTEMPTS = 41,  /* dead-lettered after repeated deliveries */
  PW_E_INTERNAL = 42,
} pw_code;

/* A decode/validation failure: `field` is a path such as "prior.steps" or
 * "webhook.events[1]", "" for the message as a whole. */
typedef struct {
  pw_code code;
  char field[96];
  char message[160];
} pw_error;

const char *pw_code_name(pw_code code); /* "invalid_type"; "unknown" for a foreign number */
/* Name -> code; 0 when found, -1 otherwise. `name` need not be NUL-terminated. */
int pw_code_from_name(const char *name, size_t len, pw_code *out);
/* One JSON line without newline: {"code":"...","field":"...","message":"..."}. Returns a
 * malloc'd string (NULL only when out of memory). */
char *pw_error_json(const pw_error *err);

/* ---- enumerations (stable wire names in docs/protocol.md) --------------------------- */
typedef enum {
  PW_KIND_TXT2IMG, PW_KIND_IMG2IMG, PW_KIND_INPAINT, PW_KIND_OUTPAINT, PW_KIND_VARIATION,
  PW_KIND_INTERPOLATE, PW_KIND_COUNT
} pw_kind;
typedef enum { PW_SAMPLING_MULTINOMIAL, PW_SAMPLING_ARGMAX, PW_SAMPLING_COUNT } pw_sampling;
typedef enum { PW_PRIOR_DDPM, PW_PRIOR_DDIM, PW_PRIOR_SAMPLER_COUNT } pw_prior_sampler;
typedef enum { PW_INTERP_SLERP, PW_INTERP_LERP, PW_INTERP_COUNT } pw_interp_mode;
typedef enum { PW_FORMAT_PNG, PW_FORMAT_JPEG, PW_FORMAT_WEBP, PW_FORMAT_COUNT } pw_output_format;
typedef enum {
  PW_EVENT_START, PW_EVENT_PROGRESS, PW_EVENT_COMPLETED, PW_EVENT_FAILED, PW_EVENT_COUNT
} pw_event;
#define PW_EVENTS_ALL ((1u << PW_EVENT_COUNT) - 1u)
typedef enum {
  PW_STAGE_QUEUED, PW_STAGE_FETCH, PW_STAGE_TEXT_ENCODE, PW_STAGE_PRIOR, PW_STAGE_DENOISE,
  PW_STAGE_VQ_DECODE, PW_STAGE_UPLOAD, PW_STAGE_COUNT
} pw_stage;
typedef enum { PW_STATUS_SUCCEEDED, PW_STATUS_FAILED, PW_STATUS_CANCELED, PW_STATUS_COUNT } pw_status;

const char *pw_kind_name(pw_kind k);
const char *pw_sampling_name(pw_sampling s);
const char *pw_prior_sampler_name(pw_prior_sampler s);
const char *pw_interp_mode_name(pw_interp_mode m);
const char *pw_output_format_name(pw_output_format f);
/* Digits in the number of output `index` of `total`: at least 2 when there are several, so
 * that names sort ("00.png" ... "11.png"; `paella generate -o f.png`: f-00.png ...), 1 for a
 * single output ("0.png"). The worker's keys and the CLI's -o names both use it. */
int pw_output_digits(int total);
const char *pw_event_name(pw_event e);
const char *pw_stage_name(pw_stage s);
const char *pw_status_name(pw_status s);

/* ---- build ------------------------------------------------------------------------- */
/* "0.3.0" and the line every binary's --version prints:
 * "paella 0.3.0 (commit 1a2b3c4d5e6f, Release build, CUDA no)" */
const char *pw_build_version(void);
const char *pw_build_description(void);

/* ---- messages ----------------------------------------------------------------------- */
typedef enum { PW_MSG_JOB, PW_MSG_PROGRESS, PW_MSG_RESULT } pw_msg_type;

/* Unknown top-level fields, kept as `count` msgpack key/value pairs back to back. */
typedef struct {
  uint8_t *data;
  size_t len;
  uint32_t count;
} pw_extra;

/* An input image or mask: inline bytes (PNG/JPEG/WebP, <= PW_MAX_IMAGE_BYTES) or a URL. */
typedef struct {
  int present;
  uint8_t *data; /* NULL when given by URL */
  size_t len;
  char *url;     /* NULL when given inline */
} pw_image;

/* Owned strings are malloc'd, NUL-terminated and free of NUL bytes; NULL means absent. */
typedef struct {
  int64_t version;
  char *id;
  pw_kind kind;
  char *prompt;
  char *negative_prompt;
  int has_seed; /* without a seed the worker draws one and reports it in the Result */
  int64_t seed;
  int64_t width, height; /* output pixels; the canvas for outpaint */
  int64_t batch;
  int64_t steps;
  int64_t renoise_steps; /* -1 before defaults are applied: steps - 1 */
  double cfg[2];         /* linear from [0] at the first step to [1] at the last */
  double temperature[2];
  double t_start, t_end; /* t_start NaN before defaults are applied (kind-dependent) */
  pw_sampling sampling;
  struct {
    int64_t steps;
    double guidance;
    pw_prior_sampler sampler;
  } prior;
  pw_image image; /* img2img, inpaint, outpaint, variation */
  pw_image mask;  /* inpaint (required), outpaint (optional) */
  int has_outpaint;
  struct {
    int64_t offset_x, offset_y; /* where the input image's top-left lands on the canvas */
  } outpaint;
  int has_interpolate;
  struct {
    char *prompt_to; /* `prompt` is the first end point */
    int64_t frames;
    pw_interp_mode mode;
  } interpolate;
  pw_output_format output_format; /* of the stored images */
  int64_t output_quality;         /* JPEG and WebP, PW_QUALITY_MIN..PW_QUALITY_MAX */
  int64_t preview_every;          /* a preview every N denoising steps, 0 = none (0..PW_STEPS_MAX) */
  int has_output; /* without one the worker's configured store is used */
  struct {
    char *bucket, *prefix; /* S3 target ... */
    char *dir;             /* ... or a local directory */
  } output;
  int has_webhook;
  struct {
    char *url;
    char *secret_id;
    unsigned events; /* bit (1 << pw_event) */
  } webhook;
  int64_t priority;
  int64_t deadline_ms; /* Unix milliseconds, 0 = none */
  char *idempotency_key;
  int64_t attempt;
  pw_extra extra;
} pw_job;

typedef struct {
  int64_t version;
  char *job_id;
  int64_t step, total; /* step in 0..total within `stage` */
  pw_stage stage;
  int64_t ts_ms; /* Unix milliseconds */
  char *preview; /* URL (or storage key) of the latest preview image, NULL when none */
  pw_extra extra;
} pw_progress;

typedef struct {
  char *key; /* object key (S3) or file path (local dir) */
  char *url; /* presigned GET or file:// URL; NULL if none */
  char *params; /* the generation parameters embedded in the image (JSON text); NULL if none */
} pw_output;

typedef struct {
  int64_t version;
  char *job_id;
  pw_status status;
  pw_output *outputs;
  size_t n_outputs;
  double timings_ms[PW_STAGE_COUNT]; /* NaN: not measured */
  double total_ms;                   /* NaN: not measured */
  int has_seed;
  int64_t seed;
  int has_error; /* required when failed, optional when canceled, absent when succeeded */
  pw_code error_code;
  char *error_message;
  pw_extra extra;
} pw_result;

/* init sets every default (and "unset" markers); free releases owned memory and re-inits. */
void pw_job_init(pw_job *job);
void pw_job_free(pw_job *job);
void pw_progress_init(pw_progress *p);
void pw_progress_free(pw_progress *p);
void pw_result_init(pw_result *r);
void pw_result_free(pw_result *r);

/* Fills the kind-dependent defaults (renoise_steps, t_start). Decoders call it. */
void pw_job_apply_defaults(pw_job *job);

/* The one place where limits are enforced. 0 when valid, else -1 with `err` filled.
 * Job defaults left unset (renoise_steps, t_start) are judged as their default values. */
int pw_job_validate(const pw_job *job, pw_error *err);
int pw_progress_validate(const pw_progress *p, pw_error *err);
int pw_result_validate(const pw_result *r, pw_error *err);

/* msgpack bytes -> message (decoded, defaulted, validated). On failure the message is left
 * initialised (free is still safe) and -1 is returned with `err` filled. */
int pw_job_decode(const void *buf, size_t len, pw_job *job, pw_error *err);
int pw_progress_decode(const void *buf, size_t len, pw_progress *p, pw_error *err);
int pw_result_decode(const void *buf, size_t len, pw_result *r, pw_error *err);

/* JSON text -> message, with the same rules (images are base64 strings). */
int pw_job_from_json(const char *text, size_t len, pw_job *job, pw_error *err);
int pw_progress_from_json(const char *text, size_t len, pw_progress *p, pw_error *err);
int pw_result_from_json(const char *text, size_t len, pw_result *r, pw_error *err);

/* message -> msgpack (validated first; the encoding is deterministic). On success *out is a
 * malloc'd buffer of *out_len bytes. */
int pw_job_encode(const pw_job *job, uint8_t **out, size_t *out_len, pw_error *err);
int pw_progress_encode(const pw_progress *p, uint8_t **out, size_t *out_len, pw_error *err);
int pw_result_encode(const pw_result *r, uint8_t **out, size_t *out_len, pw_error *err);

/* message -> JSON text (validated first), malloc'd, NUL-terminated. PW_JSON_PRETTY indents. */
#define PW_JSON_PRETTY 1
int pw_job_to_json(const pw_job *job, int flags, char **out, pw_error *err);
int pw_progress_to_json(const pw_progress *p, int flags, char **out, pw_error *err);
int pw_result_to_json(const pw_result *r, int flags, char **out, pw_error *err);

/* The "type" field of an encoded message ("job", "progress", "result"): 0 and *type when
 * present and known, 1 when absent, -1 with err when the bytes are not a valid map or the
 * type is unknown. `is_json` selects the input format. */
int pw_peek_type(const void *buf, size_t len, int is_json, pw_msg_type *type, pw_error *err);

#endif
