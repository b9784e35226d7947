/* Construction and destruction of messages: defaults live here (values from limits.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/internal.h"

static void image_free(pw_image *im) {
  free(im->data);
  free(im->url);
  memset(im, 0, sizeof *im);
}

void pw_job_init(pw_job *job) {
  memset(job, 0, sizeof *job);
  job->version = PW_VERSION;
  job->kind = PW_KIND_TXT2IMG;
  job->width = job->height = PW_DEFAULT_SIZE;
  job->batch = PW_DEFAULT_BATCH;
  job->steps = PW_DEFAULT_STEPS;
  job->renoise_steps = -1;
  job->cfg[0] = job->cfg[1] = PW_DEFAULT_CFG;
  job->temperature[0] = PW_DEFAULT_TEMP_START;
  job->temperature[1] = PW_DEFAULT_TEMP_END;
  job->t_start = NAN;
  job->t_end = PW_DEFAULT_T_END;
  job->sampling = PW_SAMPLING_MULTINOMIAL;
  job->prior.steps = PW_DEFAULT_PRIOR_STEPS;
  job->prior.guidance = PW_DEFAULT_PRIOR_GUIDANCE;
  job->prior.sampler = PW_PRIOR_DDPM;
  job->interpolate.frames = PW_DEFAULT_FRAMES;
  job->interpolate.mode = PW_INTERP_SLERP;
  job->webhook.events = PW_EVENTS_ALL;
  job->priority = PW_DEFAULT_PRIORITY;
  job->output_format = PW_FORMAT_PNG;
  job->output_quality = PW_DEFAULT_OUTPUT_QUALITY;
  job->preview_every = PW_DEFAULT_PREVIEW_EVERY;
}

void pw_job_apply_defaults(pw_job *job) {
  if (job->renoise_steps < 0) job->renoise_steps = job->steps > 0 ? job->steps - 1 : 0;
  if (isnan(job->t_start))
    job->t_start = job->kind == PW_KIND_IMG2IMG ? PW_DEFAULT_T_START_IMG2IMG : PW_DEFAULT_T_START;
}

void pw_job_free(pw_job *job) {
  free(job->id);
  free(job->prompt);
  free(job->negative_prompt);
  image_free(&job->image);
  image_free(&job->mask);
  free(job->interpolate.prompt_to);
  free(job->output.bucket);
  free(job->output.prefix);
  free(job->output.dir);
  free(job->webhook.url);
  free(job->webhook.secret_id);
  free(job->idempotency_key);
  free(job->extra.data);
  pw_job_init(job);
}

void pw_progress_init(pw_progress *p) {
  memset(p, 0, sizeof *p);
  p->version = PW_VERSION;
}

void pw_progress_free(pw_progress *p) {
  free(p->job_id);
  free(p->preview);
  free(p->extra.data);
  pw_progress_init(p);
}

void pw_result_init(pw_result *r) {
  memset(r, 0, sizeof *r);
  r->version = PW_VERSION;
  for (int i = 0; i < PW_STAGE_COUNT; i++) r->timings_ms[i] = NAN;
  r->total_ms = NAN;
}

void pw_result_free(pw_result *r) {
  free(r->job_id);
  for (size_t i = 0; i < r->n_outputs; i++) {
    free(r->outputs[i].key);
    free(r->outputs[i].url);
    free(r->outputs[i].params);
  }
  free(r->outputs);
  free(r->error_message);
  free(r->extra.data);
  pw_result_init(r);
}
