/* Bearer API keys and per-key limits. Keys are configured as SHA-256 hashes, so the
 * scheduler's configuration and memory never hold a usable token. */
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "scheduler/sched.h"

void sha256_hex(const void *data, size_t len, char out[65]) {
  unsigned char d[32];
  SHA256(data, len, d);
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

auth_result auth_check(const sched_config *c, const char *authorization, const sched_key **key) {
  *key = NULL;
  if (c->n_keys == 0) return AUTH_OK;
  if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return AUTH_MISSING;
  const char *token = authorization + 7;
  while (*token == ' ') token++;
  if (!*token) return AUTH_MISSING;
  unsigned char d[32];
  SHA256((const unsigned char *)token, strlen(token), d);
  for (int i = 0; i < c->n_keys; i++)
    if (CRYPTO_memcmp(d, c->keys[i].hash, 32) == 0) {
      *key = &c->keys[i];
      return AUTH_OK;
    }
  return AUTH_INVALID;
}

/* ---- token buckets: one per key name, a small fixed table (keys are configured) ------- */
typedef struct {
  char name[64];
  double tokens;
  double last_s;
} bucket;

static bucket buckets[SCHED_MAX_KEYS + 1];
static int n_buckets;
static pthread_mutex_t bucket_mu = PTHREAD_MUTEX_INITIALIZER;

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

bool ratelimit_take(const sched_config *c, const char *key_name, double *retry_after_s) {
  double now = mono_s();
  bool ok = false;
  *retry_after_s = 0;
  pthread_mutex_lock(&bucket_mu);
  bucket *b = NULL;
  for (int i = 0; i < n_buckets && !b; i++)
    if (strcmp(buckets[i].name, key_name) == 0) b = &buckets[i];
  if (!b && n_buckets < SCHED_MAX_KEYS + 1) {
    b = &buckets[n_buckets++];
    snprintf(b->name, sizeof b->name, "%s", key_name);
    b->tokens = c->burst;
    b->last_s = now;
  }
  if (b) {
    b->tokens += (now - b->last_s) * c->rate;
    if (b->tokens > c->burst) b->tokens = c->burst;
    b->last_s = now;
    if (b->tokens >= 1) {
      b->tokens -= 1;
      ok = true;
    } else {
      *retry_after_s = (1 - b->tokens) / c->rate;
    }
  }
  pthread_mutex_unlock(&bucket_mu);
  return ok;
}
