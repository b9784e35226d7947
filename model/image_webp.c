/* WebP through libwebp (lossy, VP8); the parameters travel in the XMP chunk that libwebpmux
 * adds (an extended-format file), as the text of one paella:parameters element. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <webp/decode.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include "model/image_codec.h"
#include "ops/error.h"

#define XMP_OPEN "<paella:parameters>"
#define XMP_CLOSE "</paella:parameters>"
static const char xmp_head[] =
    "<?xpacket begin=\"\xEF\xBB\xBF\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>"
    "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">"
    "<rdf:Description rdf:about=\"\" xmlns:paella=\"https://paella.invalid/ns/1.0/\">" XMP_OPEN;
static const char xmp_tail[] = XMP_CLOSE "</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"r\"?>";

int pa_webp_decode(const void *buf, size_t len, pa_rgb8 *out) {
  WebPBitstreamFeatures f;
  out->px = NULL;
  if (WebPGetFeatures(buf, len, &f) != VP8_STATUS_OK) return pa_fail(PA_ERR_FORMAT, "not a readable WebP");
  if (f.has_animation) return pa_fail(PA_ERR_FORMAT, "animated WebP is not supported");
  int rc = pa_rgb8_check_size(f.width, f.height);
  if (rc) return rc;
  size_t stride = (size_t)f.width * 3, size = stride * f.height;
  if (!(out->px = malloc(size))) return pa_fail(PA_ERR_NOMEM, "webp: out of memory");
  if (!WebPDecodeRGBInto(buf, len, out->px, size, (int)stride)) {
    free(out->px);
    out->px = NULL;
    return pa_fail(PA_ERR_FORMAT, "WebP decode failed");
  }
  out->width = f.width;
  out->height = f.height;
  return PA_OK;
}

/* text with & < > escaped, between xmp_head and xmp_tail; malloc'd */
static char *xmp_packet(const char *text, size_t *len) {
  size_t n = strlen(text), cap = sizeof xmp_head + n * 5 + sizeof xmp_tail;
  char *x = malloc(cap), *p = x;
  if (!x) return NULL;
  p += sprintf(p, "%s", xmp_head);
  for (const char *s = text; *s; s++)
    p += *s == '&' ? sprintf(p, "&amp;") : *s == '<' ? sprintf(p, "&lt;") : *s == '>' ? sprintf(p, "&gt;")
                                                                                       : (*p = *s, 1);
  p += sprintf(p, "%s", xmp_tail);
  *len = (size_t)(p - x);
  return x;
}

/* Adds the XMP chunk to a simple-format bitstream; *out is malloc'd. */
static int add_xmp(const uint8_t *bits, size_t bits_len, const char *params, void **out, size_t *out_len) {
  WebPData image = {bits, bits_len}, xmp = {0}, assembled = {0};
  size_t xmp_len = 0;
  char *packet = xmp_packet(params, &xmp_len);
  WebPMux *mux = packet ? WebPMuxCreate(&image, 1) : NULL;
  int rc = PA_OK;
  xmp.bytes = (const uint8_t *)packet;
  xmp.size = xmp_len;
  if (!mux || WebPMuxSetChunk(mux, "XMP ", &xmp, 1) != WEBP_MUX_OK || WebPMuxAssemble(mux, &assembled) != WEBP_MUX_OK) {
    rc = pa_fail(PA_ERR_FORMAT, "WebP: adding the XMP chunk failed");
    goto fail;
  }
  if (!(*out = malloc(assembled.size))) {
    rc = pa_fail(PA_ERR_NOMEM, "webp: out of memory");
    goto fail;
  }
  memcpy(*out, assembled.bytes, assembled.size);
  *out_len = assembled.size;
fail:
  WebPDataClear(&assembled);
  WebPMuxDelete(mux);
  free(packet);
  return rc;
}

int pa_webp_encode(const pa_rgb8 *in, int quality, const char *params, void **buf, size_t *len) {
  uint8_t *bits = NULL;
  size_t n = WebPEncodeRGB(in->px, in->width, in->height, in->width * 3, (float)quality, &bits);
  int rc = PA_OK;
  if (n == 0) return pa_fail(PA_ERR_FORMAT, "WebP encode failed");
  if (params) {
    rc = add_xmp(bits, n, params, buf, len);
  } else if ((*buf = malloc(n))) {
    memcpy(*buf, bits, n);
    *len = n;
  } else {
    rc = pa_fail(PA_ERR_NOMEM, "webp: out of memory");
  }
  WebPFree(bits);
  return rc;
}

/* Undoes xmp_packet's escaping (and the other predefined XML entities) in place. */
static void xml_unescape(char *s) {
  static const struct {
    const char *entity;
    char c;
  } table[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
  char *w = s;
  for (const char *r = s; *r;) {
    size_t i = 0, n = sizeof table / sizeof table[0];
    while (i < n && strncmp(r, table[i].entity, strlen(table[i].entity))) i++;
    if (i < n) *w++ = table[i].c, r += strlen(table[i].entity);
    else *w++ = *r++;
  }
  *w = 0;
}

int pa_webp_params(const void *buf, size_t len, char **params) {
  WebPData file = {buf, len}, xmp = {0};
  WebPMux *mux = WebPMuxCreate(&file, 0);
  int rc = PA_OK;
  if (!mux) return pa_fail(PA_ERR_FORMAT, "not a readable WebP");
  if (WebPMuxGetChunk(mux, "XMP ", &xmp) == WEBP_MUX_OK) {
    char *text = strndup((const char *)xmp.bytes, xmp.size);
    char *open = text ? strstr(text, XMP_OPEN) : NULL, *close = open ? strstr(open, XMP_CLOSE) : NULL;
    if (!text) rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    if (close) {
      *close = 0;
      xml_unescape(open + strlen(XMP_OPEN));
      if (!(*params = strdup(open + strlen(XMP_OPEN)))) rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    }
    free(text);
  }
  WebPMuxDelete(mux);
  return rc;
}
