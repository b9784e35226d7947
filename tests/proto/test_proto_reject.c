/* Rejection tests: each malformed input must fail with exactly the expected error code and
 * field path. JSON cases whose fault is not JSON syntax are also fed as msgpack (the same
 * object tree, packed), since both formats must apply the same rules. */
#include <stdlib.h>
#include <string.h>

#include "proto/internal.h"
#include "tests/test.h"

typedef struct {
  const char *name;
  const char *bytes;
  size_t len;
  const char *code;
  const char *field;
} mp_case;

static const mp_case MP_CASES[] = {
#include "tests/proto/msgpack_cases.inc"
};

typedef struct {
  const char *type; /* job, progress, result */
  const char *json;
  const char *code;
  const char *field;
} json_case;

#define J(...) #__VA_ARGS__
static const json_case JSON_CASES[] = {
    {"job", "hello", "malformed", ""},
    {"job", "{\"id\":\"a\"", "truncated", ""},
    {"job", "[1,2]", "invalid_type", ""},
    {"job", "{\"id\":\"a\",\"prompt\":\"x\",\"id\":\"b\"}", "duplicate_key", ""},
    {"job", "{\"id\":\"a\",\"prompt\":\"x\",\"steps\":99999999999999999999}", "out_of_range", ""},
    {"job", "{\"id\":\"a\",\"prompt\":\"a\\u0000b\"}", "invalid_value", ""},
    {"job", "{\"id\":\"a\",\"prompt\":\"\\udc00\"}", "malformed", ""},
    {"job", "{\"id\":\"a\",\"x\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}", "too_deep", ""},
    {"job", J({"prompt": "x"}), "missing_field", "id"},
    {"job", J({"id": null, "prompt": "x"}), "missing_field", "id"},
    {"job", J({"id": "a"}), "missing_field", "prompt"},
    {"job", J({"id": 7, "prompt": "x"}), "invalid_type", "id"},
    {"job", J({"id": "../x", "prompt": "x"}), "invalid_value", "id"},
    {"job", J({"id": "a/b", "prompt": "x"}), "invalid_value", "id"},
    {"job", J({"id": "", "prompt": "x"}), "invalid_value", "id"},
    {"job", J({"id": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "prompt": "x"}), "too_large", "id"},
    {"job", J({"v": 2, "id": "a", "prompt": "x"}), "unsupported_version", "v"},
    {"job", J({"v": 0, "id": "a", "prompt": "x"}), "out_of_range", "v"},
    {"job", J({"v": "1", "id": "a", "prompt": "x"}), "invalid_type", "v"},
    {"job", J({"type": "result", "id": "a", "prompt": "x"}), "invalid_value", "type"},
    {"job", J({"id": "a", "prompt": "x", "kind": "txt2video"}), "unknown_kind", "kind"},
    {"job", J({"id": "a", "prompt": "x", "kind": 1}), "invalid_type", "kind"},
    {"job", J({"id": "a", "prompt": ["x"]}), "invalid_type", "prompt"},
    {"job", J({"id": "a", "prompt": "x", "steps": "12"}), "invalid_type", "steps"},
    {"job", J({"id": "a", "prompt": "x", "steps": 12.0}), "invalid_type", "steps"},
    {"job", J({"id": "a", "prompt": "x", "steps": 0}), "out_of_range", "steps"},
    {"job", J({"id": "a", "prompt": "x", "steps": 101}), "out_of_range", "steps"},
    {"job", J({"id": "a", "prompt": "x", "renoise_steps": 12}), "out_of_range", "renoise_steps"},
    {"job", J({"id": "a", "prompt": "x", "width": 100}), "out_of_range", "width"},
    {"job", J({"id": "a", "prompt": "x", "width": 4096}), "out_of_range", "width"},
    {"job", J({"id": "a", "prompt": "x", "height": 0}), "out_of_range", "height"},
    {"job", J({"id": "a", "prompt": "x", "batch": 17}), "out_of_range", "batch"},
    {"job", J({"id": "a", "prompt": "x", "batch": 0}), "out_of_range", "batch"},
    {"job", J({"id": "a", "prompt": "x", "seed": -1}), "out_of_range", "seed"},
    {"job", J({"id": "a", "prompt": "x", "seed": 9007199254740992}), "out_of_range", "seed"},
    {"job", J({"id": "a", "prompt": "x", "sampling": "greedy"}), "invalid_value", "sampling"},
    {"job", J({"id": "a", "prompt": "x", "output_format": "gif"}), "invalid_value", "output_format"},
    {"job", J({"id": "a", "prompt": "x", "output_format": 1}), "invalid_type", "output_format"},
    {"job", J({"id": "a", "prompt": "x", "output_quality": 0}), "out_of_range", "output_quality"},
    {"job", J({"id": "a", "prompt": "x", "output_quality": 101}), "out_of_range", "output_quality"},
    {"job", J({"id": "a", "prompt": "x", "preview_every": -1}), "out_of_range", "preview_every"},
    {"job", J({"id": "a", "prompt": "x", "preview_every": 101}), "out_of_range", "preview_every"},
    {"job", J({"id": "a", "prompt": "x", "preview_every": "1"}), "invalid_type", "preview_every"},
    {"job", J({"id": "a", "prompt": "x", "cfg": [8]}), "invalid_type", "cfg"},
    {"job", J({"id": "a", "prompt": "x", "cfg": 8}), "invalid_type", "cfg"},
    {"job", J({"id": "a", "prompt": "x", "cfg": [8, "x"]}), "invalid_type", "cfg[1]"},
    {"job", J({"id": "a", "prompt": "x", "cfg": [31, 8]}), "out_of_range", "cfg[0]"},
    {"job", J({"id": "a", "prompt": "x", "temperature": [0, 0.3]}), "out_of_range", "temperature[0]"},
    {"job", J({"id": "a", "prompt": "x", "t_start": 1.5}), "out_of_range", "t_start"},
    {"job", J({"id": "a", "prompt": "x", "t_start": 0.5, "t_end": 0.5}), "conflict", "t_end"},
    {"job", J({"id": "a", "prompt": "x", "prior": [60]}), "invalid_type", "prior"},
    {"job", J({"id": "a", "prompt": "x", "prior": {"steps": "60"}}), "invalid_type", "prior.steps"},
    {"job", J({"id": "a", "prompt": "x", "prior": {"steps": 201}}), "out_of_range", "prior.steps"},
    {"job", J({"id": "a", "prompt": "x", "prior": {"guidance": -1}}), "out_of_range", "prior.guidance"},
    {"job", J({"id": "a", "prompt": "x", "prior": {"sampler": "euler"}}), "invalid_value", "prior.sampler"},
    {"job", J({"id": "a", "prompt": "x", "kind": "img2img"}), "missing_field", "image"},
    {"job", J({"id": "a", "prompt": "x", "image": {"url": "https://e.com/a.png"}}), "conflict", "image"},
    {"job", J({"id": "a", "prompt": "x", "kind": "inpaint", "image": {"url": "https://e.com/a.png"}}), "missing_field", "mask"},
    {"job", J({"id": "a", "prompt": "x", "kind": "img2img", "image": {}}), "missing_field", "image"},
    {"job", J({"id": "a", "prompt": "x", "kind": "img2img", "image": {"url": "https://e.com/a", "data": "AAAA"}}), "conflict", "image"},
    {"job", J({"id": "a", "prompt": "x", "kind": "img2img", "image": {"data": "abc"}}), "invalid_value", "image.data"},
    {"job", J({"id": "a", "prompt": "x", "kind": "img2img", "image": {"data": "ab!="}}), "invalid_value", "image.data"},
    {"job", J({"id": "a", "prompt": "x", "kind": "img2img", "image": {"url": "ftp://e.com/a"}}), "invalid_value", "image.url"},
    {"job", J({"id": "a", "prompt": "x", "kind": "img2img", "image": {"url": "https://e.com/a b"}}), "invalid_value", "image.url"},
    {"job", J({"id": "a", "prompt": "x", "kind": "outpaint", "image": {"url": "s3://b/k"}}), "missing_field", "outpaint"},
    {"job", J({"id": "a", "prompt": "x", "kind": "outpaint", "image": {"url": "s3://b/k"}, "outpaint": {"offset_x": 0}}), "missing_field", "outpaint.offset_y"},
    {"job", J({"id": "a", "prompt": "x", "kind": "outpaint", "image": {"url": "s3://b/k"}, "outpaint": {"offset_x": 3, "offset_y": 0}}), "out_of_range", "outpaint.offset_x"},
    {"job", J({"id": "a", "prompt": "x", "outpaint": {"offset_x": 0, "offset_y": 0}}), "conflict", "outpaint"},
    {"job", J({"id": "a", "prompt": "x", "kind": "interpolate", "interpolate": {"frames": 4}}), "missing_field", "interpolate.prompt_to"},
    {"job", J({"id": "a", "prompt": "x", "kind": "interpolate", "interpolate": {"prompt_to": "y", "frames": 1}}), "out_of_range", "interpolate.frames"},
    {"job", J({"id": "a", "prompt": "x", "kind": "interpolate", "interpolate": {"prompt_to": "y", "mode": "cubic"}}), "invalid_value", "interpolate.mode"},
    {"job", J({"id": "a", "prompt": "x", "kind": "interpolate", "batch": 2, "interpolate": {"prompt_to": "y"}}), "conflict", "batch"},
    {"job", J({"id": "a", "prompt": "x", "webhook": {"events": ["start"]}}), "missing_field", "webhook.url"},
    {"job", J({"id": "a", "prompt": "x", "webhook": {"url": "javascript:alert(1)"}}), "invalid_value", "webhook.url"},
    {"job", J({"id": "a", "prompt": "x", "webhook": {"url": "https://h/", "events": ["start", "bogus"]}}), "invalid_value", "webhook.events[1]"},
    {"job", J({"id": "a", "prompt": "x", "webhook": {"url": "https://h/", "events": []}}), "invalid_value", "webhook.events"},
    {"job", J({"id": "a", "prompt": "x", "webhook": {"url": "https://h/", "secret_id": "a b"}}), "invalid_value", "webhook.secret_id"},
    {"job", J({"id": "a", "prompt": "x", "output": {"bucket": "Bad_Bucket"}}), "invalid_value", "output.bucket"},
    {"job", J({"id": "a", "prompt": "x", "output": {"dir": "../etc"}}), "invalid_value", "output.dir"},
    {"job", J({"id": "a", "prompt": "x", "output": {"bucket": "b-1", "prefix": "a/../b"}}), "invalid_value", "output.prefix"},
    {"job", J({"id": "a", "prompt": "x", "output": {"bucket": "b-1", "dir": "/tmp"}}), "conflict", "output.dir"},
    {"job", J({"id": "a", "prompt": "x", "output": {}}), "missing_field", "output.bucket"},
    {"job", J({"id": "a", "prompt": "x", "priority": 10}), "out_of_range", "priority"},
    {"job", J({"id": "a", "prompt": "x", "deadline_ms": -5}), "out_of_range", "deadline_ms"},
    {"job", J({"id": "a", "prompt": "x", "idempotency_key": "has space"}), "invalid_value", "idempotency_key"},
    {"job", J({"id": "a", "prompt": "x", "attempt": 1001}), "out_of_range", "attempt"},
    {"progress", J({"job_id": "a", "step": 1, "total": 12, "ts_ms": 1}), "missing_field", "stage"},
    {"progress", J({"job_id": "a", "step": 13, "total": 12, "stage": "denoise", "ts_ms": 1}), "out_of_range", "step"},
    {"progress", J({"job_id": "a", "step": 1, "total": 12, "stage": "bake", "ts_ms": 1}), "invalid_value", "stage"},
    {"progress", J({"job_id": "a", "step": 1, "total": 0, "stage": "prior", "ts_ms": 1}), "out_of_range", "total"},
    {"result", J({"job_id": "a", "status": "failed"}), "missing_field", "error"},
    {"result", J({"job_id": "a", "status": "succeeded", "error": {"code": "internal"}}), "conflict", "error"},
    {"result", J({"job_id": "a", "status": "failed", "error": {"code": "bogus"}}), "invalid_value", "error.code"},
    {"result", J({"job_id": "a", "status": "failed", "error": {"code": "ok"}}), "invalid_value", "error.code"},
    {"result", J({"job_id": "a", "status": "failed", "error": {"message": "m"}}), "missing_field", "error.code"},
    {"result", J({"job_id": "a", "status": "done"}), "invalid_value", "status"},
    {"result", J({"job_id": "a", "status": "succeeded", "outputs": [{"url": "https://h/x"}]}), "missing_field", "outputs[0].key"},
    {"result", J({"job_id": "a", "status": "succeeded", "outputs": [{"key": "k", "url": "gopher://h"}]}), "invalid_value", "outputs[0].url"},
    {"result", J({"job_id": "a", "status": "succeeded", "outputs": {"key": "k"}}), "invalid_type", "outputs"},
    {"result", J({"job_id": "a", "status": "succeeded", "timings_ms": {"denoise": -1}}), "out_of_range", "timings_ms.denoise"},
    {"result", J({"job_id": "a", "status": "succeeded", "seed": "1"}), "invalid_type", "seed"},
};

