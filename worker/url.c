/* Configuration URL parsing (see url.h). */
#include "worker/url.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/error.h"

static int copy_span(char *dst, size_t cap, const char *s, size_t n) {
  if (n >= cap) return -1;
  memcpy(dst, s, n);
  dst[n] = 0;
  return 0;
}

/* [user[:password]@]host[:port] */
static int parse_authority(const char *a, size_t n, pa_url *u) {
  const char *at = memchr(a, '@', n);
  if (at) {
    const char *colon = memchr(a, ':', (size_t)(at - a));
    size_t ulen = colon ? (size_t)(colon - a) : (size_t)(at - a);
    if (copy_span(u->user, sizeof u->user, a, ulen)) return -1;
    if (colon && copy_span(u->password, sizeof u->password, colon + 1, (size_t)(at - colon - 1))) return -1;
    n -= (size_t)(at + 1 - a);
    a = at + 1;
  }
  const char *colon = memchr(a, ':', n);
  size_t hlen = colon ? (size_t)(colon - a) : n;
  if (copy_span(u->host, sizeof u->host, a, hlen)) return -1;
  if (colon) {
    char port[8], *end;
    if (copy_span(port, sizeof port, colon + 1, n - hlen - 1)) return -1;
    long p = strtol(port, &end, 10);
    if (end == port || *end || p < 1 || p > 65535) return -1;
    u->port = (int)p;
  }
  return 0;
}

int pa_url_parse(const char *url, pa_url *u) {
  memset(u, 0, sizeof *u);
  const char *sep = strstr(url, "://");
  if (!sep || sep == url || copy_span(u->scheme, sizeof u->scheme, url, (size_t)(sep - url)))
    return pa_fail(PA_ERR_INVALID, "'%s' is not a URL (expected scheme://...)", url);
  const char *a = sep + 3, *end = a + strcspn(a, "/?");
  if (parse_authority(a, (size_t)(end - a), u))
    return pa_fail(PA_ERR_INVALID, "URL '%s': bad host, port or credentials", url);
  const char *q = strchr(end, '?');
  size_t plen = q ? (size_t)(q - end) : strlen(end);
  if (copy_span(u->path, sizeof u->path, end, plen) || (q && copy_span(u->query, sizeof u->query, q + 1, strlen(q + 1))))
    return pa_fail(PA_ERR_INVALID, "URL '%s' is too long", url);
  return PA_OK;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* percent-decodes s[0..n) into out; '+' is a space only in a query (form encoding) */
static int decode_value(const char *s, size_t n, bool plus_is_space, char *out, size_t cap) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      c = ' ';
    }
    if (k + 1 >= cap) return -1;
    out[k++] = c;
  }
  out[k] = 0;
  return 1;
}

int pa_url_query(const pa_url *u, const char *name, char *out, size_t cap) {
  size_t nlen = strlen(name);
  for (const char *p = u->query; *p;) {
    size_t len = strcspn(p, "&");
    if (len > nlen && !strncmp(p, name, nlen) && p[nlen] == '=')
      return decode_value(p + nlen + 1, len - nlen - 1, true, out, cap);
    p += len;
    if (*p == '&') p++;
  }
  return 0;
}

int pa_url_decode(const char *s, char *out, size_t cap) {
  return decode_value(s, strlen(s), false, out, cap) == 1 ? 0 : -1;
}
