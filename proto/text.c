/* UTF-8 validation and base64, written out because both sit on the untrusted path and the
 * rules must be exact: no overlong forms, no surrogates, nothing above U+10FFFF; base64
 * with the standard alphabet and mandatory padding only. */
#include <stdlib.h>
#include <string.h>

#include "proto/internal.h"

bool pw_utf8_valid(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    if (c < 0x80) { i++; continue; }
    int extra;
    unsigned min, cp;
    if (c >= 0xc2 && c <= 0xdf) { extra = 1; min = 0x80; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { extra = 2; min = 0x800; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { extra = 3; min = 0x10000; cp = c & 0x07; }
    else return false; /* continuation byte, 0xc0/0xc1 (overlong) or 0xf5+ */
    if ((size_t)extra > len - i - 1) return false;
    for (int k = 1; k <= extra; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += 1 + extra;
  }
  return true;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *pw_base64_encode(const uint8_t *data, size_t len) {
  size_t out_len = (len + 2) / 3 * 4;
  char *out = malloc(out_len + 1);
  if (!out) return NULL;
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)data[i] << 16;
    if (i + 1 < len) v |= (uint32_t)data[i + 1] << 8;
    if (i + 2 < len) v |= data[i + 2];
    out[o++] = B64[(v >> 18) & 63];
    out[o++] = B64[(v >> 12) & 63];
    out[o++] = i + 1 < len ? B64[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < len ? B64[v & 63] : '=';
  }
  out[o] = '\0';
  return out;
}

static int b64_value(unsigned char c) {
  const char *p = c ? strchr(B64, c) : NULL;
  return p ? (int)(p - B64) : -1;
}

int pw_base64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len, bool *nomem) {
  *out = NULL;
  *out_len = 0;
  *nomem = false;
  if (len % 4) return -1;
  size_t pad = 0;
  if (len && s[len - 1] == '=') pad++;
  if (len > 1 && s[len - 2] == '=') pad++;
  uint8_t *buf = malloc(len / 4 * 3 + 1);
  if (!buf) { *nomem = true; return -1; }
  size_t o = 0;
  for (size_t i = 0; i < len; i += 4) {
    uint32_t v = 0;
    int quad_pad = (i + 4 == len) ? (int)pad : 0;
    for (int k = 0; k < 4; k++) {
      int d = k >= 4 - quad_pad ? 0 : b64_value((unsigned char)s[i + k]);
      if (d < 0) goto fail;
      v = (v << 6) | (uint32_t)d;
    }
    /* the bits the padding hides must be zero, so that every byte string has one encoding */
    if ((quad_pad == 1 && (v & 0xff)) || (quad_pad == 2 && (v & 0xffff))) goto fail;
    buf[o++] = (uint8_t)(v >> 16);
    if (quad_pad < 2) buf[o++] = (uint8_t)(v >> 8);
    if (quad_pad < 1) buf[o++] = (uint8_t)v;
  }
  *out = buf;
  *out_len = o;
  return 0;
fail:
  free(buf);
  return -1;
}