typedef int (*json_fn)(const char *, size_t, pw_error *);
typedef int (*mp_fn)(const void *, size_t, pw_error *);

#define WRAP(name, type, fn, init, free_fn, arg_t)            \
  static int name(arg_t buf, size_t len, pw_error *err) {    \
    type m;                                                  \
    int rc = fn(buf, len, &m, err);                          \
    free_fn(&m);                                             \
    return rc;                                               \
  }
WRAP(job_json, pw_job, pw_job_from_json, pw_job_init, pw_job_free, const char *)
WRAP(progress_json, pw_progress, pw_progress_from_json, pw_progress_init, pw_progress_free, const char *)
WRAP(result_json, pw_result, pw_result_from_json, pw_result_init, pw_result_free, const char *)
WRAP(job_mp, pw_job, pw_job_decode, pw_job_init, pw_job_free, const void *)
WRAP(progress_mp, pw_progress, pw_progress_decode, pw_progress_init, pw_progress_free, const void *)
WRAP(result_mp, pw_result, pw_result_decode, pw_result_init, pw_result_free, const void *)

static void expect(const char *what, int rc, const pw_error *err, const char *code, const char *field) {
  CHECK_MSG(rc != 0 && !strcmp(pw_code_name(err->code), code) && !strcmp(err->field, field),
            "%s: got rc=%d %s '%s' (%s), want %s '%s'", what, rc, rc ? pw_code_name(err->code) : "-",
            rc ? err->field : "", rc ? err->message : "", code, field);
}

