/* Internal to model/image*.c: one encoder, decoder and parameter reader per file format.
 * Each takes and gives 8-bit RGB pixels, (height, width, 3). */
#ifndef PAELLA_MODEL_IMAGE_CODEC_H
#define PAELLA_MODEL_IMAGE_CODEC_H

#include "model/image.h"

/* Decoded 8-bit pixels, malloc'd; width and height already checked against the limits. */
typedef struct {
  int width, height;
  unsigned char *px; /* (height, width, 3) */
} pa_rgb8;

int pa_png_decode(const void *buf, size_t len, pa_rgb8 *out);
int pa_png_encode(const pa_rgb8 *in, const char *params, void **buf, size_t *len);
int pa_png_params(const void *buf, size_t len, char **params);

int pa_jpeg_decode(const void *buf, size_t len, pa_rgb8 *out);
int pa_jpeg_encode(const pa_rgb8 *in, int quality, const char *params, void **buf, size_t *len);
int pa_jpeg_params(const void *buf, size_t len, char **params);

int pa_webp_decode(const void *buf, size_t len, pa_rgb8 *out);
int pa_webp_encode(const pa_rgb8 *in, int quality, const char *params, void **buf, size_t *len);
int pa_webp_params(const void *buf, size_t len, char **params);

/* Refuses sizes the pipeline would refuse anyway, before anything is allocated. */
int pa_rgb8_check_size(long width, long height);

#endif
