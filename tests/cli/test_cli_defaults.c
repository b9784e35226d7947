/* `paella generate` uses the API's defaults: every sampler, prior, interpolation and
 * image-to-image default that the image's embedded parameters record equals what proto
 * gives a job that leaves the field out (pw_job_init + pw_job_apply_defaults). The CLI and
 * the API once differed here (prior guidance 3 vs 4, 5 vs 8 frames, lerp vs slerp, strength
 * 0.5 vs 0.6). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/proto.h"
#include "tests/test.h"

static char dir[] = "/tmp/paella-defaults-XXXXXX";

/* Runs generate ARGS -o dir/NAME, then `paella info` on FILE; the parameters as JSON. */
static json_t *generate_params(const char *args, const char *name, const char *file) {
  char cmd[2048], out[600];
  snprintf(cmd, sizeof cmd, "%s/paella generate %s -q -o %s/%s 2>/dev/null && %s/paella info %s/%s >%s/params",
           PAELLA_BINARY_DIR, args, dir, name, PAELLA_BINARY_DIR, dir, file, dir);
  int st = system(cmd);
  CHECK_MSG(st == 0, "%s", cmd);
  snprintf(out, sizeof out, "%s/params", dir);
  return json_load_file(out, 0, NULL);
}

static double num(const json_t *j, const char *key, int index) {
  const json_t *v = json_object_get(j, key);
  if (json_is_array(v)) v = json_array_get(v, (size_t)index);
  return json_number_value(v);
}

/* Every defaulted field of `kind` in the parameters equals proto's default. */
static void compare(const json_t *p, pw_kind kind) {
  pw_job d;
  pw_job_init(&d);
  d.kind = kind;
  pw_job_apply_defaults(&d);
  CHECK(p != NULL);
  CHECK_MSG(num(p, "steps", 0) == d.steps, "steps %g", num(p, "steps", 0));
  CHECK(num(p, "renoise_steps", 0) == d.renoise_steps);
  CHECK(num(p, "cfg", 0) == d.cfg[0] && num(p, "cfg", 1) == d.cfg[1]);
  CHECK_NEAR(num(p, "temperature", 0), d.temperature[0], 1e-7);
  CHECK_NEAR(num(p, "temperature", 1), d.temperature[1], 1e-7);
  CHECK_MSG(num(p, "t_start", 0) == d.t_start, "%s t_start %g vs %g", pw_kind_name(kind), num(p, "t_start", 0), d.t_start);
  CHECK(num(p, "t_end", 0) == d.t_end);
  const json_t *prior = json_object_get(p, "prior");
  CHECK_MSG(num(prior, "guidance", 0) == d.prior.guidance, "prior guidance %g", num(prior, "guidance", 0));
  CHECK(num(prior, "steps", 0) == d.prior.steps);
  CHECK(!strcmp(json_string_value(json_object_get(prior, "sampler")), pw_prior_sampler_name(d.prior.sampler)));
  CHECK(!strcmp(json_string_value(json_object_get(p, "sampling")), pw_sampling_name(d.sampling)));
  if (kind == PW_KIND_INTERPOLATE) {
    const json_t *in = json_object_get(p, "interpolate");
    CHECK_MSG(num(in, "frames", 0) == d.interpolate.frames, "frames %g", num(in, "frames", 0));
    CHECK(!strcmp(json_string_value(json_object_get(in, "mode")), pw_interp_mode_name(d.interpolate.mode)));
  }
  pw_job_free(&d);
}

int main(void) {
  CHECK(mkdtemp(dir) != NULL);
  json_t *p = generate_params("'a fox' -W 32 -H 32", "t.png", "t.png");
  compare(p, PW_KIND_TXT2IMG);
  json_decref(p);
  p = generate_params("'a fox' -W 32 -H 32 --interpolate 'a dog'", "f.png", "f-07.png");
  compare(p, PW_KIND_INTERPOLATE);
  json_decref(p);
  char args[600];
  snprintf(args, sizeof args, "'a fox' --image %s/t.png", dir);
  p = generate_params(args, "i.png", "i.png");
  compare(p, PW_KIND_IMG2IMG);
  json_decref(p);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
  TEST_END();
}
