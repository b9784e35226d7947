/* The text-embedding cache shared by every worker (a pa_embed_cache for the pipeline).
 *
 * Key: SHA-256 of (encoder id, exact token ids) -> Redis string `paella:emb:{hex}` with a TTL.
 * Value: a small header (magic, encoder id, shape) and the float32 values, exactly as the
 * encoder produced them, so a hit draws the same image as a miss (a ByT5-XL prompt costs
 * L x 2560 x 4 bytes). An in-process LRU, bounded in entries and bytes, sits in
 * front, so a worker's repeated prompts never touch the network. Redis failures are misses:
 * the cache can make a job faster, never make it fail. */
#ifndef PAELLA_WORKER_CACHE_H
#define PAELLA_WORKER_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "model/pipeline.h"

typedef struct pa_emb_cache pa_emb_cache;

typedef struct {
  const char *redis_url;   /* redis://HOST:PORT/DB (query ignored); NULL: in-process LRU only */
  int ttl_s;               /* Redis TTL (default 86400) */
  size_t max_entries;      /* LRU bound (default 256) */
  size_t max_bytes;        /* LRU bound on value bytes (default 256 MiB) */
} pa_emb_cache_options;

typedef struct {
  uint64_t hits, misses;   /* lookups answered / not answered */
  uint64_t local_hits;     /* of the hits, answered by the in-process LRU */
  uint64_t stores, errors; /* values written; Redis failures (counted as misses) */
  size_t lru_entries, lru_bytes;
} pa_emb_cache_stats;

int pa_emb_cache_open(const pa_emb_cache_options *o, pa_emb_cache **out);
void pa_emb_cache_free(pa_emb_cache *c);
/* The hook to pass to pa_pipeline_set_cache (valid while the cache lives). */
const pa_embed_cache *pa_emb_cache_hook(pa_emb_cache *c);
/* Thread-safe (the metrics endpoint reads it while the worker runs). */
void pa_emb_cache_get_stats(pa_emb_cache *c, pa_emb_cache_stats *s);

/* The Redis key of (encoder, ids): "paella:emb:" + 64 hex digits. */
void pa_emb_cache_key(const char *encoder, const int64_t *ids, int n, char out[76]);

#endif
