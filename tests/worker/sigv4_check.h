/* Helpers shared by test_sigv4 and test_storage: botocore's reference signatures (through
 * tests/worker/botocore_sign.py) and re-signing a request captured by http_stub.h. */
#ifndef PAELLA_TESTS_WORKER_SIGV4_CHECK_H
#define PAELLA_TESTS_WORKER_SIGV4_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/worker/http_stub.h"
#include "worker/sigv4.h"

#define BOTOCORE_SCRIPT PAELLA_SOURCE_DIR "/tests/worker/botocore_sign.py"

/* Debian's interpreter, where scripts/install-deps.sh installs python3-botocore, rather than
 * whatever python3 comes first on PATH (a pyenv build may lack botocore). */
#define BOTOCORE_PYTHON "/usr/bin/python3"

/* True when the interpreter can import botocore. */
static inline bool botocore_available(void) {
  static int cached = -1;
  if (cached < 0)
    cached = system(BOTOCORE_PYTHON " -c 'import botocore.auth' >/dev/null 2>&1") == 0;
  return cached == 1;
}

/* Runs botocore_sign.py with the arguments (each single-quoted; none may contain a quote) and
 * returns its stdout (malloc'd, trailing newline removed) or NULL. */
static inline char *botocore_run(int argc, ...) {
  char cmd[8192];
  size_t n = (size_t)snprintf(cmd, sizeof cmd, BOTOCORE_PYTHON " '%s'", BOTOCORE_SCRIPT);
  va_list ap;
  va_start(ap, argc);
  for (int i = 0; i < argc && n < sizeof cmd; i++)
    n += (size_t)snprintf(cmd + n, sizeof cmd - n, " '%s'", va_arg(ap, const char *));
  va_end(ap);
  if (n >= sizeof cmd) return NULL;
  FILE *p = popen(cmd, "r");
  if (!p) return NULL;
  char *out = calloc(1, 8192);
  size_t len = out ? fread(out, 1, 8191, p) : 0;
  if (pclose(p) != 0 || !out) {
    free(out);
    return NULL;
  }
  while (len && out[len - 1] == '\n') out[--len] = '\0';
  return out;
}

/* Re-signs a PUT captured by the stub with our signer, at the X-Amz-Date curl put on it, over
 * the headers curl says it signed; *ours gets our Authorization value, *theirs curl's. */
static inline int resign_captured(const char *head, const char *access, const char *secret,
                           const char *region, char **ours, char **theirs) {
  static const char *names[] = {"content-type", "host", "x-amz-content-sha256", "x-amz-date",
                                "x-amz-security-token"};
  pa_sigv4_header h[5];
  char *vals[5] = {0}, method[16] = "", path[2048] = "";
  size_t n = 0;
  int rc = -1;
  *ours = NULL;
  *theirs = stub_header(head, "Authorization", 0);
  if (!*theirs || sscanf(head, "%15s %2047s", method, path) != 2) goto done;
  for (size_t i = 0; i < 5; i++) {
    vals[i] = stub_header(head, names[i], 0);
    if (vals[i] && strstr(*theirs, names[i])) h[n++] = (pa_sigv4_header){names[i], vals[i]};
  }
  char *q = strchr(path, '?');
  if (q) *q++ = '\0';
  pa_sigv4_signer k = {access, secret, region, "s3", vals[3]};
  pa_sigv4_request r = {method, path, q ? q : "", h, n, vals[2] ? vals[2] : ""};
  rc = vals[3] ? pa_sigv4_authorization(&k, &r, ours, NULL) : -1;
done:
  for (size_t i = 0; i < 5; i++) free(vals[i]);
  return rc;
}

#endif
