#include "model/image.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "model/image_codec.h"
#include "ops/error.h"

/* ---- formats ------------------------------------------------------------------------- */

static const struct {
  const char *name, *ext, *mime;
} formats[PA_IMAGE_FORMAT_COUNT] = {
    [PA_IMAGE_PNG] = {"png", ".png", "image/png"},
    [PA_IMAGE_JPEG] = {"jpeg", ".jpg", "image/jpeg"},
    [PA_IMAGE_WEBP] = {"webp", ".webp", "image/webp"},
};

int pa_image_format_from_name(const char *name, pa_image_format *out) {
  for (int f = 0; f < PA_IMAGE_FORMAT_COUNT; f++)
    if (!strcasecmp(name, formats[f].name)) {
      *out = (pa_image_format)f;
      return 0;
    }
  if (!strcasecmp(name, "jpg")) {
    *out = PA_IMAGE_JPEG;
    return 0;
  }
  return -1;
}

int pa_image_format_from_path(const char *path, pa_image_format *out) {
  const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
  if (!dot || (slash && dot < slash) || dot == path || (slash && dot == slash + 1)) return 0;
  return pa_image_format_from_name(dot + 1, out) == 0 ? 1 : -1;
}

const char *pa_image_format_name(pa_image_format f) { return formats[f].name; }
const char *pa_image_format_extension(pa_image_format f) { return formats[f].ext; }
const char *pa_image_format_mime(pa_image_format f) { return formats[f].mime; }

int pa_image_format_detect(const void *buf, size_t len, pa_image_format *out) {
  const unsigned char *b = buf;
  if (len >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) *out = PA_IMAGE_PNG;
  else if (len >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) *out = PA_IMAGE_JPEG;
  else if (len >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) *out = PA_IMAGE_WEBP;
  else return -1;
  return 0;
}

/* ---- images -------------------------------------------------------------------------- */

int pa_rgb8_check_size(long width, long height) {
  if (width < 1 || height < 1 || width > PA_IMAGE_MAX_SIDE || height > PA_IMAGE_MAX_SIDE)
    return pa_fail(PA_ERR_INVALID, "image size %ldx%ld outside 1..%d", width, height, PA_IMAGE_MAX_SIDE);
  return PA_OK;
}

int pa_image_new(int width, int height, pa_image **out) {
  int rc = pa_rgb8_check_size(width, height);
  if (rc) return rc;
  pa_image *img = calloc(1, sizeof *img);
  if (img) img->rgb = calloc((size_t)width * height * 3, sizeof *img->rgb);
  if (!img || !img->rgb) {
    free(img);
    return pa_fail(PA_ERR_NOMEM, "out of memory for a %dx%d image", width, height);
  }
  img->width = width;
  img->height = height;
  *out = img;
  return PA_OK;
}

void pa_image_free(pa_image *img) {
  if (!img) return;
  free(img->rgb);
  free(img);
}

int pa_image_decode(const void *buf, size_t len, pa_image **out) {
  pa_image_format f;
  pa_rgb8 d = {0};
  int rc;
  if (pa_image_format_detect(buf, len, &f))
    return pa_fail(PA_ERR_FORMAT, "not a PNG, JPEG or WebP image");
  rc = f == PA_IMAGE_PNG ? pa_png_decode(buf, len, &d)
     : f == PA_IMAGE_JPEG ? pa_jpeg_decode(buf, len, &d) : pa_webp_decode(buf, len, &d);
  if (rc == PA_OK) rc = pa_image_new(d.width, d.height, out);
  if (rc == PA_OK)
    for (size_t i = 0; i < (size_t)d.width * d.height * 3; i++) (*out)->rgb[i] = d.px[i] / 255.0f;
  free(d.px);
  return rc;
}

/* Reads a whole file of at most 256 MiB. */
static int read_file(const char *path, unsigned char **out, size_t *out_len) {
  FILE *f = fopen(path, "rb");
  if (!f) return pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
  unsigned char *buf = NULL;
  size_t len = 0, cap = 0, got;
  int rc = PA_OK;
  do {
    if (len == cap) {
      cap = cap ? cap * 2 : 1 << 16;
      unsigned char *nb = cap <= (1u << 28) ? realloc(buf, cap) : NULL;
      if (!nb) {
        rc = pa_fail(PA_ERR_NOMEM, "%s: file too large", path);
        goto fail;
      }
      buf = nb;
    }
    got = fread(buf + len, 1, cap - len, f);
    len += got;
  } while (got > 0);
  if (ferror(f)) rc = pa_fail(PA_ERR_IO, "%s: read error", path);
fail:
  fclose(f);
  if (rc) free(buf);
  else *out = buf, *out_len = len;
  return rc;
}

