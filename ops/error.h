/* Error reporting for library code: functions return a pa_status (0 = ok, negative = error)
 * and leave a human-readable message in a thread-local buffer. Library code never exits. */
#ifndef PAELLA_OPS_ERROR_H
#define PAELLA_OPS_ERROR_H

typedef enum {
  PA_OK = 0,
  PA_ERR_IO = -1,          /* file or socket could not be read/written */
  PA_ERR_FORMAT = -2,      /* bytes do not follow the expected format */
  PA_ERR_SHAPE = -3,       /* tensor shapes/dtypes do not match */
  PA_ERR_NOMEM = -4,
  PA_ERR_INVALID = -5,     /* bad argument or configuration */
  PA_ERR_UNSUPPORTED = -6, /* valid but not implemented (e.g. an unknown pickle callable) */
  PA_ERR_DEVICE = -7,      /* CUDA / backend failure */
  PA_ERR_NOTFOUND = -8,    /* missing key, file or model */
  PA_ERR_CANCELED = -9,    /* the caller asked to stop (job canceled) */
} pa_status;

/* Sets the message (printf-style) and returns `code`, so callers write
 * `return pa_fail(PA_ERR_IO, "open %s: %s", path, strerror(errno));` */
int pa_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends context to the current message ("loading x.pt: " + old message); returns code. */
int pa_fail_context(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *pa_errmsg(void);
void pa_clear_error(void);
const char *pa_status_name(int code);

/* Propagate a failing status: `PA_TRY(pa_linear(...));` inside a function with `int rc`
 * and a `fail:` label. */
#define PA_TRY(expr)            \
  do {                          \
    rc = (expr);                \
    if (rc != PA_OK) goto fail; \
  } while (0)

#endif
