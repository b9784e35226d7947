/* JPEG through libjpeg-turbo's libjpeg API; the parameters travel in a COM marker (any
 * bytes, at most 65533 of them). libjpeg reports errors through a longjmp out of its
 * error_exit hook, so every call that can fail runs under the setjmp in its caller. */
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE and size_t */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "model/image_codec.h"
#include "ops/error.h"

#define JPEG_COM_MAX 65533u

typedef struct {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
} jpeg_errors;

static void on_error(j_common_ptr cinfo) {
  jpeg_errors *e = (jpeg_errors *)cinfo->err;
  cinfo->err->format_message(cinfo, e->message);
  longjmp(e->jump, 1);
}

static void no_output(j_common_ptr cinfo) { (void)cinfo; } /* warnings are not printed */

static struct jpeg_error_mgr *errors_init(jpeg_errors *e) {
  jpeg_std_error(&e->mgr);
  e->mgr.error_exit = on_error;
  e->mgr.output_message = no_output;
  e->message[0] = 0;
  return &e->mgr;
}

/* Reads the header (and, when `keep_com`, the COM markers) of buf. */
static void start_reading(struct jpeg_decompress_struct *d, const void *buf, size_t len, int keep_com) {
  jpeg_create_decompress(d);
  jpeg_mem_src(d, buf, (unsigned long)len);
  if (keep_com) jpeg_save_markers(d, JPEG_COM, 0xFFFF);
  jpeg_read_header(d, TRUE);
}

int pa_jpeg_decode(const void *buf, size_t len, pa_rgb8 *out) {
  struct jpeg_decompress_struct d;
  jpeg_errors e;
  volatile int rc = PA_OK;
  d.err = errors_init(&e);
  out->px = NULL;
  if (setjmp(e.jump)) {
    rc = pa_fail(PA_ERR_FORMAT, "not a readable JPEG: %s", e.message);
    goto fail;
  }
  start_reading(&d, buf, len, 0);
  if ((rc = pa_rgb8_check_size((long)d.image_width, (long)d.image_height))) goto fail;
  d.out_color_space = JCS_RGB; /* gray and YCbCr are converted; CMYK fails here */
  jpeg_start_decompress(&d);
  if (d.output_components != 3) {
    rc = pa_fail(PA_ERR_FORMAT, "JPEG with %d colour components", d.output_components);
    goto fail;
  }
  size_t stride = (size_t)d.output_width * 3;
  if (!(out->px = malloc(stride * d.output_height))) {
    rc = pa_fail(PA_ERR_NOMEM, "jpeg: out of memory");
    goto fail;
  }
  while (d.output_scanline < d.output_height) {
    JSAMPROW row = out->px + stride * d.output_scanline;
    jpeg_read_scanlines(&d, &row, 1);
  }
  jpeg_finish_decompress(&d);
  out->width = (int)d.output_width;
  out->height = (int)d.output_height;
fail:
  if (rc) free(out->px), out->px = NULL;
  jpeg_destroy_decompress(&d);
  return rc;
}

int pa_jpeg_encode(const pa_rgb8 *in, int quality, const char *params, void **buf, size_t *len) {
  struct jpeg_compress_struct c;
  jpeg_errors e;
  unsigned char *mem = NULL;
  unsigned long mem_len = 0;
  volatile int rc = PA_OK;
  if (params && strlen(params) > JPEG_COM_MAX)
    return pa_fail(PA_ERR_INVALID, "JPEG: %zu bytes of parameters, a COM marker holds %u", strlen(params), JPEG_COM_MAX);
  c.err = errors_init(&e);
  if (setjmp(e.jump)) {
    rc = pa_fail(PA_ERR_FORMAT, "JPEG encode failed: %s", e.message);
    goto fail;
  }
  jpeg_create_compress(&c);
  jpeg_mem_dest(&c, &mem, &mem_len);
  c.image_width = (JDIMENSION)in->width;
  c.image_height = (JDIMENSION)in->height;
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, quality, TRUE);
  jpeg_start_compress(&c, TRUE);
  if (params) jpeg_write_marker(&c, JPEG_COM, (const JOCTET *)params, (unsigned)strlen(params));
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = in->px + (size_t)c.next_scanline * in->width * 3;
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  *buf = mem;
  *len = mem_len;
  mem = NULL;
fail:
  jpeg_destroy_compress(&c);
  free(mem);
  return rc;
}

int pa_jpeg_params(const void *buf, size_t len, char **params) {
  struct jpeg_decompress_struct d;
  jpeg_errors e;
  volatile int rc = PA_OK;
  d.err = errors_init(&e);
  if (setjmp(e.jump)) {
    rc = pa_fail(PA_ERR_FORMAT, "not a readable JPEG: %s", e.message);
    goto fail;
  }
  start_reading(&d, buf, len, 1);
  for (jpeg_saved_marker_ptr m = d.marker_list; m && !*params; m = m->next)
    if (m->marker == JPEG_COM && !(*params = strndup((const char *)m->data, m->data_length)))
      rc = pa_fail(PA_ERR_NOMEM, "out of memory");
fail:
  jpeg_destroy_decompress(&d);
  return rc;
}
