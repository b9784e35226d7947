#include "cli/opts.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_usage_error(const char *cmd, const char *opt, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: %s%s", cmd, opt ? opt : "", opt ? ": " : "");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return CLI_EXIT_USAGE;
}

int cli_opt_int(const char *cmd, const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (end == v || *end || errno == EINVAL)
    return cli_usage_error(cmd, opt, "'%s' is not an integer (allowed %lld..%lld)", v, (long long)lo, (long long)hi);
  if (errno == ERANGE || x < lo || x > hi)
    return cli_usage_error(cmd, opt, "%s is out of range %lld..%lld", v, (long long)lo, (long long)hi);
  *out = x;
  return 0;
}

/* One number of text ending at `stop` (',' or the end). */
static int one_num(const char *cmd, const char *opt, const char *v, const char *full, double lo, double hi, double *out,
                   const char **rest) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (end == v || (*end && *end != ',') || errno || !isfinite(x))
    return cli_usage_error(cmd, opt, "'%s' is not a number (allowed %g..%g)", full, lo, hi);
  if (x < lo || x > hi) return cli_usage_error(cmd, opt, "%.*s is out of range %g..%g", (int)(end - v), v, lo, hi);
  *out = x;
  *rest = end;
  return 0;
}

int cli_opt_num(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out) {
  const char *rest = "";
  int rc = one_num(cmd, opt, v, v, lo, hi, out, &rest);
  if (!rc && *rest) return cli_usage_error(cmd, opt, "'%s' is not a number (allowed %g..%g)", v, lo, hi);
  return rc;
}

int cli_opt_pair(const char *cmd, const char *opt, const char *v, double lo, double hi, double out[2]) {
  const char *rest = "";
  int rc = one_num(cmd, opt, v, v, lo, hi, &out[0], &rest);
  if (rc) return rc;
  out[1] = out[0];
  if (!*rest) return 0;
  const char *second = rest + 1;
  if ((rc = one_num(cmd, opt, second, v, lo, hi, &out[1], &rest))) return rc;
  return *rest ? cli_usage_error(cmd, opt, "'%s': expected A or A,B", v) : 0;
}

int cli_opt_name(const char *cmd, const char *opt, const char *v, const char *const *names, int n, int *out) {
  char allowed[256] = "";
  for (int i = 0; i < n; i++) {
    if (!strcmp(v, names[i])) {
      *out = i;
      return 0;
    }
    snprintf(allowed + strlen(allowed), sizeof allowed - strlen(allowed), "%s%s", i ? ", " : "", names[i]);
  }
  return cli_usage_error(cmd, opt, "'%s' is not one of %s", v, allowed);
}