int pa_image_read(const char *path, pa_image **out) {
  unsigned char *buf = NULL;
  size_t len = 0;
  int rc = read_file(path, &buf, &len);
  if (rc) return rc;
  if ((rc = pa_image_decode(buf, len, out))) pa_fail_context(rc, "%s: ", path);
  free(buf);
  return rc;
}

int pa_image_encode(const pa_image *img, const pa_image_encoding *enc, void **buf, size_t *len) {
  size_t n = (size_t)img->width * img->height * 3;
  pa_rgb8 px = {img->width, img->height, malloc(n)};
  int rc;
  if (enc->format != PA_IMAGE_PNG && (enc->quality < 1 || enc->quality > 100))
    return free(px.px), pa_fail(PA_ERR_INVALID, "quality %d is outside 1..100", enc->quality);
  if (!px.px) return pa_fail(PA_ERR_NOMEM, "out of memory encoding a %dx%d image", img->width, img->height);
  for (size_t i = 0; i < n; i++) {
    float v = img->rgb[i];
    v = v != v ? 0.0f : (v < 0 ? 0 : (v > 1 ? 1 : v)); /* NaN -> 0 */
    px.px[i] = (unsigned char)lrintf(v * 255.0f);
  }
  switch (enc->format) {
    case PA_IMAGE_PNG: rc = pa_png_encode(&px, enc->params, buf, len); break;
    case PA_IMAGE_JPEG: rc = pa_jpeg_encode(&px, enc->quality, enc->params, buf, len); break;
    case PA_IMAGE_WEBP: rc = pa_webp_encode(&px, enc->quality, enc->params, buf, len); break;
    default: rc = pa_fail(PA_ERR_INVALID, "unknown image format %d", (int)enc->format);
  }
  free(px.px);
  return rc;
}

int pa_image_read_params(const void *buf, size_t len, char **params) {
  pa_image_format f;
  *params = NULL;
  if (pa_image_format_detect(buf, len, &f)) return pa_fail(PA_ERR_FORMAT, "not a PNG, JPEG or WebP image");
  return f == PA_IMAGE_PNG ? pa_png_params(buf, len, params)
       : f == PA_IMAGE_JPEG ? pa_jpeg_params(buf, len, params) : pa_webp_params(buf, len, params);
}

/* ---- geometry ------------------------------------------------------------------------ */
int pa_image_resize(const pa_image *img, int width, int height, pa_image **out) {
  int rc = pa_image_new(width, height, out);
  if (rc) return rc;
  float sx = (float)img->width / width, sy = (float)img->height / height;
  for (int y = 0; y < height; y++) {
    float fy = fmaxf((y + 0.5f) * sy - 0.5f, 0.0f);
    int y0 = (int)fy, y1 = y0 + 1 < img->height ? y0 + 1 : y0;
    float wy = fy - y0;
    for (int x = 0; x < width; x++) {
      float fx = fmaxf((x + 0.5f) * sx - 0.5f, 0.0f);
      int x0 = (int)fx, x1 = x0 + 1 < img->width ? x0 + 1 : x0;
      float wx = fx - x0;
      for (int c = 0; c < 3; c++) {
#define PX(yy, xx) img->rgb[((size_t)(yy) * img->width + (xx)) * 3 + c]
        float top = PX(y0, x0) * (1 - wx) + PX(y0, x1) * wx, bot = PX(y1, x0) * (1 - wx) + PX(y1, x1) * wx;
#undef PX
        (*out)->rgb[((size_t)y * width + x) * 3 + c] = top * (1 - wy) + bot * wy;
      }
    }
  }
  return PA_OK;
}

int pa_image_crop(const pa_image *img, int x, int y, int width, int height, pa_image **out) {
  if (x < 0 || y < 0 || x + width > img->width || y + height > img->height)
    return pa_fail(PA_ERR_INVALID, "crop %dx%d+%d+%d outside a %dx%d image", width, height, x, y, img->width, img->height);
  int rc = pa_image_new(width, height, out);
  if (rc) return rc;
  for (int r = 0; r < height; r++)
    memcpy((*out)->rgb + (size_t)r * width * 3, img->rgb + ((size_t)(y + r) * img->width + x) * 3,
           (size_t)width * 3 * sizeof(float));
  return PA_OK;
}

int pa_image_fit(const pa_image *img, int width, int height, pa_image **out) {
  if (img->width == width && img->height == height) return pa_image_crop(img, 0, 0, width, height, out);
  double scale = fmax((double)width / img->width, (double)height / img->height);
  int sw = (int)ceil(img->width * scale - 1e-9), sh = (int)ceil(img->height * scale - 1e-9);
  if (sw < width) sw = width;
  if (sh < height) sh = height;
  pa_image *scaled = NULL;
  int rc = pa_image_resize(img, sw, sh, &scaled);
  if (rc == PA_OK) rc = pa_image_crop(scaled, (sw - width) / 2, (sh - height) / 2, width, height, out);
  pa_image_free(scaled);
  return rc;
}
