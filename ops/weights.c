#include "ops/weights.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/error.h"

typedef struct {
  char *name;
  pa_tensor *tensor;
  bool used;
} entry;

typedef struct {
  char *key, *value;
} meta_kv;

struct pa_weights {
  char *source;
  entry *entries;
  int n, cap;
  meta_kv *meta;
  int n_meta;
  void *map; /* safetensors mapping that borrowed tensors point into */
  bool autocreate;
  uint64_t auto_seed;
  float auto_scale;
  size_t map_len;
};

pa_weights *pa_weights_new(const char *source) {
  pa_weights *w = calloc(1, sizeof *w);
  if (!w || !(w->source = strdup(source ? source : "<memory>"))) {
    free(w);
    pa_fail(PA_ERR_NOMEM, "out of memory");
    return NULL;
  }
  return w;
}

void pa_weights_free(pa_weights *w) {
  if (!w) return;
  for (int i = 0; i < w->n; i++) {
    free(w->entries[i].name);
    pa_tensor_free(w->entries[i].tensor);
  }
  for (int i = 0; i < w->n_meta; i++) {
    free(w->meta[i].key);
    free(w->meta[i].value);
  }
  if (w->map) munmap(w->map, w->map_len);
  free(w->meta);
  free(w->entries);
  free(w->source);
  free(w);
}

const char *pa_weights_source(const pa_weights *w) { return w->source; }
int pa_weights_count(const pa_weights *w) { return w->n; }
const char *pa_weights_name(const pa_weights *w, int i) { return w->entries[i].name; }
const pa_tensor *pa_weights_tensor(const pa_weights *w, int i) { return w->entries[i].tensor; }

static entry *find_entry(const pa_weights *w, const char *name) {
  for (int i = 0; i < w->n; i++)
    if (strcmp(w->entries[i].name, name) == 0) return &w->entries[i];
  return NULL;
}

int pa_weights_add(pa_weights *w, const char *name, pa_tensor *t) {
  if (find_entry(w, name)) {
    pa_tensor_free(t);
    return pa_fail(PA_ERR_FORMAT, "%s: duplicate tensor '%s'", w->source, name);
  }
  if (w->n == w->cap) {
    int cap = w->cap ? 2 * w->cap : 64;
    entry *e = realloc(w->entries, (size_t)cap * sizeof *e);
    if (!e) {
      pa_tensor_free(t);
      return pa_fail(PA_ERR_NOMEM, "out of memory");
    }
    w->entries = e;
    w->cap = cap;
  }
  char *copy = strdup(name);
  if (!copy) {
    pa_tensor_free(t);
    return pa_fail(PA_ERR_NOMEM, "out of memory");
  }
  w->entries[w->n++] = (entry){copy, t, false};
  return PA_OK;
}

const pa_tensor *pa_weights_find(const pa_weights *w, const char *name) {
  entry *e = find_entry(w, name);
  return e ? e->tensor : NULL;
}

bool pa_weights_has(const pa_weights *w, const char *fmt, ...) {
  char name[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  return find_entry(w, name) != NULL;
}

static int lookup_shaped(pa_weights *w, entry **out, int ndim, const int64_t *shape,
                         const char *fmt, va_list ap);

void pa_weights_set_autocreate(pa_weights *w, uint64_t seed, float scale) {
  w->autocreate = true;
  w->auto_seed = seed;
  w->auto_scale = scale;
}

#define SPLITMIX_GAMMA 0x9E3779B97F4A7C15ull

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += SPLITMIX_GAMMA);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Below this many elements a tensor is drawn on one thread (a parallel region costs more). */
#define AUTOCREATE_PARALLEL_MIN (1 << 16)

/* d[i] ~ N(0, scale^2) by Box-Muller from splitmix64 outputs 2i and 2i+1 of `stream` (the k-th
 * output depends only on stream + k * gamma), so every element is drawn on its own and the
 * values never depend on the thread count. `variance`: 1 + |z| instead. */
