/* Round trips of every message: the example messages (tests/fuzz/corpus/json, also the
 * fuzz seeds and the examples of docs/protocol.md) through JSON -> struct -> msgpack ->
 * struct -> msgpack and back to JSON; defaults; unknown-field preservation; messages built
 * in code; the stable error-code names. */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "tests/test.h"

#define CORPUS PAELLA_SOURCE_DIR "/tests/fuzz/corpus/json"

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(1 << 16);
  *len = buf ? fread(buf, 1, (1 << 16) - 1, f) : 0;
  if (buf) buf[*len] = '\0';
  fclose(f);
  return buf;
}

#define DEFINE_CHECK(name, type, from_json, encode, decode, to_json, free_fn)             \
  static void name(const char *file, const char *json, size_t len) {                     \
    type a, b, c;                                                                        \
    pw_error err = {0};                                                                  \
    uint8_t *m1 = NULL, *m2 = NULL;                                                      \
    size_t n1 = 0, n2 = 0;                                                               \
    char *j1 = NULL, *j2 = NULL;                                                         \
    CHECK_MSG(from_json(json, len, &a, &err) == 0, "%s: %s %s", file, err.field, err.message); \
    CHECK(encode(&a, &m1, &n1, &err) == 0);                                              \
    CHECK(decode(m1, n1, &b, &err) == 0);                                                \
    CHECK(encode(&b, &m2, &n2, &err) == 0);                                              \
    CHECK_MSG(n1 == n2 && m1 && m2 && !memcmp(m1, m2, n1), "%s: msgpack differs", file); \
    CHECK(to_json(&b, 0, &j1, &err) == 0);                                               \
    CHECK(from_json(j1, strlen(j1), &c, &err) == 0);                                     \
    CHECK(to_json(&c, 0, &j2, &err) == 0);                                               \
    CHECK_MSG(j1 && j2 && !strcmp(j1, j2), "%s: JSON differs", file);                   \
    free(m1); free(m2); free(j1); free(j2);                                              \
    free_fn(&a); free_fn(&b); free_fn(&c);                                               \
  }

DEFINE_CHECK(check_job, pw_job, pw_job_from_json, pw_job_encode, pw_job_decode, pw_job_to_json, pw_job_free)
DEFINE_CHECK(check_progress, pw_progress, pw_progress_from_json, pw_progress_encode, pw_progress_decode,
             pw_progress_to_json, pw_progress_free)
DEFINE_CHECK(check_result, pw_result, pw_result_from_json, pw_result_encode, pw_result_decode,
             pw_result_to_json, pw_result_free)

static void corpus(void) {
  DIR *d = opendir(CORPUS);
  CHECK(d != NULL);
  int files = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    if (!strstr(e->d_name, ".json")) continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", CORPUS, e->d_name);
    size_t len;
    char *json = slurp(path, &len);
    CHECK(json != NULL);
    if (!json) continue;
    if (!strncmp(e->d_name, "job", 3)) check_job(e->d_name, json, len);
    else if (!strncmp(e->d_name, "progress", 8)) check_progress(e->d_name, json, len);
    else check_result(e->d_name, json, len);
    free(json);
    files++;
  }
  if (d) closedir(d);
  CHECK_MSG(files >= 9, "only %d example files", files);
}

