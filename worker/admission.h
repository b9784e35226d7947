/* What a worker can run, from one definition: the scheduler checks a job with it at submission
 * (422 naming the field) and the worker again once it has its inputs, so a job the scheduler
 * accepted is not failed or silently changed later for its limits or its images. */
#ifndef PAELLA_WORKER_ADMISSION_H
#define PAELLA_WORKER_ADMISSION_H

#include "model/image.h"
#include "proto/proto.h"

/* The limits one worker runs with; the scheduler is configured with the fleet's. */
typedef struct {
  int max_side; /* --max-side: largest width or height, pixels (PW_DEFAULT_MAX_SIDE) */
} pa_job_limits;

void pa_job_limits_default(pa_job_limits *l);

/* The job against the limits, and its inline images decoded (PNG, JPEG or WebP, the formats
 * pa_image_decode reads) and checked as pa_job_admit_images does. Images given by URL are
 * checked by the worker once fetched. 0, or -1 with err (field, code, message). */
int pa_job_admit(const pw_job *j, const pa_job_limits *l, pw_error *err);

/* The decoded input image and mask (either may be NULL): an inpainting mask must have its
 * image's size (it is resized together with the image, never on its own); an outpainting
 * image must lie on the token grid and inside the canvas at its offset. */
int pa_job_admit_images(const pw_job *j, const pa_image *image, const pa_image *mask, pw_error *err);

/* The input formats every worker decodes, "png,jpeg,webp" (published with its limits). */
const char *pa_job_input_formats(void);

/* Workers advertise what they run (limits, formats, protocol and build version) for the
 * scheduler's /readyz: in Redis, pa_key_workers (consumer -> when its advertisement lapses,
 * Unix ms) and pa_key_worker_caps (consumer -> a JSON object with the fields below), both in
 * worker/redis_keys.h. An advertisement lapses PA_ADVERTISE_TTL_BEATS beats after it was
 * written, so a dead worker drops out by itself. */
#define PA_ADVERTISE_EVERY_MS 5000
#define PA_ADVERTISE_TTL_BEATS 3
/* {"protocol":PW_VERSION,"version":"...","max_side":N,"input_formats":"png,jpeg,webp",...}
 * (malloc'd; extra members as a JSON object text or NULL), the one writer of that record. */
char *pa_job_limits_json(const pa_job_limits *l, const char *extra_members);
/* 1 when an advertised record (text) has other limits than `l`, 0 when the same, -1 when
 * unreadable; `why` gets the first difference. */
int pa_job_limits_differ(const pa_job_limits *l, const char *record, char *why, size_t why_cap);

#endif
