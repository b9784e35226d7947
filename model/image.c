#include "model/image.h"

#include <errno.h>
#include <math.h>
#include <spng.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/error.h"

int pa_image_new(int width, int height, pa_image **out) {
  if (width < 1 || height < 1 || width > PA_IMAGE_MAX_SIDE || height > PA_IMAGE_MAX_SIDE)
    return pa_fail(PA_ERR_INVALID, "image size %dx%d outside 1..%d", width, height, PA_IMAGE_MAX_SIDE);
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

int pa_image_decode_png(const void *buf, size_t len, pa_image **out) {
  int rc = PA_OK, err;
  unsigned char *px = NULL;
  spng_ctx *ctx = spng_ctx_new(0);
  if (!ctx) return pa_fail(PA_ERR_NOMEM, "png: out of memory");
  struct spng_ihdr ihdr;
  size_t size;
  spng_set_image_limits(ctx, PA_IMAGE_MAX_SIDE, PA_IMAGE_MAX_SIDE);
  spng_set_chunk_limits(ctx, 1u << 24, 1u << 26);
  if ((err = spng_set_png_buffer(ctx, buf, len)) || (err = spng_get_ihdr(ctx, &ihdr)) ||
      (err = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size))) {
    rc = pa_fail(PA_ERR_FORMAT, "not a readable PNG: %s", spng_strerror(err));
    goto fail;
  }
  if (!(px = malloc(size))) {
    rc = pa_fail(PA_ERR_NOMEM, "png: out of memory");
    goto fail;
  }
  if ((err = spng_decode_image(ctx, px, size, SPNG_FMT_RGB8, SPNG_DECODE_TRNS))) {
    rc = pa_fail(PA_ERR_FORMAT, "PNG decode failed: %s", spng_strerror(err));
    goto fail;
  }
  PA_TRY(pa_image_new((int)ihdr.width, (int)ihdr.height, out));
  for (size_t i = 0; i < (size_t)ihdr.width * ihdr.height * 3; i++) (*out)->rgb[i] = px[i] / 255.0f;
fail:
  free(px);
  spng_ctx_free(ctx);
  return rc;
}

int pa_image_read_png(const char *path, pa_image **out) {
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
  if (ferror(f)) {
    rc = pa_fail(PA_ERR_IO, "%s: read error", path);
    goto fail;
  }
  if ((rc = pa_image_decode_png(buf, len, out))) pa_fail_context(rc, "%s: ", path);
fail:
  free(buf);
  fclose(f);
  return rc;
}

int pa_image_encode_png(const pa_image *img, void **buf, size_t *len) {
  int rc = PA_OK, err;
  size_t n = (size_t)img->width * img->height * 3;
  unsigned char *px = malloc(n);
  spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
  if (!px || !ctx) {
    rc = pa_fail(PA_ERR_NOMEM, "png: out of memory");
    goto fail;
  }
  for (size_t i = 0; i < n; i++) {
    float v = img->rgb[i];
    v = v != v ? 0.0f : (v < 0 ? 0 : (v > 1 ? 1 : v)); /* NaN -> 0 */
    px[i] = (unsigned char)lrintf(v * 255.0f);
  }
  struct spng_ihdr ihdr = {.width = (uint32_t)img->width, .height = (uint32_t)img->height,
                           .bit_depth = 8, .color_type = SPNG_COLOR_TYPE_TRUECOLOR};
  spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
  if ((err = spng_set_ihdr(ctx, &ihdr)) ||
      (err = spng_encode_image(ctx, px, n, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE))) {
    rc = pa_fail(PA_ERR_FORMAT, "PNG encode failed: %s", spng_strerror(err));
    goto fail;
  }
  *buf = spng_get_png_buffer(ctx, len, &err);
  if (!*buf) rc = pa_fail(PA_ERR_FORMAT, "PNG encode failed: %s", spng_strerror(err));
fail:
  free(px);
  spng_ctx_free(ctx);
  return rc;
}

int pa_image_write_png(const char *path, const pa_image *img) {
  void *buf = NULL;
  size_t len = 0;
  int rc = pa_image_encode_png(img, &buf, &len);
  if (rc) return rc;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    rc = pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
  } else {
    bool ok = fwrite(buf, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
      rc = pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno ? errno : EIO));
      unlink(tmp);
    }
  }
  free(buf);
  return rc;
}

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