static void draw_normal(float *d, int64_t n, uint64_t stream, float scale, bool variance) {
#pragma omp parallel for schedule(static) if (n >= AUTOCREATE_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    uint64_t state = stream + 2 * (uint64_t)i * SPLITMIX_GAMMA;
    double u1 = ((splitmix64(&state) >> 11) + 0.5) * 0x1p-53, u2 = (splitmix64(&state) >> 11) * 0x1p-53;
    double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2) * scale;
    d[i] = (float)(variance ? 1.0 + fabs(z) : z);
  }
}

/* A synthetic tensor for `name` (see pa_weights_set_autocreate); the stream depends only on
 * the seed and the name, so adding parameters elsewhere never changes existing values. */
static int autocreate(pa_weights *w, const char *name, int ndim, const int64_t *shape) {
  if (ndim < 0) return pa_fail(PA_ERR_NOTFOUND, "%s: missing tensor '%s'", w->source, name);
  pa_tensor *t = pa_tensor_new(PA_F32, ndim, shape);
  if (!t) return PA_ERR_NOMEM;
  uint64_t stream = w->auto_seed;
  for (const char *c = name; *c; c++) stream = (stream ^ (unsigned char)*c) * 0x100000001B3ull;
  draw_normal(t->data, pa_numel(t), stream, w->auto_scale, strstr(name, "running_var") != NULL);
  return pa_weights_add(w, name, t);
}

static int lookup(pa_weights *w, entry **out, const char *fmt, va_list ap) {
  return lookup_shaped(w, out, -1, NULL, fmt, ap);
}

static int lookup_shaped(pa_weights *w, entry **out, int ndim, const int64_t *shape, const char *fmt, va_list ap) {
  char name[512];
  vsnprintf(name, sizeof name, fmt, ap);
  entry *e = find_entry(w, name);
  if (!e && w->autocreate) {
    int rc = autocreate(w, name, ndim, shape);
    if (rc) return rc;
    e = find_entry(w, name);
  }
  if (!e) return pa_fail(PA_ERR_NOTFOUND, "%s: missing tensor '%s'", w->source, name);
  e->used = true;
  *out = e;
  return PA_OK;
}

static int ensure_f32(pa_weights *w, entry *e) {
  pa_tensor *t = e->tensor;
  if (t->dtype == PA_F32) return PA_OK;
  if (t->dtype != PA_F16 && t->dtype != PA_BF16 && t->dtype != PA_F64)
    return pa_fail(PA_ERR_SHAPE, "%s: tensor '%s' has dtype %s, expected a float type", w->source,
                   e->name, pa_dtype_name(t->dtype));
  pa_tensor *f = pa_tensor_to_f32(t);
  if (!f) return PA_ERR_NOMEM;
  pa_tensor_free(t);
  e->tensor = f;
  return PA_OK;
}

static int check_shape(const pa_weights *w, const entry *e, int ndim, const int64_t *shape) {
  const pa_tensor *t = e->tensor;
  bool ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (ok) return PA_OK;
  pa_tensor want = {.ndim = ndim};
  for (int i = 0; i < ndim; i++) want.shape[i] = shape[i];
  char a[128], b[128];
  return pa_fail(PA_ERR_SHAPE, "%s: tensor '%s': expected shape %s, found %s", w->source, e->name,
                 pa_shape_str(&want, a, sizeof a), pa_shape_str(t, b, sizeof b));
}

int pa_weights_get(pa_weights *w, const pa_tensor **out, int ndim, const int64_t *shape,
                   const char *fmt, ...) {
  entry *e;
  va_list ap;
  va_start(ap, fmt);
  int rc = lookup_shaped(w, &e, ndim, shape, fmt, ap);
  va_end(ap);
  if (rc) return rc;
  if (ndim >= 0 && (rc = check_shape(w, e, ndim, shape))) return rc;
  if ((rc = ensure_f32(w, e))) return rc;
  *out = e->tensor;
  return PA_OK;
}

