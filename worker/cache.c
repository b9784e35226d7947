/* The shared text-embedding cache (see cache.h). */
#include "worker/cache.h"

#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops/tensor.h"
#include "worker/log.h"
#include "worker/redis_keys.h"
#include "worker/redis_url.h"

#define EMB_MAGIC "PAEM"
/* 2: float32 values (1 held bf16, whose rounding made a hit draw a different image) */
#define EMB_VERSION 2
#define LRU_BUCKETS 1024
#define REDIS_RETRY_S 5 /* after a Redis failure, skip it this long instead of timing out per lookup */

typedef struct lru_entry {
  uint8_t sha[32];
  uint8_t *blob; /* the serialized value, as stored in Redis */
  size_t len;
  struct lru_entry *prev, *next; /* recency list: head = most recent */
  struct lru_entry *chain;       /* hash bucket */
} lru_entry;

struct pa_emb_cache {
  pa_embed_cache hook;
  pthread_mutex_t mu;
  pa_redis_url url; /* host, credentials, db: read like the queue URL */
  bool use_redis;
  int ttl_s;
  redisContext *rc;
  time_t redis_down_until;
  size_t max_entries, max_bytes;
  lru_entry *buckets[LRU_BUCKETS], *head, *tail;
  pa_emb_cache_stats st;
};

/* ---- keys and values ---------------------------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* SHA-256 of encoder id, a NUL, then each id as int64 little-endian: the bytes, not the
 * host's layout, define the key, so workers on any machine share entries. */
static int key_sha(const char *encoder, const int64_t *ids, int n, uint8_t sha[32]) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  uint8_t buf[8 * 64];
  int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
           EVP_DigestUpdate(ctx, encoder, strlen(encoder) + 1);
  for (int i = 0; ok && i < n;) {
    int k = 0;
    for (; k < 64 && i < n; k++, i++) put_le(buf + 8 * k, (uint64_t)ids[i], 8);
    ok = EVP_DigestUpdate(ctx, buf, (size_t)k * 8);
  }
  unsigned len = 0;
  ok = ok && EVP_DigestFinal_ex(ctx, sha, &len) && len == 32;
  EVP_MD_CTX_free(ctx);
  return ok ? PA_OK : pa_fail(PA_ERR_INVALID, "sha256 failed");
}

static void hex32(const uint8_t sha[32], char *out) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = digits[sha[i] >> 4];
    out[2 * i + 1] = digits[sha[i] & 15];
  }
  out[64] = 0;
}

/* PA_KEY_EMB_PREFIX + 64 hex digits of the digest (76 bytes with the NUL). */
static void emb_key_of_digest(const uint8_t sha[32], char out[76]) {
  _Static_assert(sizeof PA_KEY_EMB_PREFIX - 1 + 64 + 1 == 76, "the embedding key is 76 bytes");
  memcpy(out, PA_KEY_EMB_PREFIX, sizeof PA_KEY_EMB_PREFIX - 1);
  hex32(sha, out + sizeof PA_KEY_EMB_PREFIX - 1);
}

void pa_emb_cache_key(const char *encoder, const int64_t *ids, int n, char out[76]) {
  uint8_t sha[32] = {0};
  key_sha(encoder, ids, n, sha);
  emb_key_of_digest(sha, out);
}

/* "PAEM" | version u8 | ndim u8 | encoder length u16 | encoder | shape int64[ndim] | f32 LE[numel] */
static uint8_t *serialize(const char *encoder, const pa_tensor *t, size_t *len) {
  size_t elen = strlen(encoder), n = (size_t)pa_numel(t);
  if (t->dtype != PA_F32 || t->device != PA_HOST || elen > 0xffff) return NULL;
  *len = 8 + elen + 8 * (size_t)t->ndim + 4 * n;
  uint8_t *b = malloc(*len), *p = b;
  if (!b) return NULL;
  memcpy(p, EMB_MAGIC, 4);
  p[4] = EMB_VERSION;
  p[5] = (uint8_t)t->ndim;
  put_le(p + 6, elen, 2);
  memcpy(p + 8, encoder, elen);
  p += 8 + elen;
  for (int d = 0; d < t->ndim; d++, p += 8) put_le(p, (uint64_t)t->shape[d], 8);
  const float *x = t->data;
  for (size_t i = 0; i < n; i++, p += 4) {
    uint32_t bits;
    memcpy(&bits, &x[i], 4);
    put_le(p, bits, 4);
  }
  return b;
}

