/* A named collection of tensors read from a weight file: safetensors (memory-mapped) or a
 * PyTorch `torch.save` zip checkpoint (ops/torch_load.c). Networks fetch their parameters by
 * state_dict name with the shape they expect; every mismatch is an error that names the file,
 * the key, the expected and the found shape. */
#ifndef PAELLA_OPS_WEIGHTS_H
#define PAELLA_OPS_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/tensor.h"

typedef struct pa_weights pa_weights;

/* Detects the format from the first bytes (zip "PK\3\4" or safetensors) and loads it. */
int pa_weights_open(const char *path, pa_weights **out);
int pa_safetensors_open(const char *path, pa_weights **out);
/* A safetensors image in memory (e.g. linked into the binary); tensors borrow `data`, which
 * must outlive the weights. `source` names it in error messages. */
int pa_safetensors_open_memory(const void *data, size_t len, const char *source, pa_weights **out);
/* Reads a torch.save zip checkpoint into `w` (tensors under their state_dict names; a nested
 * {"state_dict": {...}} is flattened to its inner keys). Defined in ops/torch_load.c. */
int pa_torch_load(const char *path, pa_weights *w);

pa_weights *pa_weights_new(const char *source); /* source: a name for error messages */
void pa_weights_free(pa_weights *w);
const char *pa_weights_source(const pa_weights *w);

/* Takes ownership of `t`. Fails on a duplicate name. */
int pa_weights_add(pa_weights *w, const char *name, pa_tensor *t);

int pa_weights_count(const pa_weights *w);
const char *pa_weights_name(const pa_weights *w, int i);
const pa_tensor *pa_weights_tensor(const pa_weights *w, int i);
const pa_tensor *pa_weights_find(const pa_weights *w, const char *name);
bool pa_weights_has(const pa_weights *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Fetches `name` (printf-formatted) as an F32 host tensor of exactly the given shape,
 * converting F16/BF16/F64 once in place. ndim = -1 skips the shape check. Marks it used. */
int pa_weights_get(pa_weights *w, const pa_tensor **out, int ndim, const int64_t *shape,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Same, but only the rank is fixed; the caller reads the sizes (config discovery). */
int pa_weights_get_any(pa_weights *w, const pa_tensor **out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Fetches a tensor without conversion (any dtype), marking it used. */
int pa_weights_get_raw(pa_weights *w, const pa_tensor **out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Synthetic weights: from now on a fetch of a missing name creates it with the requested
 * shape and deterministic N(0, scale^2) values drawn from (seed, name) - so a network's own
 * loader builds a randomly initialised model of any configuration (tests, the embedded
 * default model). Names ending in "running_var" get 1 + |x| (a valid variance). */
void pa_weights_set_autocreate(pa_weights *w, uint64_t seed, float scale);

/* Names of tensors never fetched: a checkpoint with unexpected keys is refused by callers. */
void pa_weights_reset_used(pa_weights *w);
const char *pa_weights_first_unused(const pa_weights *w, const char *ignore_prefix);
int pa_weights_mark_used(pa_weights *w, const char *name);

/* safetensors __metadata__ (string -> string); NULL when absent. */
const char *pa_weights_metadata(const pa_weights *w, const char *key);
int pa_weights_set_metadata(pa_weights *w, const char *key, const char *value);

/* Writes tensors (host, any dtype) as a safetensors file; metadata may be NULL. */
typedef struct {
  const char *name;
  const pa_tensor *tensor;
} pa_named_tensor;
int pa_safetensors_write(const char *path, const pa_named_tensor *items, int n,
                         const pa_weights *metadata_from);

#endif