int pa_weights_get_any(pa_weights *w, const pa_tensor **out, const char *fmt, ...) {
  entry *e;
  va_list ap;
  va_start(ap, fmt);
  int rc = lookup(w, &e, fmt, ap);
  va_end(ap);
  if (rc || (rc = ensure_f32(w, e))) return rc;
  *out = e->tensor;
  return PA_OK;
}

int pa_weights_get_raw(pa_weights *w, const pa_tensor **out, const char *fmt, ...) {
  entry *e;
  va_list ap;
  va_start(ap, fmt);
  int rc = lookup(w, &e, fmt, ap);
  va_end(ap);
  if (rc) return rc;
  *out = e->tensor;
  return PA_OK;
}

void pa_weights_reset_used(pa_weights *w) {
  for (int i = 0; i < w->n; i++) w->entries[i].used = false;
}

const char *pa_weights_first_unused(const pa_weights *w, const char *ignore_prefix) {
  size_t lp = ignore_prefix ? strlen(ignore_prefix) : 0;
  for (int i = 0; i < w->n; i++) {
    if (w->entries[i].used) continue;
    if (lp && strncmp(w->entries[i].name, ignore_prefix, lp) == 0) continue;
    return w->entries[i].name;
  }
  return NULL;
}

int pa_weights_mark_used(pa_weights *w, const char *name) {
  entry *e = find_entry(w, name);
  if (!e) return pa_fail(PA_ERR_NOTFOUND, "%s: missing tensor '%s'", w->source, name);
  e->used = true;
  return PA_OK;
}

const char *pa_weights_metadata(const pa_weights *w, const char *key) {
  for (int i = 0; i < w->n_meta; i++)
    if (strcmp(w->meta[i].key, key) == 0) return w->meta[i].value;
  return NULL;
}

int pa_weights_set_metadata(pa_weights *w, const char *key, const char *value) {
  for (int i = 0; i < w->n_meta; i++)
    if (strcmp(w->meta[i].key, key) == 0) {
      char *v = strdup(value);
      if (!v) return pa_fail(PA_ERR_NOMEM, "out of memory");
      free(w->meta[i].value);
      w->meta[i].value = v;
      return PA_OK;
    }
  meta_kv *m = realloc(w->meta, (size_t)(w->n_meta + 1) * sizeof *m);
  if (!m) return pa_fail(PA_ERR_NOMEM, "out of memory");
  w->meta = m;
  m[w->n_meta].key = strdup(key);
  m[w->n_meta].value = strdup(value);
  if (!m[w->n_meta].key || !m[w->n_meta].value) {
    free(m[w->n_meta].key);
    free(m[w->n_meta].value);
    return pa_fail(PA_ERR_NOMEM, "out of memory");
  }
  w->n_meta++;
  return PA_OK;
}

/* ---- safetensors reader ------------------------------------------------------------------ */

#define ST_MAX_HEADER (100u << 20) /* the format's own limit is 100 MB */

