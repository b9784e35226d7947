/* The CUDA backend's memory: a caching allocator over cudaMalloc and the registry of
 * network parameters with their bf16 GEMM copies. See cuda_backend.h for the policy. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_ctx.h"

/* ---- size classes ------------------------------------------------------------------------- */

/* 512 bytes minimum, then 8 classes per power of two: at most 12.5% slack, and blocks of a
 * repeated forward map to the same classes, so the second forward allocates nothing. */
static size_t size_class(size_t n) {
  if (n <= 512) return 512;
  size_t p = 1;
  while (p < n) p <<= 1;
  size_t step = p / 16 < 512 ? 512 : p / 16;
  return (n + step - 1) / step * step;
}

/* ---- live blocks: pointer -> size, open addressing ---------------------------------------- */

#define TOMB ((void *)1)

static size_t hash_ptr(const void *p, size_t cap) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (size_t)x & (cap - 1);
}

static int live_grow(cuda_ctx *c) {
  size_t cap = c->live_cap ? c->live_cap * 2 : 1024;
  cuda_blk *t = calloc(cap, sizeof *t);
  if (!t) return pa_fail(PA_ERR_NOMEM, "cuda: out of host memory (allocator table)");
  for (size_t i = 0; i < c->live_cap; i++) {
    void *p = c->live[i].ptr;
    if (!p || p == TOMB) continue;
    size_t h = hash_ptr(p, cap);
    while (t[h].ptr) h = (h + 1) & (cap - 1);
    t[h] = c->live[i];
  }
  free(c->live);
  c->live = t;
  c->live_cap = cap;
  c->live_used = c->live_n;
  return PA_OK;
}

static int live_put(cuda_ctx *c, void *p, size_t size) {
  if ((c->live_used + 1) * 2 > c->live_cap) {
    int rc = live_grow(c);
    if (rc) return rc;
  }
  size_t h = hash_ptr(p, c->live_cap);
  while (c->live[h].ptr && c->live[h].ptr != TOMB) h = (h + 1) & (c->live_cap - 1);
  if (!c->live[h].ptr) c->live_used++;
  c->live[h] = (cuda_blk){p, size};
  c->live_n++;
  return PA_OK;
}

/* Removes p; returns its size, 0 when p is not a live block. */
static size_t live_take(cuda_ctx *c, void *p) {
  if (!c->live_cap) return 0;
  size_t h = hash_ptr(p, c->live_cap);
  while (c->live[h].ptr) {
    if (c->live[h].ptr == p) {
      size_t s = c->live[h].size;
      c->live[h].ptr = TOMB;
      c->live_n--;
      return s;
    }
    h = (h + 1) & (c->live_cap - 1);
  }
  return 0;
}

/* ---- the cache ---------------------------------------------------------------------------- */

static void trim_cache(cuda_ctx *c) {
  for (int i = 0; i < c->nfree; i++) cudaFree(c->free_list[i].ptr); /* best effort on OOM */
  c->nfree = 0;
  c->cached_bytes = 0;
}

/* A device block of at least n bytes (caller holds the lock). */
static void *blk_get(cuda_ctx *c, size_t n) {
  size_t cls = size_class(n);
  void *p = NULL;
  for (int i = c->nfree - 1; i >= 0; i--)
    if (c->free_list[i].size == cls) {
      p = c->free_list[i].ptr;
      c->free_list[i] = c->free_list[--c->nfree];
      c->cached_bytes -= cls;
      break;
    }
  if (!p) {
    cudaError_t e = cudaMalloc(&p, cls);
    if (e != cudaSuccess) {
      cudaGetLastError(); /* clear the sticky-free error before retrying */
      trim_cache(c);
      e = cudaMalloc(&p, cls);
    }
    if (e != cudaSuccess) {
      pa_fail(PA_ERR_NOMEM, "cuda: cudaMalloc(%zu) failed: %s (live %zu MiB)", cls, cudaGetErrorString(e),
              c->live_bytes >> 20);
      return NULL;
    }
  }
  if (live_put(c, p, cls)) {
    cudaFree(p);
    return NULL;
  }
  c->live_bytes += cls;
  return p;
}

static void blk_put(cuda_ctx *c, void *p) {
  size_t cls = live_take(c, p);
  if (!cls) return; /* not ours (a view): nothing to do */
  c->live_bytes -= cls;
  if (c->nfree == c->free_cap) {
    int cap = c->free_cap ? 2 * c->free_cap : 256;
    cuda_blk *f = realloc(c->free_list, (size_t)cap * sizeof *f);
    if (!f) {
      cudaFree(p); /* cannot cache it: give it back */
      return;
    }
    c->free_list = f;
    c->free_cap = cap;
  }
  /* Stream order makes reuse safe without a sync: every later user of this block is
   * enqueued on the same stream after the kernels that still read it. */
  c->free_list[c->nfree++] = (cuda_blk){p, cls};
  c->cached_bytes += cls;
}

void *cuda_scratch(cuda_ctx *c, size_t n) {
  pthread_mutex_lock(&c->mu);
  void *p = blk_get(c, n);
  pthread_mutex_unlock(&c->mu);
  return p;
}

void cuda_scratch_free(cuda_ctx *c, void *p) {
  if (!p) return;
  pthread_mutex_lock(&c->mu);
  blk_put(c, p);
  pthread_mutex_unlock(&c->mu);
}

void cuda_mem_destroy(cuda_ctx *c) {
  trim_cache(c);
  for (size_t i = 0; i < c->live_cap; i++)
    if (c->live[i].ptr && c->live[i].ptr != TOMB) cudaFree(c->live[i].ptr);
  free(c->live);
  free(c->free_list);
  free(c->params);
  c->live = NULL;
  c->free_list = NULL;
  c->params = NULL;
}

