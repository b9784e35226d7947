/* RGB images for the pipeline: float [0, 1], row-major (H, W, 3). PNG in and out through
 * libspng; resizing and cropping as `paella generate` documents them. */
#ifndef PAELLA_MODEL_IMAGE_H
#define PAELLA_MODEL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int width, height;
  float *rgb; /* (height, width, 3) */
} pa_image;

#define PA_IMAGE_MAX_SIDE 8192

int pa_image_new(int width, int height, pa_image **out);
void pa_image_free(pa_image *img);

/* Any PNG (gray, palette, 16-bit, alpha: alpha is dropped) -> RGB floats. */
int pa_image_read_png(const char *path, pa_image **out);
int pa_image_decode_png(const void *buf, size_t len, pa_image **out);
/* 8-bit RGB PNG; values are clamped to [0, 1] and rounded. Writes to path atomically
 * (a temporary file renamed into place), so a failure leaves no partial file. */
int pa_image_write_png(const char *path, const pa_image *img);
int pa_image_encode_png(const pa_image *img, void **buf, size_t *len);

/* Bilinear resize (pixel centres aligned, edge clamped). */
int pa_image_resize(const pa_image *img, int width, int height, pa_image **out);
/* Scale to cover width x height (keeping the aspect ratio), then crop the centre. */
int pa_image_fit(const pa_image *img, int width, int height, pa_image **out);
int pa_image_crop(const pa_image *img, int x, int y, int width, int height, pa_image **out);

#endif