static void job_defaults(void) {
  const char *json = "{\"id\":\"a\",\"prompt\":\"x\"}";
  pw_job j;
  pw_error err;
  CHECK(pw_job_from_json(json, strlen(json), &j, &err) == 0);
  CHECK(j.version == 1 && j.kind == PW_KIND_TXT2IMG && !j.has_seed);
  CHECK(j.width == 256 && j.height == 256 && j.batch == 1);
  CHECK(j.steps == 12 && j.renoise_steps == 11);
  CHECK(j.cfg[0] == 8.0 && j.cfg[1] == 8.0);
  CHECK(j.temperature[0] == 0.7 && j.temperature[1] == 0.3);
  CHECK(j.t_start == 1.0 && j.t_end == 0.0 && j.sampling == PW_SAMPLING_MULTINOMIAL);
  CHECK(j.prior.steps == 60 && j.prior.guidance == 4.0 && j.prior.sampler == PW_PRIOR_DDPM);
  CHECK(j.priority == 5 && j.attempt == 0 && j.deadline_ms == 0 && !j.has_webhook && !j.has_output);
  CHECK(j.output_format == PW_FORMAT_PNG && j.output_quality == 90);
  pw_job_free(&j);

  /* output_format / output_quality survive msgpack and JSON; defaults are not written */
  json = "{\"id\":\"c\",\"prompt\":\"x\",\"output_format\":\"webp\",\"output_quality\":75,\"preview_every\":3}";
  CHECK(pw_job_from_json(json, strlen(json), &j, &err) == 0);
  CHECK(j.output_format == PW_FORMAT_WEBP && j.output_quality == 75 && j.preview_every == 3);
  uint8_t *mp = NULL;
  size_t mp_len = 0;
  pw_job k;
  pw_job_init(&k);
  CHECK(pw_job_encode(&j, &mp, &mp_len, &err) == 0 && pw_job_decode(mp, mp_len, &k, &err) == 0);
  CHECK(k.output_format == PW_FORMAT_WEBP && k.output_quality == 75 && k.preview_every == 3);
  free(mp);
  pw_job_free(&k);
  pw_job_free(&j);
  char *text = NULL;
  json = "{\"id\":\"d\",\"prompt\":\"x\"}";
  CHECK(pw_job_from_json(json, strlen(json), &j, &err) == 0 && pw_job_to_json(&j, 0, &text, &err) == 0);
  CHECK(text && !strstr(text, "output_format") && !strstr(text, "output_quality") && !strstr(text, "preview_every"));
  free(text);
  pw_job_free(&j);

  json = "{\"id\":\"b\",\"kind\":\"img2img\",\"prompt\":\"x\",\"steps\":20,\"image\":{\"data\":\"AAEC\"}}";
  CHECK(pw_job_from_json(json, strlen(json), &j, &err) == 0);
  CHECK(j.t_start == PW_DEFAULT_T_START_IMG2IMG && j.renoise_steps == 19);
  CHECK(j.image.present && j.image.len == 3 && j.image.data[0] == 0 && j.image.data[2] == 2);
  pw_job_free(&j);
}

/* Unknown top-level fields pass through msgpack and JSON unchanged. */
static void unknown_fields(void) {
  const char *json = "{\"id\":\"a\",\"prompt\":\"x\",\"x-new\":{\"k\":[1,\"two\",null,true]},\"zz\":-3}";
  pw_job j, k;
  pw_error err;
  uint8_t *mp = NULL;
  size_t n = 0;
  char *out = NULL;
  CHECK(pw_job_from_json(json, strlen(json), &j, &err) == 0);
  CHECK(j.extra.count == 2);
  CHECK(pw_job_encode(&j, &mp, &n, &err) == 0);
  CHECK(pw_job_decode(mp, n, &k, &err) == 0);
  CHECK(k.extra.count == 2 && k.extra.len == j.extra.len && !memcmp(k.extra.data, j.extra.data, j.extra.len));
  CHECK(pw_job_to_json(&k, 0, &out, &err) == 0);
  CHECK_MSG(out && strstr(out, "\"x-new\":{\"k\":[1,\"two\",null,true]},\"zz\":-3}"), "%s", out);
  free(mp);
  free(out);
  pw_job_free(&j);
  pw_job_free(&k);
}

