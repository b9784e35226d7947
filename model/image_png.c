/* PNG through libspng; the parameters travel in an uncompressed iTXt chunk (UTF-8). */
#include <spng.h>
#include <stdlib.h>
#include <string.h>

#include "model/image_codec.h"
#include "ops/error.h"

static spng_ctx *reader(const void *buf, size_t len, int *err) {
  spng_ctx *ctx = spng_ctx_new(0);
  if (!ctx) return NULL;
  spng_set_image_limits(ctx, PA_IMAGE_MAX_SIDE, PA_IMAGE_MAX_SIDE);
  spng_set_chunk_limits(ctx, 1u << 24, 1u << 26);
  *err = spng_set_png_buffer(ctx, buf, len);
  return ctx;
}

int pa_png_decode(const void *buf, size_t len, pa_rgb8 *out) {
  int rc = PA_OK, err = 0;
  size_t size;
  struct spng_ihdr ihdr;
  spng_ctx *ctx = reader(buf, len, &err);
  if (!ctx) return pa_fail(PA_ERR_NOMEM, "png: out of memory");
  if (err || (err = spng_get_ihdr(ctx, &ihdr)) || (err = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size))) {
    rc = pa_fail(PA_ERR_FORMAT, "not a readable PNG: %s", spng_strerror(err));
    goto fail;
  }
  PA_TRY(pa_rgb8_check_size(ihdr.width, ihdr.height));
  if (!(out->px = malloc(size))) {
    rc = pa_fail(PA_ERR_NOMEM, "png: out of memory");
    goto fail;
  }
  if ((err = spng_decode_image(ctx, out->px, size, SPNG_FMT_RGB8, SPNG_DECODE_TRNS))) {
    rc = pa_fail(PA_ERR_FORMAT, "PNG decode failed: %s", spng_strerror(err));
    goto fail;
  }
  out->width = (int)ihdr.width;
  out->height = (int)ihdr.height;
fail:
  if (rc) free(out->px), out->px = NULL;
  spng_ctx_free(ctx);
  return rc;
}

int pa_png_encode(const pa_rgb8 *in, const char *params, void **buf, size_t *len) {
  int rc = PA_OK, err;
  size_t n = (size_t)in->width * in->height * 3;
  spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
  if (!ctx) return pa_fail(PA_ERR_NOMEM, "png: out of memory");
  struct spng_ihdr ihdr = {.width = (uint32_t)in->width, .height = (uint32_t)in->height,
                           .bit_depth = 8, .color_type = SPNG_COLOR_TYPE_TRUECOLOR};
  struct spng_text text = {.keyword = PA_IMAGE_PARAMS_KEY, .type = SPNG_ITXT,
                           .length = params ? strlen(params) : 0, .text = (char *)params,
                           .language_tag = "", .translated_keyword = ""};
  spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
  if ((err = spng_set_ihdr(ctx, &ihdr)) || (params && (err = spng_set_text(ctx, &text, 1))) ||
      (err = spng_encode_image(ctx, in->px, n, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE))) {
    rc = pa_fail(PA_ERR_FORMAT, "PNG encode failed: %s", spng_strerror(err));
    goto fail;
  }
  *buf = spng_get_png_buffer(ctx, len, &err);
  if (!*buf) rc = pa_fail(PA_ERR_FORMAT, "PNG encode failed: %s", spng_strerror(err));
fail:
  spng_ctx_free(ctx);
  return rc;
}

int pa_png_params(const void *buf, size_t len, char **params) {
  int rc = PA_OK, err = 0;
  uint32_t n = 0;
  struct spng_text *texts = NULL;
  spng_ctx *ctx = reader(buf, len, &err);
  if (!ctx) return pa_fail(PA_ERR_NOMEM, "png: out of memory");
  if (!err) err = spng_get_text(ctx, NULL, &n);
  if (err == SPNG_ECHUNKAVAIL) goto fail; /* no text at all */
  if (err || !(texts = calloc(n, sizeof *texts)) || (err = spng_get_text(ctx, texts, &n))) {
    rc = pa_fail(PA_ERR_FORMAT, "PNG text chunks: %s", err ? spng_strerror(err) : "out of memory");
    goto fail;
  }
  for (uint32_t i = 0; i < n && !*params; i++)
    if (!strcmp(texts[i].keyword, PA_IMAGE_PARAMS_KEY) && !(*params = strndup(texts[i].text, texts[i].length)))
      rc = pa_fail(PA_ERR_NOMEM, "out of memory");
fail:
  free(texts);
  spng_ctx_free(ctx);
  return rc;
}
