/* The JSON mapping of the HTTP edge. JSON text becomes the same msgpack_object tree that a
 * msgpack message becomes, and goes through the same decoder and validation; the only
 * difference the decoder sees is that image bytes arrive as base64 strings. Output goes the
 * other way round: a message is encoded to msgpack (validated, deterministic) and that tree
 * is written as JSON with bin values as base64 strings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proto/internal.h"

typedef struct {
  msgpack_zone *zone;
  size_t elements;
  pw_error *err;
} jctx;

static pw_code json_error_to_code(enum json_error_code c) {
  switch (c) {
    case json_error_out_of_memory: return PW_E_NO_MEMORY;
    case json_error_stack_overflow: return PW_E_TOO_DEEP;
    case json_error_invalid_utf8: return PW_E_INVALID_UTF8;
    case json_error_premature_end_of_input: return PW_E_TRUNCATED;
    case json_error_null_character:
    case json_error_null_byte_in_key: return PW_E_INVALID_VALUE;
    case json_error_duplicate_key: return PW_E_DUPLICATE_KEY;
    case json_error_numeric_overflow: return PW_E_OUT_OF_RANGE;
    default: return PW_E_MALFORMED;
  }
}

static int to_object(jctx *c, json_t *j, int depth, msgpack_object *o);

static int copy_str(jctx *c, const char *s, size_t n, msgpack_object *o) {
  char *p = msgpack_zone_malloc(c->zone, n ? n : 1);
  if (!p) return pw_fail(c->err, PW_E_NO_MEMORY, "", "out of memory");
  if (n) memcpy(p, s, n);
  o->type = MSGPACK_OBJECT_STR;
  o->via.str.ptr = p;
  o->via.str.size = (uint32_t)n;
  return 0;
}

static int container(jctx *c, json_t *j, int depth, msgpack_object *o) {
  bool is_map = json_is_object(j);
  size_t n = is_map ? json_object_size(j) : json_array_size(j);
  size_t per = is_map ? sizeof(msgpack_object_kv) : sizeof(msgpack_object);
  if (n > PW_MAX_ELEMENTS - c->elements) /* before allocating room for them */
    return pw_fail(c->err, PW_E_TOO_LARGE, "", "more than %d values in one message", PW_MAX_ELEMENTS);
  void *items = msgpack_zone_malloc(c->zone, n ? n * per : 1);
  if (!items) return pw_fail(c->err, PW_E_NO_MEMORY, "", "out of memory");
  if (!is_map) {
    o->type = MSGPACK_OBJECT_ARRAY;
    o->via.array.ptr = items;
    o->via.array.size = (uint32_t)n;
    for (size_t i = 0; i < n; i++)
      if (to_object(c, json_array_get(j, i), depth + 1, &o->via.array.ptr[i])) return -1;
    return 0;
  }
  o->type = MSGPACK_OBJECT_MAP;
  o->via.map.ptr = items;
  o->via.map.size = (uint32_t)n;
  const char *k;
  json_t *v;
  size_t i = 0;
  json_object_foreach(j, k, v) {
    if (++c->elements > PW_MAX_ELEMENTS)
      return pw_fail(c->err, PW_E_TOO_LARGE, "", "more than %d values in one message", PW_MAX_ELEMENTS);
    if (copy_str(c, k, strlen(k), &o->via.map.ptr[i].key) ||
        to_object(c, v, depth + 1, &o->via.map.ptr[i].val))
      return -1;
    i++;
  }
  return 0;
}

/* Same shape rules as pw_scan_msgpack: depth and element count; keys count as values. */
static int to_object(jctx *c, json_t *j, int depth, msgpack_object *o) {
  if (++c->elements > PW_MAX_ELEMENTS)
    return pw_fail(c->err, PW_E_TOO_LARGE, "", "more than %d values in one message", PW_MAX_ELEMENTS);
  memset(o, 0, sizeof *o);
  switch (json_typeof(j)) {
    case JSON_OBJECT:
    case JSON_ARRAY:
      if (depth + 1 > PW_MAX_DEPTH) return pw_fail(c->err, PW_E_TOO_DEEP, "", "nesting deeper than %d", PW_MAX_DEPTH);
      return container(c, j, depth, o);
    case JSON_STRING: return copy_str(c, json_string_value(j), json_string_length(j), o);
    case JSON_INTEGER: {
      json_int_t v = json_integer_value(j);
      o->type = v < 0 ? MSGPACK_OBJECT_NEGATIVE_INTEGER : MSGPACK_OBJECT_POSITIVE_INTEGER;
      if (v < 0) o->via.i64 = v; else o->via.u64 = (uint64_t)v;
      return 0;
    }
    case JSON_REAL: o->type = MSGPACK_OBJECT_FLOAT64; o->via.f64 = json_real_value(j); return 0;
    case JSON_TRUE:
    case JSON_FALSE: o->type = MSGPACK_OBJECT_BOOLEAN; o->via.boolean = json_is_true(j); return 0;
    case JSON_NULL: o->type = MSGPACK_OBJECT_NIL; return 0;
  }
  return pw_fail(c->err, PW_E_MALFORMED, "", "unexpected JSON value");
}

/* jansson builds the whole document before we see it, at some 50 bytes per value, and
 * recurses per nesting level. So the text is first scanned for what it could hold: the
 * nesting depth and the number of separators and containers, which bound the values from
 * above. The exact limits are applied again on the tree. */
