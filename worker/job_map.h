/* A wire-protocol job -> the pipeline's request, and the generation parameters embedded in
 * its images. The worker and `paella generate` both go through here, so the same job gives
 * the same request (and image) whichever ran it. */
#ifndef PAELLA_WORKER_JOB_MAP_H
#define PAELLA_WORKER_JOB_MAP_H

#include <stdint.h>

#include "model/image.h"
#include "model/pipeline.h"
#include "proto/proto.h"

/* Run `run` of the job (an interpolation frame, else 0) with `seed`. Leaves image, mask,
 * progress and the preview callback to the caller (the preview settings are the job's and
 * proto/limits.h's). Does not check the request against a pipeline. */
void pa_request_from_job(const pw_job *j, int run, uint64_t seed, pa_gen_request *r);

/* The job's output encoding (format and quality). */
pa_image_format pa_image_format_of_job(const pw_job *j);

/* The generation parameters of image `index` of a job, as the job's own JSON (input images
 * left out, "seed" the image's own seed, "paella_version" and the weights' "models" checksums
 * added) so that it can be submitted
 * again to regenerate the image. malloc'd, NULL when out of memory. */
/* `models`: pa_pipeline_checksums' JSON object (stored as "models"), or NULL. */
/* `job_seed`: the job's seed (drawn when it had none); image `index` gets job_seed + index, an
 * interpolation frame the job's seed and "frame": index. */
char *pa_job_params_json(const pw_job *j, uint64_t job_seed, int index, const char *models);

#endif