/* What a worker does: build messages in code, encode, and the scheduler decodes them. */
static void built_in_code(void) {
  pw_error err;
  uint8_t *mp = NULL;
  size_t n = 0;
  pw_progress p, p2;
  pw_progress_init(&p);
  p.job_id = strdup("job-7");
  p.step = 3;
  p.total = 12;
  p.stage = PW_STAGE_DENOISE;
  p.ts_ms = 1767225600000;
  CHECK(pw_progress_encode(&p, &mp, &n, &err) == 0);
  CHECK(pw_progress_decode(mp, n, &p2, &err) == 0);
  CHECK(!strcmp(p2.job_id, "job-7") && p2.step == 3 && p2.total == 12 && p2.stage == PW_STAGE_DENOISE &&
        p2.ts_ms == 1767225600000);
  free(mp);
  pw_progress_free(&p);
  pw_progress_free(&p2);

  pw_result r, r2;
  pw_result_init(&r);
  r.job_id = strdup("job-7");
  r.status = PW_STATUS_FAILED;
  r.has_error = 1;
  r.error_code = PW_E_GPU;
  r.error_message = strdup("CUDA out of memory");
  r.timings_ms[PW_STAGE_PRIOR] = 12.25;
  r.has_seed = 1;
  r.seed = 99;
  CHECK(pw_result_encode(&r, &mp, &n, &err) == 0);
  CHECK(pw_result_decode(mp, n, &r2, &err) == 0);
  CHECK(r2.status == PW_STATUS_FAILED && r2.has_error && r2.error_code == PW_E_GPU);
  CHECK(!strcmp(r2.error_message, "CUDA out of memory") && r2.seed == 99 && r2.n_outputs == 0);
  CHECK(r2.timings_ms[PW_STAGE_PRIOR] == 12.25 && isnan(r2.timings_ms[PW_STAGE_DENOISE]));
  free(mp);
  pw_result_free(&r2);

  /* an invalid message is refused on the way out too */
  r.status = PW_STATUS_SUCCEEDED;
  CHECK(pw_result_encode(&r, &mp, &n, &err) != 0 && err.code == PW_E_CONFLICT && !strcmp(err.field, "error"));
  pw_result_free(&r);
}

/* What the scheduler does with a job built in code: defaults left unset are filled. */
static void job_built_in_code(void) {
  pw_job j, k;
  pw_error err;
  uint8_t *mp = NULL;
  size_t n = 0;
  pw_job_init(&j);
  j.id = strdup("j9");
  j.kind = PW_KIND_IMG2IMG;
  j.prompt = strdup("night");
  j.image.present = 1;
  j.image.url = strdup("https://e.com/a.png");
  j.steps = 8;
  CHECK(pw_job_validate(&j, &err) == 0);
  CHECK(pw_job_encode(&j, &mp, &n, &err) == 0);
  CHECK(pw_job_decode(mp, n, &k, &err) == 0);
  CHECK(k.renoise_steps == 7 && k.t_start == PW_DEFAULT_T_START_IMG2IMG && !strcmp(k.image.url, "https://e.com/a.png"));
  free(mp);
  pw_job_free(&j);
  pw_job_free(&k);
}

static void code_names(void) {
  CHECK(!strcmp(pw_code_name(PW_E_INVALID_TYPE), "invalid_type"));
  CHECK(!strcmp(pw_code_name(PW_E_MISSING_FIELD), "missing_field"));
  CHECK(!strcmp(pw_code_name(PW_E_TOO_DEEP), "too_deep"));
  CHECK(!strcmp(pw_code_name((pw_code)999), "unknown"));
  pw_code c;
  CHECK(pw_code_from_name("deadline_exceeded", 17, &c) == 0 && c == PW_E_DEADLINE);
  CHECK(pw_code_from_name("nope", 4, &c) != 0);
  pw_error e = {PW_E_OUT_OF_RANGE, "steps", "say \"hi\""};
  char *line = pw_error_json(&e);
  CHECK_MSG(line && !strcmp(line, "{\"code\":\"out_of_range\",\"field\":\"steps\",\"message\":\"say \\\"hi\\\"\"}"), "%s", line);
  free(line);
}

int main(void) {
  corpus();
  job_defaults();
  unknown_fields();
  built_in_code();
  job_built_in_code();
  code_names();
  TEST_END();
}