static int prescan(const char *s, size_t len, pw_error *err) {
  size_t tokens = 0;
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < len; i++) {
    char ch = s[i];
    if (in_string) {
      if (ch == '\\') i++;
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > PW_MAX_DEPTH) return pw_fail(err, PW_E_TOO_DEEP, "", "nesting deeper than %d", PW_MAX_DEPTH);
      tokens++;
    } else if (ch == ']' || ch == '}') {
      depth -= depth > 0;
    } else if (ch == ',' || ch == ':') {
      tokens++;
    }
    if (tokens > 2 * (size_t)PW_MAX_ELEMENTS)
      return pw_fail(err, PW_E_TOO_LARGE, "", "more than %d values in one message", PW_MAX_ELEMENTS);
  }
  return 0;
}

int pw_unpack_json(const char *text, size_t len, msgpack_unpacked *out, pw_error *err) {
  if (len > PW_MAX_JSON_BYTES)
    return pw_fail(err, PW_E_TOO_LARGE, "", "message is %zu bytes, the limit is %u", len, PW_MAX_JSON_BYTES);
  if (prescan(text, len, err)) return -1;
  json_error_t jerr;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return pw_fail(err, json_error_to_code(json_error_code(&jerr)), "", "JSON line %d column %d: %s",
                   jerr.line, jerr.column, jerr.text);
  int rc = -1;
  if (!json_is_object(root)) {
    pw_fail(err, PW_E_INVALID_TYPE, "", "a message must be a JSON object");
    goto fail;
  }
  if (!out->zone) out->zone = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
  if (!out->zone) {
    pw_fail(err, PW_E_NO_MEMORY, "", "out of memory");
    goto fail;
  }
  jctx c = {.zone = out->zone, .elements = 0, .err = err};
  rc = to_object(&c, root, 0, &out->data);
fail:
  json_decref(root);
  return rc;
}

/* ---- tree -> JSON ---------------------------------------------------------------------- */

static json_t *from_object(const msgpack_object *o);

static json_t *from_map(const msgpack_object *o) {
  json_t *m = json_object();
  for (uint32_t i = 0; m && i < o->via.map.size; i++) {
    const msgpack_object_kv *kv = &o->via.map.ptr[i];
    /* keys are strings: the decoder checked every map of a message it accepted */
    json_t *v = from_object(&kv->val);
    const char *k = kv->key.via.str.size ? kv->key.via.str.ptr : ""; /* msgpack-c: NULL if empty */
    if (!v || json_object_setn_new(m, k, kv->key.via.str.size, v)) {
      json_decref(m);
      return NULL;
    }
  }
  return m;
}

static json_t *from_object(const msgpack_object *o) {
  switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR: return json_stringn(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
      char *b64 = pw_base64_encode((const uint8_t *)o->via.bin.ptr, o->via.bin.size);
      json_t *s = b64 ? json_string(b64) : NULL;
      free(b64);
      return s;
    }
    case MSGPACK_OBJECT_ARRAY: {
      json_t *a = json_array();
      for (uint32_t i = 0; a && i < o->via.array.size; i++)
        if (json_array_append_new(a, from_object(&o->via.array.ptr[i]))) {
          json_decref(a);
          return NULL;
        }
      return a;
    }
    case MSGPACK_OBJECT_MAP: return from_map(o);
    default: return NULL; /* ext never passes the decoder */
  }
}

/* Whether every real in `j` survives printing with `digits` significant digits. */
static bool reals_exact_at(const json_t *j, int digits) {
  char buf[40];
  const char *k;
  json_t *v;
  size_t i;
  switch (json_typeof(j)) {
    case JSON_REAL:
      snprintf(buf, sizeof buf, "%.*g", digits, json_real_value(j));
      return strtod(buf, NULL) == json_real_value(j);
    case JSON_ARRAY:
      json_array_foreach(j, i, v) if (!reals_exact_at(v, digits)) return false;
      return true;
    case JSON_OBJECT:
      json_object_foreach((json_t *)j, k, v) if (!reals_exact_at(v, digits)) return false;
      return true;
    default: return true;
  }
}

/* Encoded (validated) msgpack -> JSON text. */
int pw_msgpack_to_json(const uint8_t *buf, size_t len, int flags, char **out, pw_error *err) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  json_t *j = NULL;
  int rc = -1;
  *out = NULL;
  if (pw_unpack_msgpack(buf, len, &u, err)) goto fail;
  j = from_object(&u.data);
  size_t jflags = (flags & PW_JSON_PRETTY) ? JSON_INDENT(2) : JSON_COMPACT;
  /* 17 significant digits bring every double back bit-exact, but print 0.7 as
   * 0.69999999999999996; 15 is enough for the values people write, so use it when it is
   * exact for every number of the message. */
  if (j) jflags |= JSON_REAL_PRECISION(reals_exact_at(j, 15) ? 15 : 17);
  *out = j ? json_dumps(j, jflags) : NULL;
  if (!*out) {
    pw_fail(err, PW_E_NO_MEMORY, "", "out of memory while writing JSON");
    goto fail;
  }
  rc = 0;
fail:
  json_decref(j);
  msgpack_unpacked_destroy(&u);
  return rc;
}