static int st_parse_entry(pa_weights *w, const char *name, json_t *info, const char *data,
                          size_t data_len) {
  json_t *jd = json_object_get(info, "dtype"), *js = json_object_get(info, "shape"),
         *jo = json_object_get(info, "data_offsets");
  if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
    return pa_fail(PA_ERR_FORMAT, "%s: tensor '%s': header entry needs dtype, shape, data_offsets",
                   w->source, name);
  pa_dtype dt;
  if (pa_dtype_from_name(json_string_value(jd), &dt))
    return pa_fail_context(PA_ERR_FORMAT, "%s: tensor '%s': ", w->source, name);
  size_t ndim = json_array_size(js);
  if (ndim > PA_MAX_DIMS)
    return pa_fail(PA_ERR_FORMAT, "%s: tensor '%s': rank %zu > %d", w->source, name, ndim,
                   PA_MAX_DIMS);
  int64_t shape[PA_MAX_DIMS];
  uint64_t numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    json_t *d = json_array_get(js, i);
    if (!json_is_integer(d) || json_integer_value(d) < 0)
      return pa_fail(PA_ERR_FORMAT, "%s: tensor '%s': bad dimension %zu", w->source, name, i);
    shape[i] = json_integer_value(d);
    if (shape[i] && numel > (UINT64_MAX >> 4) / (uint64_t)shape[i])
      return pa_fail(PA_ERR_FORMAT, "%s: tensor '%s': shape overflows", w->source, name);
    numel *= (uint64_t)shape[i];
  }
  json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
  if (!json_is_integer(jb) || !json_is_integer(je))
    return pa_fail(PA_ERR_FORMAT, "%s: tensor '%s': bad data_offsets", w->source, name);
  json_int_t b = json_integer_value(jb), e = json_integer_value(je);
  uint64_t want = numel * pa_dtype_size(dt);
  if (b < 0 || e < b || (uint64_t)e > data_len)
    return pa_fail(PA_ERR_FORMAT,
                   "%s: tensor '%s': data_offsets [%lld, %lld) outside the %zu-byte data section "
                   "(file truncated?)",
                   w->source, name, (long long)b, (long long)e, data_len);
  if ((uint64_t)(e - b) != want)
    return pa_fail(PA_ERR_FORMAT, "%s: tensor '%s': %lld bytes at offset %lld, shape needs %llu",
                   w->source, name, (long long)(e - b), (long long)b, (unsigned long long)want);
  const char *src = data + b;
  pa_tensor *t;
  if (((uintptr_t)src % pa_dtype_size(dt)) == 0) {
    t = pa_tensor_wrap(dt, (int)ndim, shape, (void *)src);
  } else { /* misaligned (unpadded header): copy so element access stays aligned */
    t = pa_tensor_new(dt, (int)ndim, shape);
    if (t) memcpy(t->data, src, want);
  }
  if (!t) return PA_ERR_NOMEM;
  return pa_weights_add(w, name, t);
}

static int st_parse_header(pa_weights *w, const char *hdr, size_t hlen, const char *data,
                           size_t data_len) {
  json_error_t jerr;
  json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return pa_fail(PA_ERR_FORMAT, "%s: safetensors header is not valid JSON (%s at byte %d)", w->source,
                   jerr.text, jerr.position);
  if (!json_is_object(root)) {
    json_decref(root);
    return pa_fail(PA_ERR_FORMAT, "%s: safetensors header must be a JSON object", w->source);
  }
  int rc = PA_OK;
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) {
      const char *mk;
      json_t *mv;
      json_object_foreach(val, mk, mv) {
        if (json_is_string(mv) && (rc = pa_weights_set_metadata(w, mk, json_string_value(mv))))
          goto done;
      }
      continue;
    }
    if ((rc = st_parse_entry(w, key, val, data, data_len))) goto done;
  }
done:
  json_decref(root);
  return rc;
}

/* The whole file in memory: u64 header length, JSON header, data section. */
static int st_parse(pa_weights *w, const char *base, size_t len) {
  uint64_t hlen;
  memcpy(&hlen, base, 8); /* little-endian hosts only (x86-64, aarch64) */
  if (hlen > ST_MAX_HEADER || hlen > len - 8)
    return pa_fail(PA_ERR_FORMAT, "%s: header length %llu exceeds the file (%zu bytes)", w->source,
                   (unsigned long long)hlen, len);
  return st_parse_header(w, base + 8, hlen, base + 8 + hlen, len - 8 - hlen);
}

