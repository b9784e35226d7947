/* A planned activation arena: a network's forward allocates the same sequence of
 * intermediates every time it runs at the same shapes. The first pass for a key (e.g. the
 * input's batch and size) records that sequence with ordinary allocations; at its end the
 * arena places every intermediate at an offset of ONE backend buffer, reusing space between
 * intermediates whose lifetimes do not overlap. Later passes with that key hand out views of
 * the buffer: no allocation, no zero-fill, stable addresses (what a CUDA graph replay needs).
 * A pass that departs from its recording (a size differs) falls back to ordinary
 * allocations and the key is planned again. */
#ifndef PAELLA_OPS_ARENA_H
#define PAELLA_OPS_ARENA_H

#include "ops/backend.h"

#define PA_ARENA_MAX_KEY 6
#define PA_ARENA_PLANS 4 /* keys kept at once (least recently planned dropped first) */

typedef struct pa_arena pa_arena;

pa_arena *pa_arena_new(pa_backend *be);
void pa_arena_free(pa_arena *a);
/* Starts a pass; key has nkey <= PA_ARENA_MAX_KEY values. */
int pa_arena_begin(pa_arena *a, const int64_t *key, int nkey);
/* An intermediate of this pass (NULL with the error set on failure). */
pa_tensor *pa_arena_alloc(pa_arena *a, pa_dtype dt, int ndim, const int64_t *shape);
void pa_arena_release(pa_arena *a, pa_tensor *t);
/* Ends the pass: a recording pass becomes a plan (one buffer allocation). */
int pa_arena_end(pa_arena *a);
/* Bytes of the planned buffers (all keys). */
size_t pa_arena_bytes(const pa_arena *a);

#endif