/* The inverse; NULL when the bytes are not a value of this encoder (a corrupt or foreign
 * entry reads as a miss). */
static pa_tensor *deserialize(const char *encoder, const uint8_t *b, size_t len) {
  size_t elen = strlen(encoder);
  if (len < 8 || memcmp(b, EMB_MAGIC, 4) || b[4] != EMB_VERSION || b[5] < 1 || b[5] > PA_MAX_DIMS) return NULL;
  int ndim = b[5];
  if (get_le(b + 6, 2) != elen || len < 8 + elen + 8 * (size_t)ndim || memcmp(b + 8, encoder, elen)) return NULL;
  const uint8_t *p = b + 8 + elen;
  int64_t shape[PA_MAX_DIMS];
  uint64_t n = 1;
  for (int d = 0; d < ndim; d++, p += 8) {
    shape[d] = (int64_t)get_le(p, 8);
    if (shape[d] < 1 || shape[d] > (1 << 24) || (n *= (uint64_t)shape[d]) > (1u << 28)) return NULL;
  }
  if ((size_t)(b + len - p) != 4 * n) return NULL;
  pa_tensor *t = pa_tensor_new(PA_F32, ndim, shape);
  if (!t) return NULL;
  float *x = t->data;
  for (uint64_t i = 0; i < n; i++, p += 4) {
    uint32_t bits = (uint32_t)get_le(p, 4);
    memcpy(&x[i], &bits, 4);
  }
  return t;
}

/* ---- the in-process LRU (caller holds mu) -------------------------------------------- */

static size_t bucket_of(const uint8_t sha[32]) { return (size_t)get_le(sha, 4) % LRU_BUCKETS; }