/* The JSON text as msgpack: parse to the object tree and pack it. Only for inputs that
 * are valid JSON and carry no base64 image (bin in msgpack). */
static int json_as_msgpack(const char *json, msgpack_sbuffer *out) {
  msgpack_unpacked u;
  pw_error err;
  msgpack_unpacked_init(&u);
  int rc = pw_unpack_json(json, strlen(json), &u, &err);
  if (rc == 0) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    rc = msgpack_pack_object(&pk, u.data);
  }
  msgpack_unpacked_destroy(&u);
  return rc;
}

static void json_cases(void) {
  size_t n = sizeof JSON_CASES / sizeof JSON_CASES[0];
  for (size_t i = 0; i < n; i++) {
    const json_case *c = &JSON_CASES[i];
    json_fn jf = !strcmp(c->type, "job") ? job_json : !strcmp(c->type, "progress") ? progress_json : result_json;
    mp_fn mf = !strcmp(c->type, "job") ? job_mp : !strcmp(c->type, "progress") ? progress_mp : result_mp;
    pw_error err = {0};
    expect(c->json, jf(c->json, strlen(c->json), &err), &err, c->code, c->field);
    if (!*c->field || strstr(c->field, "image")) continue; /* JSON-level or base64-specific */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(json_as_msgpack(c->json, &sb) == 0);
    expect(c->json, mf(sb.data, sb.size, &err), &err, c->code, c->field);
    msgpack_sbuffer_destroy(&sb);
  }
  printf("%zu JSON rejection cases\n", n);
}

