/* The counting backend (ops/counting.h): every entry forwards to the wrapped backend after
 * adding to the totals. The wrapper's ctx holds the inner backend and the counters. */
#include "ops/counting.h"

#include <stdlib.h>

#include "ops/error.h"

typedef struct {
  pa_backend *inner;
  pa_op_counts n;
} counting_ctx;

#define CTX(be) ((counting_ctx *)(be)->ctx)
#define INNER(be) (CTX(be)->inner)

pa_op_counts pa_op_counts_diff(const pa_op_counts *a, const pa_op_counts *b) {
  return (pa_op_counts){
      .gemm_calls = a->gemm_calls - b->gemm_calls,
      .gemm_flops = a->gemm_flops - b->gemm_flops,
      .other_ops = a->other_ops - b->other_ops,
      .to_host = a->to_host - b->to_host,
      .from_host = a->from_host - b->from_host,
      .to_host_bytes = a->to_host_bytes - b->to_host_bytes,
      .from_host_bytes = a->from_host_bytes - b->from_host_bytes,
      .allocs = a->allocs - b->allocs,
      .releases = a->releases - b->releases,
      .alloc_bytes = a->alloc_bytes - b->alloc_bytes,
  };
}

static void other(pa_backend *be) { CTX(be)->n.other_ops++; }

static void gemm(pa_backend *be, double m, double n, double k) {
  CTX(be)->n.gemm_calls++;
  CTX(be)->n.gemm_flops += 2.0 * m * n * k;
}

/* ---- memory ------------------------------------------------------------------------------ */

static pa_tensor *c_alloc(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape) {
  pa_tensor *t = INNER(be)->alloc(INNER(be), dt, ndim, shape);
  if (t) {
    CTX(be)->n.allocs++;
    CTX(be)->n.alloc_bytes += (long long)pa_nbytes(t);
  }
  return t;
}

static void c_release(pa_backend *be, pa_tensor *t) {
  CTX(be)->n.releases++;
  INNER(be)->release(INNER(be), t);
}

static int c_to_host(pa_backend *be, pa_tensor *dst, const pa_tensor *src) {
  CTX(be)->n.to_host++;
  CTX(be)->n.to_host_bytes += (long long)pa_nbytes(src);
  return INNER(be)->to_host(INNER(be), dst, src);
}

static int c_from_host(pa_backend *be, pa_tensor *dst, const pa_tensor *src) {
  CTX(be)->n.from_host++;
  CTX(be)->n.from_host_bytes += (long long)pa_nbytes(src);
  return INNER(be)->from_host(INNER(be), dst, src);
}

static int c_sync(pa_backend *be) { return INNER(be)->sync(INNER(be)); }

static pa_tensor *c_upload_param(pa_backend *be, const pa_tensor *host) {
  CTX(be)->n.allocs++;
  CTX(be)->n.alloc_bytes += (long long)pa_nbytes(host);
  CTX(be)->n.from_host++;
  CTX(be)->n.from_host_bytes += (long long)pa_nbytes(host);
  return INNER(be)->upload_param(INNER(be), host);
}

/* ---- GEMMs ------------------------------------------------------------------------------- */

static int c_linear(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                    const pa_tensor *b, pa_act act) {
  gemm(be, (double)pa_rows(x), (double)w->shape[0], (double)w->shape[1]);
  return INNER(be)->linear(INNER(be), y, x, w, b, act);
}

/* w (O, I/groups, kh, kw): a GEMM of (B*Ho*Wo) x O x (I*kh*kw) when groups == 1. */
static int c_conv2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                    const pa_tensor *b, pa_conv_params p) {
  if (p.groups == 1)
    gemm(be, (double)pa_rows(y), (double)w->shape[0], (double)(w->shape[1] * w->shape[2] * w->shape[3]));
  else
    other(be);
  return INNER(be)->conv2d(INNER(be), y, x, w, b, p);
}

/* w (I, O, kh, kw): a GEMM of (B*H*W) x (O*kh*kw) x I. */
static int c_conv_transpose2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                              const pa_tensor *b, pa_conv_params p) {
  gemm(be, (double)pa_rows(x), (double)(w->shape[1] * w->shape[2] * w->shape[3]), (double)w->shape[0]);
  return INNER(be)->conv_transpose2d(INNER(be), y, x, w, b, p);
}

/* ---- everything else: counted as one op and forwarded ------------------------------------ */