static void list_unlink(pa_emb_cache *c, lru_entry *e) {
  if (e->prev) e->prev->next = e->next;
  else c->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void list_push_front(pa_emb_cache *c, lru_entry *e) {
  e->next = c->head;
  if (c->head) c->head->prev = e;
  c->head = e;
  if (!c->tail) c->tail = e;
}

static lru_entry *lru_find(pa_emb_cache *c, const uint8_t sha[32]) {
  for (lru_entry *e = c->buckets[bucket_of(sha)]; e; e = e->chain)
    if (!memcmp(e->sha, sha, 32)) return e;
  return NULL;
}

static void lru_remove(pa_emb_cache *c, lru_entry *e) {
  lru_entry **pp = &c->buckets[bucket_of(e->sha)];
  while (*pp != e) pp = &(*pp)->chain;
  *pp = e->chain;
  list_unlink(c, e);
  c->st.lru_entries--;
  c->st.lru_bytes -= e->len;
  free(e->blob);
  free(e);
}

/* Takes ownership of blob (freed when it does not fit at all). */
static void lru_insert(pa_emb_cache *c, const uint8_t sha[32], uint8_t *blob, size_t len) {
  lru_entry *old = lru_find(c, sha);
  if (old) lru_remove(c, old);
  if (len > c->max_bytes || !c->max_entries) {
    free(blob);
    return;
  }
  while (c->tail && (c->st.lru_entries + 1 > c->max_entries || c->st.lru_bytes + len > c->max_bytes))
    lru_remove(c, c->tail);
  lru_entry *e = calloc(1, sizeof *e);
  if (!e) {
    free(blob);
    return;
  }
  memcpy(e->sha, sha, 32);
  e->blob = blob;
  e->len = len;
  size_t b = bucket_of(sha);
  e->chain = c->buckets[b];
  c->buckets[b] = e;
  list_push_front(c, e);
  c->st.lru_entries++;
  c->st.lru_bytes += len;
}

/* ---- Redis (caller holds mu) ---------------------------------------------------------- */

static void redis_down(pa_emb_cache *c, const char *what) {
  pa_log(PA_LOG_WARN, NULL, json_pack("{s:s}", "error", c->rc && c->rc->errstr[0] ? c->rc->errstr : what),
         "embedding cache: Redis unavailable, continuing without it for %d s", REDIS_RETRY_S);
  pa_redis_free(c->rc);
  c->rc = NULL;
  c->redis_down_until = time(NULL) + REDIS_RETRY_S;
  c->st.errors++;
}

static bool redis_ready(pa_emb_cache *c) {
  if (!c->use_redis) return false;
  if (c->rc) return true;
  if (time(NULL) < c->redis_down_until) return false;
  if (pa_redis_connect(&c->url, 1000, 2000, &c->rc)) {
    redis_down(c, pa_errmsg());
    return false;
  }
  return true;
}

/* The value bytes (malloc'd) or NULL on a miss. */
static uint8_t *redis_get(pa_emb_cache *c, const char *key, size_t *len) {
  if (!redis_ready(c)) return NULL;
  redisReply *r = redisCommand(c->rc, "GET %s", key);
  uint8_t *out = NULL;
  if (!r || r->type == REDIS_REPLY_ERROR) {
    freeReplyObject(r);
    redis_down(c, "GET failed");
    return NULL;
  }
  if (r->type == REDIS_REPLY_STRING && r->len > 0 && (out = malloc(r->len))) {
    memcpy(out, r->str, r->len);
    *len = r->len;
  }
  freeReplyObject(r);
  return out;
}

static void redis_set(pa_emb_cache *c, const char *key, const uint8_t *blob, size_t len) {
  if (!redis_ready(c)) return;
  redisReply *r = redisCommand(c->rc, "SET %s %b EX %d", key, blob, len, c->ttl_s);
  if (!r || r->type == REDIS_REPLY_ERROR) {
    freeReplyObject(r);
    redis_down(c, "SET failed");
    return;
  }
  freeReplyObject(r);
}

/* ---- the hook ------------------------------------------------------------------------ */

static bool cache_lookup(void *user, const char *encoder, const int64_t *ids, int n, pa_tensor **out) {
  pa_emb_cache *c = user;
  uint8_t sha[32];
  char key[76];
  *out = NULL;
  if (key_sha(encoder, ids, n, sha)) return false;
  emb_key_of_digest(sha, key);
  pthread_mutex_lock(&c->mu);
  lru_entry *e = lru_find(c, sha);
  if (e) {
    list_unlink(c, e);
    list_push_front(c, e);
    *out = deserialize(encoder, e->blob, e->len);
    if (*out) c->st.local_hits++;
  }
  if (!*out) {
    size_t len = 0;
    uint8_t *blob = redis_get(c, key, &len);
    if (blob && (*out = deserialize(encoder, blob, len))) lru_insert(c, sha, blob, len);
    else free(blob);
  }
  if (*out) c->st.hits++;
  else c->st.misses++;
  pthread_mutex_unlock(&c->mu);
  return *out != NULL;
}

static void cache_store(void *user, const char *encoder, const int64_t *ids, int n, const pa_tensor *value) {
  pa_emb_cache *c = user;
  uint8_t sha[32];
  char key[76];
  size_t len = 0;
  if (key_sha(encoder, ids, n, sha)) return;
  emb_key_of_digest(sha, key);
  uint8_t *blob = serialize(encoder, value, &len);
  if (!blob) return;
  pthread_mutex_lock(&c->mu);
  redis_set(c, key, blob, len);
  c->st.stores++;
  lru_insert(c, sha, blob, len);
  pthread_mutex_unlock(&c->mu);
}

/* ---- lifecycle ----------------------------------------------------------------------- */

int pa_emb_cache_open(const pa_emb_cache_options *o, pa_emb_cache **out) {
  *out = NULL;
  pa_emb_cache *c = calloc(1, sizeof *c);
  if (!c) return pa_fail(PA_ERR_NOMEM, "out of memory");
  if (o && o->redis_url && o->redis_url[0]) {
    int rc = pa_redis_url_parse(o->redis_url, &c->url);
    if (rc) {
      free(c);
      return rc;
    }
    c->use_redis = true;
  }
  c->ttl_s = o && o->ttl_s > 0 ? o->ttl_s : 86400;
  c->max_entries = o && o->max_entries ? o->max_entries : 256;
  c->max_bytes = o && o->max_bytes ? o->max_bytes : (size_t)256 << 20;
  pthread_mutex_init(&c->mu, NULL);
  c->hook = (pa_embed_cache){.user = c, .lookup = cache_lookup, .store = cache_store};
  *out = c;
  return PA_OK;
}

void pa_emb_cache_free(pa_emb_cache *c) {
  if (!c) return;
  while (c->tail) lru_remove(c, c->tail);
  pa_redis_free(c->rc);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

const pa_embed_cache *pa_emb_cache_hook(pa_emb_cache *c) { return &c->hook; }

void pa_emb_cache_get_stats(pa_emb_cache *c, pa_emb_cache_stats *s) {
  pthread_mutex_lock(&c->mu);
  *s = c->st;
  pthread_mutex_unlock(&c->mu);
}
