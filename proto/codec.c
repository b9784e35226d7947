/* Public entry points: bytes in either format -> object tree -> struct -> validation, and
 * struct -> msgpack -> JSON. Each is the same three steps, so they share one shape. */
#include <stdlib.h>
#include <string.h>

#include "proto/internal.h"

typedef int (*unpack_fn)(const void *buf, size_t len, msgpack_unpacked *out, pw_error *err);

static int unpack_json(const void *buf, size_t len, msgpack_unpacked *out, pw_error *err) {
  return pw_unpack_json(buf, len, out, err);
}

#define DEFINE_DECODER(name, type, unpack, from_json, from_object, validate, free_fn, init_fn) \
  int name(const void *buf, size_t len, type *msg, pw_error *err) {                            \
    init_fn(msg);                                                                               \
    msgpack_unpacked u;                                                                         \
    msgpack_unpacked_init(&u);                                                                  \
    int rc = -1;                                                                                \
    if (unpack(buf, len, &u, err) || from_object(&u.data, from_json, msg, err) ||              \
        validate(msg, err))                                                                     \
      free_fn(msg);                                                                             \
    else                                                                                        \
      rc = 0;                                                                                   \
    msgpack_unpacked_destroy(&u);                                                               \
    return rc;                                                                                  \
  }

DEFINE_DECODER(pw_job_decode, pw_job, pw_unpack_msgpack, false, pw_job_from_object,
               pw_job_validate, pw_job_free, pw_job_init)
DEFINE_DECODER(pw_progress_decode, pw_progress, pw_unpack_msgpack, false,
               pw_progress_from_object, pw_progress_validate, pw_progress_free, pw_progress_init)
DEFINE_DECODER(pw_result_decode, pw_result, pw_unpack_msgpack, false, pw_result_from_object,
               pw_result_validate, pw_result_free, pw_result_init)
DEFINE_DECODER(job_from_json, pw_job, unpack_json, true, pw_job_from_object, pw_job_validate,
               pw_job_free, pw_job_init)
DEFINE_DECODER(progress_from_json, pw_progress, unpack_json, true, pw_progress_from_object,
               pw_progress_validate, pw_progress_free, pw_progress_init)
DEFINE_DECODER(result_from_json, pw_result, unpack_json, true, pw_result_from_object,
               pw_result_validate, pw_result_free, pw_result_init)

int pw_job_from_json(const char *text, size_t len, pw_job *job, pw_error *err) {
  return job_from_json(text, len, job, err);
}
int pw_progress_from_json(const char *text, size_t len, pw_progress *p, pw_error *err) {
  return progress_from_json(text, len, p, err);
}
int pw_result_from_json(const char *text, size_t len, pw_result *r, pw_error *err) {
  return result_from_json(text, len, r, err);
}

#define DEFINE_TO_JSON(name, type, encode)                                    \
  int name(const type *msg, int flags, char **out, pw_error *err) {          \
    uint8_t *bytes = NULL;                                                    \
    size_t n = 0;                                                             \
    *out = NULL;                                                              \
    if (encode(msg, &bytes, &n, err)) return -1;                              \
    int rc = pw_msgpack_to_json(bytes, n, flags, out, err);                   \
    free(bytes);                                                              \
    return rc;                                                                \
  }

DEFINE_TO_JSON(pw_job_to_json, pw_job, pw_job_encode)
DEFINE_TO_JSON(pw_progress_to_json, pw_progress, pw_progress_encode)
DEFINE_TO_JSON(pw_result_to_json, pw_result, pw_result_encode)

int pw_peek_type(const void *buf, size_t len, int is_json, pw_msg_type *type, pw_error *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  int rc = -1;
  if ((is_json ? unpack_json : pw_unpack_msgpack)(buf, len, &u, err)) goto fail;
  rc = 1;
  for (uint32_t i = 0; i < u.data.via.map.size; i++) {
    const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
    if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 4 || memcmp(kv->key.via.str.ptr, "type", 4))
      continue;
    if (kv->val.type != MSGPACK_OBJECT_STR) {
      rc = pw_fail(err, PW_E_INVALID_TYPE, "type", "expected a string");
      break;
    }
    int t = pw_name_lookup(pw_msg_type_names, 3, kv->val.via.str.ptr, kv->val.via.str.size);
    if (t < 0) {
      rc = pw_fail(err, PW_E_INVALID_VALUE, "type", "not a message type (job, progress, result)");
      break;
    }
    *type = (pw_msg_type)t;
    rc = 0;
    break;
  }
fail:
  msgpack_unpacked_destroy(&u);
  return rc;
}
