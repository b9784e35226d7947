/* Submission-time checks shared by the scheduler and the worker (admission.h). */
#include "worker/admission.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "ops/error.h"

static int refuse(pw_error *err, pw_code code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(pw_error *err, pw_code code, const char *field, const char *fmt, ...) {
  err->code = code;
  snprintf(err->field, sizeof err->field, "%s", field);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return -1;
}

void pa_job_limits_default(pa_job_limits *l) { l->max_side = PW_DEFAULT_MAX_SIDE; }

const char *pa_job_input_formats(void) { return "png,jpeg,webp"; }

char *pa_job_limits_json(const pa_job_limits *l, const char *extra_members) {
  json_t *o = extra_members ? json_loads(extra_members, 0, NULL) : json_object();
  if (!json_is_object(o)) {
    json_decref(o);
    o = json_object();
  }
  json_object_set_new(o, "protocol", json_integer(PW_VERSION));
  json_object_set_new(o, "version", json_string(pw_build_version()));
  json_object_set_new(o, "max_side", json_integer(l->max_side));
  json_object_set_new(o, "input_formats", json_string(pa_job_input_formats()));
  char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(o);
  return text;
}

int pa_job_limits_differ(const pa_job_limits *l, const char *record, char *why, size_t why_cap) {
  json_t *o = json_loads(record, 0, NULL);
  int rc = -1;
  if (!json_is_object(o)) goto done;
  json_int_t side = json_integer_value(json_object_get(o, "max_side"));
  const char *formats = json_string_value(json_object_get(o, "input_formats"));
  json_int_t protocol = json_integer_value(json_object_get(o, "protocol"));
  rc = 1;
  if (side != l->max_side) snprintf(why, why_cap, "max_side %lld, the scheduler's is %d", (long long)side, l->max_side);
  else if (!formats || strcmp(formats, pa_job_input_formats()))
    snprintf(why, why_cap, "input formats %s, the scheduler's are %s", formats ? formats : "(none)", pa_job_input_formats());
  else if (protocol != PW_VERSION) snprintf(why, why_cap, "protocol %lld, the scheduler's is %d", (long long)protocol, PW_VERSION);
  else rc = 0;
done:
  json_decref(o);
  return rc;
}

int pa_job_admit_images(const pw_job *j, const pa_image *image, const pa_image *mask, pw_error *err) {
  if (j->kind == PW_KIND_INPAINT && image && mask && (mask->width != image->width || mask->height != image->height))
    return refuse(err, PW_E_CONFLICT, "mask", "the mask is %dx%d but the image is %dx%d: they must be the same size",
                  mask->width, mask->height, image->width, image->height);
  if (j->kind == PW_KIND_OUTPAINT && image) {
    int f = PW_OFFSET_MULTIPLE;
    if (image->width % f || image->height % f)
      return refuse(err, PW_E_OUT_OF_RANGE, "image", "an outpainting image must be a multiple of %d pixels (it is %dx%d)",
                    f, image->width, image->height);
    if (j->outpaint.offset_x < 0 || j->outpaint.offset_y < 0 || j->outpaint.offset_x + image->width > j->width ||
        j->outpaint.offset_y + image->height > j->height)
      return refuse(err, PW_E_CONFLICT, "outpaint", "a %dx%d image at +%lld+%lld does not fit the %lldx%lld canvas",
                    image->width, image->height, (long long)j->outpaint.offset_x, (long long)j->outpaint.offset_y,
                    (long long)j->width, (long long)j->height);
  }
  return 0;
}

/* An inline image decoded, or NULL (by URL, or absent); -1 when its bytes are not an image. */
static int decode_inline(const pw_image *src, const char *field, pa_image **out, pw_error *err) {
  *out = NULL;
  if (!src->present || !src->data) return 0;
  if (pa_image_decode(src->data, src->len, out))
    return refuse(err, PW_E_INVALID_IMAGE, field, "not a readable image (%s): %s", pa_job_input_formats(), pa_errmsg());
  return 0;
}

/* One decode at a time: a small, highly compressed input can decode to hundreds of MB of
 * pixels (PA_IMAGE_MAX_SIDE), and the scheduler answers many submissions at once. */
static pthread_mutex_t decode_lock = PTHREAD_MUTEX_INITIALIZER;

int pa_job_admit(const pw_job *j, const pa_job_limits *l, pw_error *err) {
  if (j->width > l->max_side)
    return refuse(err, PW_E_OUT_OF_RANGE, "width", "%lld is above the workers' limit of %d pixels",
                  (long long)j->width, l->max_side);
  if (j->height > l->max_side)
    return refuse(err, PW_E_OUT_OF_RANGE, "height", "%lld is above the workers' limit of %d pixels",
                  (long long)j->height, l->max_side);
  pa_image *image = NULL, *mask = NULL;
  int rc = -1;
  pthread_mutex_lock(&decode_lock);
  if (decode_inline(&j->image, "image", &image, err) || decode_inline(&j->mask, "mask", &mask, err)) goto done;
  rc = pa_job_admit_images(j, image, mask, err);
done:
  pa_image_free(image);
  pa_image_free(mask);
  pthread_mutex_unlock(&decode_lock);
  return rc;
}
