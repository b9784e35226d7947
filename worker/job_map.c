#include "worker/job_map.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const pa_gen_mode kind_mode[PW_KIND_COUNT] = {
    [PW_KIND_TXT2IMG] = PA_GEN_TXT2IMG, [PW_KIND_IMG2IMG] = PA_GEN_IMG2IMG, [PW_KIND_INPAINT] = PA_GEN_INPAINT,
    [PW_KIND_OUTPAINT] = PA_GEN_OUTPAINT, [PW_KIND_VARIATION] = PA_GEN_VARIATION,
    [PW_KIND_INTERPOLATE] = PA_GEN_TXT2IMG};

void pa_request_from_job(const pw_job *j, int run, uint64_t seed, pa_gen_request *r) {
  *r = pa_gen_request_default();
  r->mode = kind_mode[j->kind];
  r->prompt = j->prompt ? j->prompt : "";
  r->negative_prompt = j->negative_prompt;
  r->width = (int)j->width;
  r->height = (int)j->height;
  r->batch = (int)j->batch;
  r->seed = seed;
  r->sampler.steps = (int)j->steps;
  r->sampler.renoise_steps = (int)j->renoise_steps;
  r->sampler.cond_steps = (int)j->steps;
  r->sampler.t_start = (float)j->t_start;
  r->sampler.t_end = (float)j->t_end;
  r->sampler.temp[0] = (float)j->temperature[0];
  r->sampler.temp[1] = (float)j->temperature[1];
  r->sampler.cfg[0] = (float)j->cfg[0];
  r->sampler.cfg[1] = (float)j->cfg[1];
  r->sampler.mode = j->sampling == PW_SAMPLING_ARGMAX ? PA_SAMPLE_ARGMAX : PA_SAMPLE_MULTINOMIAL;
  r->prior_steps = (int)j->prior.steps;
  r->prior_cfg = (float)j->prior.guidance;
  r->prior_ddim = j->prior.sampler == PW_PRIOR_DDIM;
  r->strength = (float)j->t_start; /* img2img: the noise level it starts from */
  if (j->has_outpaint) {
    r->offset_x = (int)j->outpaint.offset_x;
    r->offset_y = (int)j->outpaint.offset_y;
  }
  if (j->kind == PW_KIND_INTERPOLATE) {
    r->prompt2 = j->interpolate.prompt_to;
    r->interpolate = true;
    r->slerp = j->interpolate.mode == PW_INTERP_SLERP;
    r->interp_t = (float)run / (float)(j->interpolate.frames - 1);
    r->batch = 1;
  }
  r->preview_every = (int)j->preview_every;
  r->preview_interval = PW_PREVIEW_MIN_INTERVAL_MS / 1000.0;
  r->preview_max_side = PW_PREVIEW_MAX_SIDE;
}

pa_image_format pa_image_format_of_job(const pw_job *j) {
  return j->output_format == PW_FORMAT_JPEG ? PA_IMAGE_JPEG
       : j->output_format == PW_FORMAT_WEBP ? PA_IMAGE_WEBP : PA_IMAGE_PNG;
}

/* The job as JSON with its defaults filled in; input image bytes stay out of it. */
static json_t *job_json(const pw_job *job) {
  pw_job j = *job; /* shallow: the images are swapped for URL placeholders, nothing is freed */
  pw_error err;
  char *text = NULL;
  if (j.image.present) j.image = (pw_image){.present = 1, .url = "https://input.invalid/image"};
  if (j.mask.present) j.mask = (pw_image){.present = 1, .url = "https://input.invalid/mask"};
  if (pw_job_to_json(&j, 0, &text, &err)) return NULL;
  json_t *o = json_loads(text, 0, NULL);
  free(text);
  return o;
}

char *pa_job_params_json(const pw_job *j, uint64_t job_seed, int index, const char *models) {
  bool interp = j->kind == PW_KIND_INTERPOLATE;
  uint64_t image_seed = job_seed + (interp ? 0 : (uint64_t)index); /* image b: seed + b */
  json_t *o = job_json(j);
  if (!o) return NULL;
  if (interp) json_object_set_new(o, "frame", json_integer(index));
  json_object_del(o, "image"); /* the inputs are the caller's files, not parameters */
  json_object_del(o, "mask");
  json_object_del(o, "id"); /* a scheduler assigns a new one */
  json_object_del(o, "attempt");
  json_object_del(o, "idempotency_key");
  json_object_del(o, "webhook");
  json_object_del(o, "output"); /* where it went (a server dir, a bucket) is no parameter and no client's business */
  json_object_del(o, "preview_every"); /* watching changes nothing in the image */
  json_object_set_new(o, "seed", json_integer((json_int_t)image_seed));
  json_object_set_new(o, "batch", json_integer(1));
  json_object_set_new(o, "paella_version", json_string(pw_build_version()));
  json_t *m = models ? json_loads(models, 0, NULL) : NULL;
  if (m) json_object_set_new(o, "models", m);
  char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9)); /* 9 digits: any float exactly */
  json_decref(o);
  return s;
}
