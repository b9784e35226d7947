/* RGB images for the pipeline: float [0, 1], row-major (H, W, 3). PNG (libspng), JPEG
 * (libjpeg-turbo) and WebP (libwebp) in and out, with the generation parameters embedded as
 * text; resizing and cropping as `paella generate` documents them. */
#ifndef PAELLA_MODEL_IMAGE_H
#define PAELLA_MODEL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int width, height;
  float *rgb; /* (height, width, 3) */
} pa_image;

#define PA_IMAGE_MAX_SIDE 8192

typedef enum { PA_IMAGE_PNG, PA_IMAGE_JPEG, PA_IMAGE_WEBP, PA_IMAGE_FORMAT_COUNT } pa_image_format;

/* How an image is encoded. `params` is text (a JSON object of the generation parameters)
 * stored in the file so that the image can be regenerated: a PNG iTXt chunk with the keyword
 * PA_IMAGE_PARAMS_KEY, a JPEG COM marker, a WebP XMP chunk (element paella:parameters). */
typedef struct {
  pa_image_format format;
  int quality;        /* 1..100 for JPEG and WebP; PNG is lossless and ignores it */
  const char *params; /* NULL: nothing embedded */
} pa_image_encoding;

#define PA_IMAGE_PARAMS_KEY "parameters"

/* "png", "jpeg" (or "jpg"), "webp" -> format; 0 or -1 when unknown. */
int pa_image_format_from_name(const char *name, pa_image_format *out);
/* By the file name's extension (case-insensitive): 1 found, 0 no extension, -1 unknown. */
int pa_image_format_from_path(const char *path, pa_image_format *out);
const char *pa_image_format_name(pa_image_format f);      /* "png" */
const char *pa_image_format_extension(pa_image_format f); /* ".png", ".jpg", ".webp" */
const char *pa_image_format_mime(pa_image_format f);      /* "image/png" */
/* From the leading bytes; -1 when none of the three. */
int pa_image_format_detect(const void *buf, size_t len, pa_image_format *out);

int pa_image_new(int width, int height, pa_image **out);
void pa_image_free(pa_image *img);

/* PNG (gray, palette, 16-bit; alpha dropped), JPEG (gray or colour) or WebP (still) ->
 * RGB floats; the format is detected from the bytes. */
int pa_image_decode(const void *buf, size_t len, pa_image **out);
int pa_image_read(const char *path, pa_image **out);
/* Values are clamped to [0, 1] and rounded to 8 bits. *buf is malloc'd. */
int pa_image_encode(const pa_image *img, const pa_image_encoding *enc, void **buf, size_t *len);
/* The embedded parameters of an encoded image: *params is malloc'd text, or NULL when the
 * image has none. Fails only on unreadable bytes. */
int pa_image_read_params(const void *buf, size_t len, char **params);

/* Bilinear resize (pixel centres aligned, edge clamped). */
int pa_image_resize(const pa_image *img, int width, int height, pa_image **out);
/* Scale to cover width x height (keeping the aspect ratio), then crop the centre. */
int pa_image_fit(const pa_image *img, int width, int height, pa_image **out);
int pa_image_crop(const pa_image *img, int x, int y, int width, int height, pa_image **out);

#endif