/* ---- tensors ------------------------------------------------------------------------------ */

pa_tensor *cuda_alloc(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape) {
  cuda_ctx *c = be->ctx;
  pa_tensor *t = pa_tensor_wrap(dt, ndim, shape, NULL);
  if (!t) return NULL;
  size_t n = pa_nbytes(t);
  t->data = cuda_scratch(c, n ? n : 1);
  if (!t->data) {
    pa_tensor_free(t);
    return NULL;
  }
  t->device = PA_CUDA;
  t->owns_data = true;
  /* zero-filled like the CPU backend's pa_tensor_new (no caller may rely on garbage) */
  cudaError_t e = cudaMemsetAsync(t->data, 0, n, c->stream);
  if (e != cudaSuccess) {
    pa_fail(PA_ERR_DEVICE, "%s:%d: cudaMemsetAsync: %s", __FILE__, __LINE__, cudaGetErrorString(e));
    cuda_release(be, t);
    return NULL;
  }
  return t;
}

/* ---- parameters: F32 copy + bf16 copy, looked up by address range ------------------------- */

/* Index of the first entry with f32 > p (entries sorted by f32). */
static int param_upper(const cuda_ctx *c, const void *p) {
  int lo = 0, hi = c->nparams;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if ((const char *)c->params[mid].f32 <= (const char *)p)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

const uint16_t *cuda_param_bf16(cuda_ctx *c, const void *f32) {
  pthread_mutex_lock(&c->mu);
  const uint16_t *r = NULL;
  int i = param_upper(c, f32) - 1;
  if (i >= 0) {
    const cuda_param *p = &c->params[i];
    size_t off = (size_t)((const char *)f32 - (const char *)p->f32);
    if (p->bf16 && off < p->bytes && off % 4 == 0) r = p->bf16 + off / 4;
  }
  pthread_mutex_unlock(&c->mu);
  return r;
}

static int param_add(cuda_ctx *c, cuda_param p) {
  pthread_mutex_lock(&c->mu);
  int rc = PA_OK;
  if (c->nparams == c->params_cap) {
    int cap = c->params_cap ? 2 * c->params_cap : 256;
    cuda_param *n = realloc(c->params, (size_t)cap * sizeof *n);
    if (!n) {
      rc = pa_fail(PA_ERR_NOMEM, "cuda: out of host memory (parameter table)");
      goto out;
    }
    c->params = n;
    c->params_cap = cap;
  }
  int at = param_upper(c, p.f32);
  memmove(c->params + at + 1, c->params + at, (size_t)(c->nparams - at) * sizeof *c->params);
  c->params[at] = p;
  c->nparams++;
out:
  pthread_mutex_unlock(&c->mu);
  return rc;
}

/* Drops the parameter whose F32 copy starts at p, releasing its bf16 copy. */
static void param_drop(cuda_ctx *c, const void *p) {
  int i = param_upper(c, p) - 1;
  if (i < 0 || c->params[i].f32 != p) return;
  if (c->params[i].bf16) blk_put(c, (void *)c->params[i].bf16);
  memmove(c->params + i, c->params + i + 1, (size_t)(c->nparams - i - 1) * sizeof *c->params);
  c->nparams--;
}

void cuda_release(pa_backend *be, pa_tensor *t) {
  cuda_ctx *c = be->ctx;
  if (!t) return;
  if (t->owns_data && t->data) {
    pthread_mutex_lock(&c->mu);
    param_drop(c, t->data);
    blk_put(c, t->data);
    pthread_mutex_unlock(&c->mu);
  }
  t->owns_data = false; /* the header is host memory; the data went back to the cache */
  pa_tensor_free(t);
}

pa_tensor *cuda_upload_param(pa_backend *be, const pa_tensor *host) {
  cuda_ctx *c = be->ctx;
  pa_tensor *f32 = NULL, *t = NULL;
  const pa_tensor *src = host;
  if (host->dtype != PA_F32) {
    if (!(f32 = pa_tensor_to_f32(host))) return NULL;
    src = f32;
  }
  if (!(t = cuda_alloc(be, PA_F32, src->ndim, src->shape)) || be->from_host(be, t, src)) goto fail;
  cuda_param p = {t->data, pa_nbytes(t), NULL};
  /* rank >= 2: a GEMM operand (linear, conv, embedding table): keep a bf16 copy beside it */
  if (src->ndim >= 2 && !c->fp32_gemm && pa_numel(t) > 0) {
    uint16_t *b = cuda_scratch(c, (size_t)pa_numel(t) * 2);
    if (!b) goto fail;
    cudaError_t e = pa_k_f32_to_bf16(c->stream, b, t->data, pa_numel(t));
    if (e != cudaSuccess) {
      cuda_scratch_free(c, b);
      pa_fail(PA_ERR_DEVICE, "%s:%d: bf16 parameter copy: %s", __FILE__, __LINE__, cudaGetErrorString(e));
      goto fail;
    }
    p.bf16 = b;
  }
  if (param_add(c, p)) {
    cuda_scratch_free(c, (void *)p.bf16);
    goto fail;
  }
  pa_tensor_free(f32);
  return t;
fail:
  pa_tensor_free(f32);
  cuda_release(be, t);
  return NULL;
}

void pa_cuda_memory(pa_backend *be, size_t *live, size_t *cached) {
  cuda_ctx *c = be->ctx;
  if (live) *live = c ? c->live_bytes : 0;
  if (cached) *cached = c ? c->cached_bytes : 0;
}