static int c_embedding(pa_backend *be, pa_tensor *y, const pa_tensor *ids, const pa_tensor *table) {
  other(be);
  return INNER(be)->embedding(INNER(be), y, ids, table);
}
static int c_layernorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *g,
                       const pa_tensor *b, float eps) {
  other(be);
  return INNER(be)->layernorm(INNER(be), y, x, g, b, eps);
}
static int c_rmsnorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *g, float eps) {
  other(be);
  return INNER(be)->rmsnorm(INNER(be), y, x, g, eps);
}
static int c_activation(pa_backend *be, pa_tensor *y, const pa_tensor *x, pa_act act) {
  other(be);
  return INNER(be)->activation(INNER(be), y, x, act);
}
static int c_add(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, float alpha) {
  other(be);
  return INNER(be)->add(INNER(be), y, a, b, alpha);
}
static int c_mul(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b) {
  other(be);
  return INNER(be)->mul(INNER(be), y, a, b);
}
static int c_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, float s, float t) {
  other(be);
  return INNER(be)->affine(INNER(be), y, x, s, t);
}
static int c_modulate(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *am) {
  other(be);
  return INNER(be)->modulate(INNER(be), y, x, am);
}
static int c_channel_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *s,
                            const pa_tensor *t) {
  other(be);
  return INNER(be)->channel_affine(INNER(be), y, x, s, t);
}
static int c_grn(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *g, const pa_tensor *b) {
  other(be);
  return INNER(be)->grn(INNER(be), y, x, g, b);
}
static int c_pixel_unshuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  other(be);
  return INNER(be)->pixel_unshuffle(INNER(be), y, x, p);
}
static int c_pixel_shuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  other(be);
  return INNER(be)->pixel_shuffle(INNER(be), y, x, p);
}
static int c_concat(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, int axis) {
  other(be);
  return INNER(be)->concat(INNER(be), y, a, b, axis);
}
static int c_attention(pa_backend *be, pa_tensor *y, const pa_tensor *q, const pa_tensor *k,
                       const pa_tensor *v, const pa_attn_params *p) {
  other(be);
  return INNER(be)->attention(INNER(be), y, q, k, v, p);
}
static int c_vq_nearest(pa_backend *be, pa_tensor *idx, const pa_tensor *z, const pa_tensor *cb) {
  other(be);
  return INNER(be)->vq_nearest(INNER(be), idx, z, cb);
}
static int c_copy(pa_backend *be, pa_tensor *y, const pa_tensor *x) {
  other(be);
  return INNER(be)->copy(INNER(be), y, x);
}
static int c_diffuzz_step(pa_backend *be, pa_tensor *x, const pa_tensor *ec, const pa_tensor *eu, const pa_tensor *z,
                          const pa_diffuzz_params *p) {
  other(be);
  return INNER(be)->diffuzz_step(INNER(be), x, ec, eu, z, p);
}
static int c_sample(pa_backend *be, const pa_sample_params *p) {
  other(be);
  return INNER(be)->sample(INNER(be), p);
}

pa_backend *pa_counting_backend(pa_backend *inner) {
  pa_backend *be = calloc(1, sizeof *be);
  counting_ctx *ctx = calloc(1, sizeof *ctx);
  if (!be || !ctx) {
    free(be);
    free(ctx);
    pa_fail(PA_ERR_NOMEM, "counting backend: out of memory");
    return NULL;
  }
  ctx->inner = inner;
  *be = (pa_backend){
      .name = inner->name, .device = inner->device, .ctx = ctx,
      .alloc = c_alloc, .release = c_release, .to_host = c_to_host, .from_host = c_from_host,
      .sync = c_sync, .linear = c_linear, .embedding = c_embedding, .layernorm = c_layernorm,
      .rmsnorm = c_rmsnorm, .activation = c_activation, .add = c_add, .mul = c_mul,
      .affine = c_affine, .modulate = c_modulate, .channel_affine = c_channel_affine, .grn = c_grn,
      .conv2d = c_conv2d, .conv_transpose2d = c_conv_transpose2d, .pixel_unshuffle = c_pixel_unshuffle,
      .pixel_shuffle = c_pixel_shuffle, .concat = c_concat, .attention = c_attention,
      .vq_nearest = c_vq_nearest, .copy = c_copy, .diffuzz_step = c_diffuzz_step,
      /* optional entries stay NULL when the inner backend has none, so callers take the
       * same generic paths through the wrapper as without it */
      .upload_param = inner->upload_param ? c_upload_param : NULL,
      .sample = inner->sample ? c_sample : NULL,
  };
  return be;
}

void pa_counting_backend_free(pa_backend *counting) {
  if (!counting) return;
  free(counting->ctx);
  free(counting);
}

pa_op_counts pa_counting_snapshot(const pa_backend *counting) { return CTX(counting)->n; }

void pa_counting_reset(pa_backend *counting) { CTX(counting)->n = (pa_op_counts){0}; }