int pa_safetensors_open_memory(const void *data, size_t len, const char *source, pa_weights **out) {
  pa_weights *w = pa_weights_new(source);
  if (!w) return PA_ERR_NOMEM;
  int rc = len < 8 ? pa_fail(PA_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", source, len)
                   : st_parse(w, data, len);
  if (rc) {
    pa_weights_free(w);
    return rc;
  }
  *out = w;
  return PA_OK;
}

int pa_safetensors_open(const char *path, pa_weights **out) {
  int rc, fd = -1;
  pa_weights *w = pa_weights_new(path);
  if (!w) return PA_ERR_NOMEM;
  fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    rc = pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
    goto fail;
  }
  size_t len = (size_t)st.st_size;
  if (len < 8) {
    rc = pa_fail(PA_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", path, len);
    goto fail;
  }
  void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) {
    rc = pa_fail(PA_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    goto fail;
  }
  w->map = map;
  w->map_len = len;
  if ((rc = st_parse(w, map, len))) goto fail;
  close(fd);
  *out = w;
  return PA_OK;
fail:
  if (fd >= 0) close(fd);
  pa_weights_free(w);
  return rc;
}

int pa_weights_open(const char *path, pa_weights **out) {
  unsigned char magic[4] = {0};
  FILE *f = fopen(path, "rb");
  if (!f) return pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
  size_t got = fread(magic, 1, 4, f);
  fclose(f);
  if (got == 4 && memcmp(magic, "PK\3\4", 4) == 0) {
    pa_weights *w = pa_weights_new(path);
    if (!w) return PA_ERR_NOMEM;
    int rc = pa_torch_load(path, w);
    if (rc) {
      pa_weights_free(w);
      return rc;
    }
    *out = w;
    return PA_OK;
  }
  return pa_safetensors_open(path, out);
}

/* ---- safetensors writer ------------------------------------------------------------------ */

static int write_all(FILE *f, const void *p, size_t n, const char *path) {
  if (n && fwrite(p, 1, n, f) != n) return pa_fail(PA_ERR_IO, "%s: write failed", path);
  return PA_OK;
}

int pa_safetensors_write(const char *path, const pa_named_tensor *items, int n,
                         const pa_weights *metadata_from) {
  int rc = PA_OK;
  FILE *f = NULL;
  char *hdr = NULL;
  json_t *root = json_object();
  if (!root) return pa_fail(PA_ERR_NOMEM, "out of memory");
  if (metadata_from && metadata_from->n_meta) {
    json_t *m = json_object();
    for (int i = 0; i < metadata_from->n_meta; i++)
      json_object_set_new(m, metadata_from->meta[i].key, json_string(metadata_from->meta[i].value));
    json_object_set_new(root, "__metadata__", m);
  }
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    const pa_tensor *t = items[i].tensor;
    json_t *shape = json_array();
    for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
    json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", pa_dtype_name(t->dtype), "shape", shape,
                          "data_offsets", (json_int_t)off, (json_int_t)(off + pa_nbytes(t)));
    if (!e || json_object_set_new(root, items[i].name, e)) {
      rc = pa_fail(PA_ERR_NOMEM, "%s: cannot build header", path);
      goto fail;
    }
    off += pa_nbytes(t);
  }
  hdr = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
  if (!hdr) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  size_t hlen = strlen(hdr), padded = (hlen + 7) / 8 * 8;
  f = fopen(path, "wb");
  if (!f) {
    rc = pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
    goto fail;
  }
  uint64_t h64 = padded;
  PA_TRY(write_all(f, &h64, 8, path));
  PA_TRY(write_all(f, hdr, hlen, path));
  PA_TRY(write_all(f, "        ", padded - hlen, path));
  for (int i = 0; i < n; i++) PA_TRY(write_all(f, items[i].tensor->data, pa_nbytes(items[i].tensor), path));
  if (fclose(f) != 0) {
    f = NULL;
    rc = pa_fail(PA_ERR_IO, "%s: close failed", path);
    goto fail;
  }
  f = NULL;
fail:
  if (f) fclose(f);
  free(hdr);
  json_decref(root);
  return rc;
}