static void msgpack_cases(void) {
  size_t n = sizeof MP_CASES / sizeof MP_CASES[0];
  for (size_t i = 0; i < n; i++) {
    pw_error err = {0};
    expect(MP_CASES[i].name, job_mp(MP_CASES[i].bytes, MP_CASES[i].len, &err), &err, MP_CASES[i].code,
           MP_CASES[i].field);
  }
  printf("%zu msgpack rejection cases\n", n);
}

/* Inputs too big to write out: a message over the size limit, an image over its limit, more
 * outputs than a result may list, a prompt one byte over. */
static void size_cases(void) {
  pw_error err = {0};
  size_t big = PW_MAX_JSON_BYTES + 1; /* the larger of the two limits */
  uint8_t *buf = calloc(big, 1);
  CHECK(buf != NULL);
  buf[0] = 0x80;
  expect("message over limit", job_mp(buf, PW_MAX_MESSAGE_BYTES + 1, &err), &err, "too_large", "");
  expect("JSON over limit", job_json((const char *)buf, big, &err), &err, "too_large", "");
  free(buf);

  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 4);
  msgpack_pack_str_with_body(&pk, "id", 2);
  msgpack_pack_str_with_body(&pk, "a", 1);
  msgpack_pack_str_with_body(&pk, "kind", 4);
  msgpack_pack_str_with_body(&pk, "variation", 9);
  msgpack_pack_str_with_body(&pk, "image", 5);
  msgpack_pack_map(&pk, 1);
  msgpack_pack_str_with_body(&pk, "data", 4);
  uint8_t *img = calloc(PW_MAX_IMAGE_BYTES + 1, 1);
  msgpack_pack_bin_with_body(&pk, img, PW_MAX_IMAGE_BYTES + 1);
  free(img);
  msgpack_pack_str_with_body(&pk, "prompt", 6);
  msgpack_pack_str_with_body(&pk, "x", 1);
  expect("image over limit", job_mp(sb.data, sb.size, &err), &err, "too_large", "image.data");
  msgpack_sbuffer_destroy(&sb);

  char prompt[PW_MAX_PROMPT_BYTES + 1];
  memset(prompt, 'p', sizeof prompt);
  char json[PW_MAX_PROMPT_BYTES + 64];
  snprintf(json, sizeof json, "{\"id\":\"a\",\"prompt\":\"%.*s\"}", (int)sizeof prompt, prompt);
  expect("prompt over limit", job_json(json, strlen(json), &err), &err, "too_large", "prompt");

  /* jansson would build all of these before the tree's own count sees them */
  size_t wide_len = 2 * 10000 + 64;
  char *wide = malloc(wide_len);
  strcpy(wide, "{\"id\":\"a\",\"prompt\":\"x\",\"x\":[0");
  for (int i = 1; i < 10000; i++) strcat(wide + strlen(wide) - 2, ",0");
  strcat(wide, "]}");
  expect("10000 values in JSON", job_json(wide, strlen(wide), &err), &err, "too_large", "");
  free(wide);

  char outputs[8192] = "{\"job_id\":\"a\",\"status\":\"succeeded\",\"outputs\":[";
  for (int i = 0; i <= PW_MAX_OUTPUTS; i++)
    strcat(outputs, i ? ",{\"key\":\"k\"}" : "{\"key\":\"k\"}");
  strcat(outputs, "]}");
  expect("too many outputs", result_json(outputs, strlen(outputs), &err), &err, "too_large", "outputs");
}

int main(void) {
  json_cases();
  msgpack_cases();
  size_cases();
  TEST_END();
}
