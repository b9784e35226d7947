/* Shared between the files of proto/ only; not part of the public API (proto/proto.h). */
#ifndef PAELLA_PROTO_INTERNAL_H
#define PAELLA_PROTO_INTERNAL_H

#include <msgpack.h>
#include <stdbool.h>

#include "proto/proto.h"

/* Fills `err` (printf-style message) and returns -1, so callers write `return pw_fail(...)`. */
int pw_fail(pw_error *err, pw_code code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Name tables indexed by the enum value, and their lookup (-1 when not found). */
extern const char *const pw_kind_names[PW_KIND_COUNT];
extern const char *const pw_sampling_names[PW_SAMPLING_COUNT];
extern const char *const pw_output_format_names[PW_FORMAT_COUNT];
extern const char *const pw_prior_sampler_names[PW_PRIOR_SAMPLER_COUNT];
extern const char *const pw_interp_mode_names[PW_INTERP_COUNT];
extern const char *const pw_event_names[PW_EVENT_COUNT];
extern const char *const pw_stage_names[PW_STAGE_COUNT];
extern const char *const pw_status_names[PW_STATUS_COUNT];
extern const char *const pw_msg_type_names[3];
int pw_name_lookup(const char *const *names, int n, const char *s, size_t len);

/* Structural check of untrusted msgpack before msgpack-c sees it: total size, truncation,
 * declared lengths against the bytes left, depth, element count, no ext types, no trailing
 * bytes. After it passes, msgpack-c's allocations are bounded by the input size. */
int pw_scan_msgpack(const uint8_t *p, size_t n, pw_error *err);

/* Bytes -> object tree in `out` (initialised by the caller with msgpack_unpacked_init and
 * released with msgpack_unpacked_destroy, also on failure). The root is checked to be a map.
 * msgpack: scan + msgpack_unpack_next (strings point into `buf`, which must outlive `out`);
 * JSON: json_loadb + conversion into a zone of our own. */
int pw_unpack_msgpack(const void *buf, size_t len, msgpack_unpacked *out, pw_error *err);
int pw_unpack_json(const char *text, size_t len, msgpack_unpacked *out, pw_error *err);

/* Object tree -> message. `from_json` says that image data comes as base64 strings. The
 * result has defaults applied but is not validated yet. */
int pw_job_from_object(const msgpack_object *root, bool from_json, pw_job *job, pw_error *err);
int pw_progress_from_object(const msgpack_object *root, bool from_json, pw_progress *p,
                            pw_error *err);
int pw_result_from_object(const msgpack_object *root, bool from_json, pw_result *r,
                          pw_error *err);

/* Encoded msgpack (a validated message) -> JSON text, bin values as base64 strings. */
int pw_msgpack_to_json(const uint8_t *buf, size_t len, int flags, char **out, pw_error *err);

/* 0 when `v` is a schema version this code reads, else -1 (unsupported_version/out_of_range). */
int pw_check_version(int64_t v, pw_error *err);

/* Text checks used by validation. */
bool pw_utf8_valid(const char *s, size_t len);

/* RFC 4648 base64 with padding. encode returns a malloc'd NUL-terminated string or NULL;
 * decode returns 0 and a malloc'd buffer, or -1 on a bad alphabet/padding/out of memory
 * (*out NULL in that case, *nomem set when it was memory). */
char *pw_base64_encode(const uint8_t *data, size_t len);
int pw_base64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len, bool *nomem);

#endif
