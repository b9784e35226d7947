/* pa_webhook_find_secret (webhook_secret.h). Only libc: the scheduler compiles it too. */
#include "worker/webhook_secret.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_secret_file(const char *path) {
  char buf[1024];
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
  buf[n] = 0;
  return n ? strdup(buf) : NULL;
}

char *pa_webhook_find_secret(const char *secrets_dir, const char *secret_id) {
  char name[200];
  if (secret_id && secrets_dir && secrets_dir[0] && !strchr(secret_id, '/')) {
    snprintf(name, sizeof name, "%s/%s", secrets_dir, secret_id);
    char *s = read_secret_file(name);
    if (s) return s;
  }
  if (!secret_id) {
    const char *v = getenv("PAELLA_WEBHOOK_SECRET");
    return v && *v ? strdup(v) : NULL;
  }
  int k = snprintf(name, sizeof name, "PAELLA_WEBHOOK_SECRET_");
  for (const char *p = secret_id; *p && k < (int)sizeof name - 1; p++)
    name[k++] = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
  name[k] = 0;
  const char *v = getenv(name);
  return v && *v ? strdup(v) : NULL;
}
