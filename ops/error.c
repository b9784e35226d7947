#include "ops/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_buf[2048];

int pa_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_buf, sizeof err_buf, fmt, ap);
  va_end(ap);
  return code;
}

int pa_fail_context(int code, const char *fmt, ...) {
  char prefix[1024], old[sizeof err_buf];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, err_buf, sizeof old);
  /* prefix + old message, truncated to the buffer (explicit copies: no format truncation) */
  size_t lp = strlen(prefix), lo = strlen(old), cap = sizeof err_buf - 1;
  if (lp > cap) lp = cap;
  if (lo > cap - lp) lo = cap - lp;
  memcpy(err_buf, prefix, lp);
  memcpy(err_buf + lp, old, lo);
  err_buf[lp + lo] = 0;
  return code;
}

const char *pa_errmsg(void) { return err_buf[0] ? err_buf : "no error"; }

void pa_clear_error(void) { err_buf[0] = 0; }

const char *pa_status_name(int code) {
  switch (code) {
    case PA_OK: return "ok";
    case PA_ERR_IO: return "io";
    case PA_ERR_FORMAT: return "format";
    case PA_ERR_SHAPE: return "shape";
    case PA_ERR_NOMEM: return "nomem";
    case PA_ERR_INVALID: return "invalid";
    case PA_ERR_UNSUPPORTED: return "unsupported";
    case PA_ERR_DEVICE: return "device";
    case PA_ERR_NOTFOUND: return "notfound";
    case PA_ERR_CANCELED: return "canceled";
    default: return "unknown";
  }
}
