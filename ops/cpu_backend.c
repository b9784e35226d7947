/* The CPU reference backend: float32 activations, OpenBLAS for every GEMM, OpenMP for the
 * elementwise and reduction loops. Reductions (norms, softmax) accumulate in double so the
 * reference stays well inside the goldens' 1e-4 tolerance at any width.
 *
 * Every result is independent of the thread count, bit for bit: each output element is
 * computed by one thread in a fixed order (the OpenMP loops split over output rows or
 * pixels, never inside a reduction), and GEMMs go through ops/cpu_gemm.c, whose tiles do
 * not depend on the thread count (OpenBLAS's own threading does change the bits). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/backend.h"
#include "ops/cpu_gemm.h"
#include "ops/error.h"
#include "ops/rng.h"

/* Parallel loops only pay off above ~32k elements of work; below that the fork/join and
 * barrier cost dominates (tiny models, and machines where other processes hold cores). */
#define PAR(work) ((work) >= 32768)

#define F(t) ((float *)(t)->data)
#define CF(t) ((const float *)(t)->data)

/* ---- memory ------------------------------------------------------------------------------ */

static pa_tensor *cpu_alloc(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape) {
  (void)be;
  return pa_tensor_new(dt, ndim, shape);
}

static void cpu_release(pa_backend *be, pa_tensor *t) {
  (void)be;
  pa_tensor_free(t);
}

static int cpu_copy_bytes(pa_backend *be, pa_tensor *dst, const pa_tensor *src) {
  (void)be;
  if (pa_nbytes(dst) != pa_nbytes(src) || dst->dtype != src->dtype)
    return pa_fail(PA_ERR_SHAPE, "copy: size or dtype mismatch");
  memmove(dst->data, src->data, pa_nbytes(src));
  return PA_OK;
}

static int cpu_sync(pa_backend *be) {
  (void)be;
  return PA_OK;
}

/* ---- GEMM-based ops ---------------------------------------------------------------------- */

static inline float act_apply(float v, pa_act act) {
  switch (act) {
    case PA_ACT_GELU: return 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2));
    case PA_ACT_GELU_TANH: {
      const float k = 0.7978845608028654f; /* sqrt(2/pi) */
      return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
    case PA_ACT_SILU: return v / (1.0f + expf(-v));
    default: return v;
  }
}

/* y(M, N) = x(M, K) @ w(N, K)^T (+ bias) then act */
static void gemm_nt(float *y, const float *x, const float *w, const float *bias, int64_t M,
                    int64_t N, int64_t K, pa_act act) {
  if (M == 0 || N == 0) return;
  pa_cpu_sgemm(true, M, N, K, 1.0f, x, K, w, K, y, N);
  if (!bias && act == PA_ACT_NONE) return;
#pragma omp parallel for schedule(static) if (PAR(M * N))
  for (int64_t i = 0; i < M; i++) {
    float *row = y + i * N;
    for (int64_t j = 0; j < N; j++) row[j] = act_apply(row[j] + (bias ? bias[j] : 0.0f), act);
  }
}

static int cpu_linear(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                      const pa_tensor *b, pa_act act) {
  (void)be;
  gemm_nt(F(y), CF(x), CF(w), b ? CF(b) : NULL, pa_rows(x), w->shape[0], w->shape[1], act);
  return PA_OK;
}

static int cpu_embedding(pa_backend *be, pa_tensor *y, const pa_tensor *ids, const pa_tensor *table) {
  (void)be;
  int64_t n = pa_numel(ids), V = table->shape[0], D = table->shape[1];
  const int64_t *id = ids->data;
  for (int64_t i = 0; i < n; i++)
    if (id[i] < 0 || id[i] >= V)
      return pa_fail(PA_ERR_INVALID, "embedding: id %lld at position %lld outside [0, %lld)",
                     (long long)id[i], (long long)i, (long long)V);
  for (int64_t i = 0; i < n; i++) memcpy(F(y) + i * D, CF(table) + id[i] * D, (size_t)D * 4);
  return PA_OK;
}

/* ---- normalisation ----------------------------------------------------------------------- */

static int cpu_layernorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
                         const pa_tensor *beta, float eps) {
  (void)be;
  int64_t R = pa_rows(x), C = pa_last(x);
  const float *g = gamma ? CF(gamma) : NULL, *bt = beta ? CF(beta) : NULL;
#pragma omp parallel for schedule(static) if (PAR(R * C))
  for (int64_t r = 0; r < R; r++) {
    const float *xi = CF(x) + r * C;
    float *yi = F(y) + r * C;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; c++) mean += xi[c];
    mean /= (double)C;
    for (int64_t c = 0; c < C; c++) var += (xi[c] - mean) * (xi[c] - mean);
    double inv = 1.0 / sqrt(var / (double)C + eps);
    for (int64_t c = 0; c < C; c++) {
      double v = (xi[c] - mean) * inv;
      if (g) v *= g[c];
      if (bt) v += bt[c];
      yi[c] = (float)v;
    }
  }
  return PA_OK;
}

static int cpu_rmsnorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
                       float eps) {
  (void)be;
  int64_t R = pa_rows(x), C = pa_last(x);
#pragma omp parallel for schedule(static) if (PAR(R * C))
  for (int64_t r = 0; r < R; r++) {
    const float *xi = CF(x) + r * C;
    float *yi = F(y) + r * C;
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += (double)xi[c] * xi[c];
    double inv = 1.0 / sqrt(ss / (double)C + eps);
    for (int64_t c = 0; c < C; c++) yi[c] = (float)(xi[c] * inv * CF(gamma)[c]);
  }
  return PA_OK;
}

static int cpu_grn(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
                   const pa_tensor *beta) {
  (void)be;
  int64_t B = x->shape[0], P = x->shape[1] * x->shape[2], C = x->shape[3];
  double *nx = malloc((size_t)C * sizeof *nx);
  if (!nx) return pa_fail(PA_ERR_NOMEM, "grn: out of memory");
  for (int64_t b = 0; b < B; b++) {
    const float *xb = CF(x) + b * P * C;
    float *yb = F(y) + b * P * C;
    memset(nx, 0, (size_t)C * sizeof *nx);
    for (int64_t p = 0; p < P; p++)
      for (int64_t c = 0; c < C; c++) nx[c] += (double)xb[p * C + c] * xb[p * C + c];
    double mean = 0;
    for (int64_t c = 0; c < C; c++) mean += (nx[c] = sqrt(nx[c]));
    mean /= (double)C;
    for (int64_t c = 0; c < C; c++) nx[c] /= mean + 1e-6;
#pragma omp parallel for schedule(static) if (PAR(P * C))
    for (int64_t p = 0; p < P; p++)
      for (int64_t c = 0; c < C; c++) {
        float v = xb[p * C + c];
        yb[p * C + c] = (float)(CF(gamma)[c] * (v * nx[c]) + CF(beta)[c] + v);
      }
  }
  free(nx);
  return PA_OK;
}

/* ---- elementwise ------------------------------------------------------------------------- */

static int cpu_activation(pa_backend *be, pa_tensor *y, const pa_tensor *x, pa_act act) {
  (void)be;
  int64_t n = pa_numel(x);
#pragma omp parallel for schedule(static) if (PAR(n))
  for (int64_t i = 0; i < n; i++) F(y)[i] = act_apply(CF(x)[i], act);
  return PA_OK;
}

static int cpu_add(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, float alpha) {
  (void)be;
  int64_t n = pa_numel(a);
#pragma omp parallel for schedule(static) if (PAR(n))
  for (int64_t i = 0; i < n; i++) F(y)[i] = CF(a)[i] + alpha * CF(b)[i];
  return PA_OK;
}

static int cpu_mul(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b) {
  (void)be;
  int64_t n = pa_numel(a);
#pragma omp parallel for schedule(static) if (PAR(n))
  for (int64_t i = 0; i < n; i++) F(y)[i] = CF(a)[i] * CF(b)[i];
  return PA_OK;
}

static int cpu_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, float s, float t) {
  (void)be;
  int64_t n = pa_numel(x);
#pragma omp parallel for schedule(static) if (PAR(n))
  for (int64_t i = 0; i < n; i++) F(y)[i] = CF(x)[i] * s + t;
  return PA_OK;
}

static int cpu_modulate(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *am) {
  (void)be;
  int64_t B = x->shape[0], C = pa_last(x), P = pa_numel(x) / (B * C);
#pragma omp parallel for collapse(2) schedule(static) if (PAR(pa_numel(x)))
  for (int64_t b = 0; b < B; b++)
    for (int64_t p = 0; p < P; p++) {
      const float *a = CF(am) + (am->shape[0] == 1 ? 0 : b) * 2 * C, *m = a + C, *xi = CF(x) + (b * P + p) * C;
      float *yi = F(y) + (b * P + p) * C;
      for (int64_t c = 0; c < C; c++) yi[c] = xi[c] * (1.0f + a[c]) + m[c];
    }
  return PA_OK;
}

static int cpu_channel_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x,
                              const pa_tensor *scale, const pa_tensor *shift) {
  (void)be;
  int64_t R = pa_rows(x), C = pa_last(x);
#pragma omp parallel for schedule(static) if (PAR(R * C))
  for (int64_t r = 0; r < R; r++)
    for (int64_t c = 0; c < C; c++) F(y)[r * C + c] = CF(x)[r * C + c] * CF(scale)[c] + CF(shift)[c];
  return PA_OK;
}

/* ---- convolutions ------------------------------------------------------------------------ */

/* Input pixel (iy, ix) of image b, or NULL for zero padding; replicate padding clamps. */
static inline const float *conv_src(const pa_tensor *x, int64_t b, int64_t iy, int64_t ix,
                                    pa_pad_mode mode) {
  int64_t H = x->shape[1], W = x->shape[2], C = x->shape[3];
  if (iy < 0 || iy >= H || ix < 0 || ix >= W) {
    if (mode == PA_PAD_ZERO) return NULL;
    iy = iy < 0 ? 0 : (iy >= H ? H - 1 : iy);
    ix = ix < 0 ? 0 : (ix >= W ? W - 1 : ix);
  }
  return CF(x) + ((b * H + iy) * W + ix) * C;
}

/* groups == 1: im2col (column index (ci*kh + ky)*kw + kx, the PyTorch weight order), GEMM. */
static int conv_gemm(pa_tensor *y, const pa_tensor *x, const pa_tensor *w, const pa_tensor *b,
                     pa_conv_params p) {
  int64_t B = x->shape[0], Ci = x->shape[3], O = w->shape[0], kh = w->shape[2], kw = w->shape[3];
  int64_t Ho = y->shape[1], Wo = y->shape[2], K = Ci * kh * kw;
  if (kh == 1 && kw == 1 && p.stride == 1 && p.pad == 0) {
    gemm_nt(F(y), CF(x), CF(w), b ? CF(b) : NULL, B * Ho * Wo, O, Ci, PA_ACT_NONE);
    return PA_OK;
  }
  float *cols = malloc((size_t)(B * Ho * Wo * K) * sizeof *cols);
  if (!cols) return pa_fail(PA_ERR_NOMEM, "conv2d: out of memory for im2col");
#pragma omp parallel for collapse(3) schedule(static) if (PAR(B * Ho * Wo * K))
  for (int64_t bi = 0; bi < B; bi++)
    for (int64_t oy = 0; oy < Ho; oy++)
      for (int64_t ox = 0; ox < Wo; ox++) {
        float *col = cols + ((bi * Ho + oy) * Wo + ox) * K;
        for (int64_t ky = 0; ky < kh; ky++)
          for (int64_t kx = 0; kx < kw; kx++) {
            const float *src = conv_src(x, bi, oy * p.stride - p.pad + ky, ox * p.stride - p.pad + kx,
                                        p.pad_mode);
            for (int64_t ci = 0; ci < Ci; ci++) col[(ci * kh + ky) * kw + kx] = src ? src[ci] : 0.0f;
          }
      }
  gemm_nt(F(y), cols, CF(w), b ? CF(b) : NULL, B * Ho * Wo, O, K, PA_ACT_NONE);
  free(cols);
  return PA_OK;
}

/* groups > 1 (depthwise / grouped): direct loops; output o of group g reads input channels
 * [g*Ig, (g+1)*Ig). */
static int conv_grouped(pa_tensor *y, const pa_tensor *x, const pa_tensor *w, const pa_tensor *b,
                        pa_conv_params p) {
  int64_t B = x->shape[0], O = w->shape[0], Ig = w->shape[1], kh = w->shape[2], kw = w->shape[3];
  int64_t Ho = y->shape[1], Wo = y->shape[2], Og = O / p.groups;
#pragma omp parallel for collapse(3) schedule(static) if (PAR(B * Ho * Wo * O * Ig * kh * kw))
  for (int64_t bi = 0; bi < B; bi++)
    for (int64_t oy = 0; oy < Ho; oy++)
      for (int64_t ox = 0; ox < Wo; ox++) {
        float *dst = F(y) + ((bi * Ho + oy) * Wo + ox) * O;
        for (int64_t o = 0; o < O; o++) dst[o] = b ? CF(b)[o] : 0.0f;
        for (int64_t ky = 0; ky < kh; ky++)
          for (int64_t kx = 0; kx < kw; kx++) {
            const float *src = conv_src(x, bi, oy * p.stride - p.pad + ky, ox * p.stride - p.pad + kx,
                                        p.pad_mode);
            if (!src) continue;
            for (int64_t o = 0; o < O; o++) {
              const float *in = src + (o / Og) * Ig;
              const float *wo = CF(w) + o * Ig * kh * kw + ky * kw + kx;
              float acc = 0;
              for (int64_t j = 0; j < Ig; j++) acc += in[j] * wo[j * kh * kw];
              dst[o] += acc;
            }
          }
      }
  return PA_OK;
}

static int cpu_conv2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                      const pa_tensor *b, pa_conv_params p) {
  (void)be;
  return p.groups == 1 ? conv_gemm(y, x, w, b, p) : conv_grouped(y, x, w, b, p);
}

/* cols(B*H*W, O*kh*kw) = x @ w(Ci, O*kh*kw); then each output pixel gathers the taps
 * (iy, ky) with iy*s - pad + ky == oy. */
static int cpu_conv_transpose2d(pa_backend *be, pa_tensor *y, const pa_tensor *x,
                                const pa_tensor *w, const pa_tensor *b, pa_conv_params p) {
  (void)be;
  int64_t B = x->shape[0], H = x->shape[1], W = x->shape[2], Ci = x->shape[3];
  int64_t O = w->shape[1], kh = w->shape[2], kw = w->shape[3], Ho = y->shape[1], Wo = y->shape[2];
  int64_t N = O * kh * kw, s = p.stride;
  float *cols = malloc((size_t)(B * H * W * N) * sizeof *cols);
  if (!cols) return pa_fail(PA_ERR_NOMEM, "conv_transpose2d: out of memory");
  pa_cpu_sgemm(false, B * H * W, N, Ci, 1.0f, CF(x), Ci, CF(w), N, cols, N);
#pragma omp parallel for collapse(2) schedule(static) if (PAR(pa_numel(y) * kh * kw))
  for (int64_t bi = 0; bi < B; bi++)
    for (int64_t oy = 0; oy < Ho; oy++)
      for (int64_t ox = 0; ox < Wo; ox++) {
        float *dst = F(y) + ((bi * Ho + oy) * Wo + ox) * O;
        for (int64_t o = 0; o < O; o++) dst[o] = b ? CF(b)[o] : 0.0f;
        for (int64_t ky = 0; ky < kh; ky++) {
          int64_t ty = oy + p.pad - ky;
          if (ty < 0 || ty % s || ty / s >= H) continue;
          for (int64_t kx = 0; kx < kw; kx++) {
            int64_t tx = ox + p.pad - kx;
            if (tx < 0 || tx % s || tx / s >= W) continue;
            const float *c = cols + ((bi * H + ty / s) * W + tx / s) * N;
            for (int64_t o = 0; o < O; o++) dst[o] += c[(o * kh + ky) * kw + kx];
          }
        }
      }
  free(cols);
  return PA_OK;
}

/* ---- layout ------------------------------------------------------------------------------ */

static int cpu_pixel_unshuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  (void)be;
  int64_t B = y->shape[0], Ho = y->shape[1], Wo = y->shape[2], C = x->shape[3], W = x->shape[2];
#pragma omp parallel for collapse(2) schedule(static) if (PAR(pa_numel(y)))
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Ho; h++)
      for (int64_t w = 0; w < Wo; w++) {
        float *dst = F(y) + ((b * Ho + h) * Wo + w) * C * p * p;
        for (int i = 0; i < p; i++)
          for (int j = 0; j < p; j++) {
            const float *src = CF(x) + ((b * Ho * p + h * p + i) * W + w * p + j) * C;
            for (int64_t c = 0; c < C; c++) dst[c * p * p + i * p + j] = src[c];
          }
      }
  return PA_OK;
}

static int cpu_pixel_shuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  (void)be;
  int64_t B = x->shape[0], H = x->shape[1], W = x->shape[2], C = y->shape[3], Wo = y->shape[2];
#pragma omp parallel for collapse(2) schedule(static) if (PAR(pa_numel(y)))
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t w = 0; w < W; w++) {
        const float *src = CF(x) + ((b * H + h) * W + w) * C * p * p;
        for (int i = 0; i < p; i++)
          for (int j = 0; j < p; j++) {
            float *dst = F(y) + ((b * H * p + h * p + i) * Wo + w * p + j) * C;
            for (int64_t c = 0; c < C; c++) dst[c] = src[c * p * p + i * p + j];
          }
      }
  return PA_OK;
}

static int cpu_concat(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, int axis) {
  (void)be;
  int64_t outer = 1, ia = 1, ib = 1;
  for (int i = 0; i < axis; i++) outer *= a->shape[i];
  for (int i = axis; i < a->ndim; i++) {
    ia *= a->shape[i];
    ib *= b->shape[i];
  }
  for (int64_t o = 0; o < outer; o++) {
    memcpy(F(y) + o * (ia + ib), CF(a) + o * ia, (size_t)ia * 4);
    memcpy(F(y) + o * (ia + ib) + ia, CF(b) + o * ib, (size_t)ib * 4);
  }
  return PA_OK;
}

/* ---- attention --------------------------------------------------------------------------- */

/* Softmax of one score row in place (double accumulation); masked entries are -INFINITY. */
static void softmax_row(float *s, int64_t n) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
  double sum = 0;
  for (int64_t j = 0; j < n; j++) sum += (s[j] = expf(s[j] - mx));
  for (int64_t j = 0; j < n; j++) s[j] = (float)(s[j] / sum);
}

/* Head h of the keys (or values) of row b, both segments, into a contiguous (Lb, d) block. */
static void gather_head(float *dst, const pa_tensor *k, int64_t ld, const pa_tensor *k2, int64_t ld2, int64_t b,
                        int64_t h, int64_t d, int64_t Lb) {
  int64_t L1 = k->shape[1], L2 = k2 ? k2->shape[1] : 0;
  for (int64_t j = 0; j < Lb; j++) {
    const float *src = j < L1 ? CF(k) + (b * L1 + j) * ld + h * d : CF(k2) + (b * L2 + j - L1) * ld2 + h * d;
    memcpy(dst + j * d, src, (size_t)d * sizeof *dst);
  }
}

/* Queries per unit of attention work: a (QCHUNK, Lk) score block per thread. A constant, so
 * that the units (and the bits) do not depend on the thread count. */
#define QCHUNK 64

/* Rows [i0, i0 + m) of head h of one batch row: scores, softmax, times the values. Kh, Vh
 * (Lb, d) are the head's gathered keys and values; S is (m, Lb) scratch. */
static void attention_rows(float *yb, const float *qb, const float *Kh, const float *Vh, float *S,
                           const pa_attn_params *p, const float *kw, int64_t nw, int64_t h, int64_t i0,
                           int64_t m, int64_t Lq, int64_t Lk, int64_t Lb, int64_t d, int64_t q_ld, int64_t C) {
  pa_cpu_sgemm_serial(true, m, Lb, d, p->scale, qb + i0 * q_ld + h * d, q_ld, Kh, d, S, Lb); /* (m, Lb) */
  for (int64_t r = 0; r < m; r++) {
    int64_t i = i0 + r;
    float *row = S + r * Lb;
    if (p->pos_bias)
      for (int64_t j = 0; j < Lb; j++) row[j] += CF(p->pos_bias)[(h * Lq + i) * Lk + j];
    if (p->causal)
      for (int64_t j = i + 1; j < Lb; j++) row[j] = -INFINITY;
    softmax_row(row, Lb);
    for (int64_t j = nw > Lb ? nw - Lb : 0; j < nw; j++) row[Lb - nw + j] *= kw[j];
  }
  pa_cpu_sgemm_serial(false, m, d, Lb, 1.0f, S, Lb, Vh, d, yb + i0 * C + h * d, C); /* (m, d) */
}

/* Each batch row: the heads' keys and values gathered once, then (head, query chunk) units
 * spread over the threads, each with single-threaded GEMMs. */
static int cpu_attention(pa_backend *be, pa_tensor *y, const pa_tensor *q, const pa_tensor *k,
                         const pa_tensor *v, const pa_attn_params *p) {
  (void)be;
  int64_t B = q->shape[0], Lq = q->shape[1], C = q->shape[2], H = p->nhead;
  int64_t Lk = k->shape[1] + (p->k2 ? p->k2->shape[1] : 0);
  int64_t d = C / H, nw = p->key_weight ? pa_last(p->key_weight) : 0;
  int64_t q_ld = p->q_ld ? p->q_ld : C, kv_ld = p->kv_ld ? p->kv_ld : C, kv2_ld = p->kv2_ld ? p->kv2_ld : C;
  bool kw_rows = p->key_weight && p->key_weight->ndim == 2;
  int64_t nq = (Lq + QCHUNK - 1) / QCHUNK, units = H * nq;
  float *Kh = malloc((size_t)(H * Lk * d) * sizeof *Kh), *Vh = malloc((size_t)(H * Lk * d) * sizeof *Vh);
  int failed = 0;
  if (!Kh || !Vh) {
    free(Kh), free(Vh);
    return pa_fail(PA_ERR_NOMEM, "attention: out of memory (%lld keys)", (long long)Lk);
  }
  for (int64_t b = 0; b < B && !failed; b++) {
    /* a padded row runs with its own key count, so its result is the unpadded one exactly */
    int64_t Lb = Lk - (p->key_pad ? ((const int32_t *)p->key_pad->data)[b] : 0);
    const float *kw = p->key_weight ? CF(p->key_weight) + (kw_rows ? b * nw : 0) : NULL;
    for (int64_t h = 0; h < H; h++) { /* (H, Lb, d) each */
      gather_head(Kh + h * Lb * d, k, kv_ld, p->k2, kv2_ld, b, h, d, Lb);
      gather_head(Vh + h * Lb * d, v, kv_ld, p->v2, kv2_ld, b, h, d, Lb);
    }
#pragma omp parallel if (units > 1 && PAR(Lq * Lb * d * H))
    {
      float *S = malloc((size_t)(QCHUNK * Lb) * sizeof *S); /* (QCHUNK, Lb) this thread's scores */
      if (!S) {
#pragma omp atomic write
        failed = 1;
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < units; u++) {
        int64_t h = u / nq, i0 = u % nq * QCHUNK, m = Lq - i0 < QCHUNK ? Lq - i0 : QCHUNK;
        if (S)
          attention_rows(F(y) + b * Lq * C, CF(q) + b * Lq * q_ld, Kh + h * Lb * d, Vh + h * Lb * d, S, p, kw, nw,
                         h, i0, m, Lq, Lk, Lb, d, q_ld, C);
      }
      free(S);
    }
  }
  free(Kh), free(Vh);
  if (failed) return pa_fail(PA_ERR_NOMEM, "attention: out of memory (%d x %lld scores)", QCHUNK, (long long)Lk);
  return PA_OK;
}

/* ---- vector quantisation ----------------------------------------------------------------- */

static int cpu_vq_nearest(pa_backend *be, pa_tensor *idx, const pa_tensor *z, const pa_tensor *cb) {
  (void)be;
  int64_t N = pa_rows(z), C = pa_last(z), K = cb->shape[0];
  int64_t *out = idx->data;
#pragma omp parallel for schedule(static) if (PAR(N * K * C))
  for (int64_t n = 0; n < N; n++) {
    const float *zn = CF(z) + n * C;
    double best = INFINITY;
    int64_t arg = 0;
    for (int64_t kk = 0; kk < K; kk++) {
      double dist = 0;
      for (int64_t c = 0; c < C; c++) {
        double t = (double)zn[c] - CF(cb)[kk * C + c];
        dist += t * t;
      }
      if (dist < best) { /* strict: the first minimum wins, like argmin */
        best = dist;
        arg = kk;
      }
    }
    out[n] = arg;
  }
  return PA_OK;
}

static int cpu_diffuzz_step(pa_backend *be, pa_tensor *x, const pa_tensor *eps_c, const pa_tensor *eps_u,
                            const pa_tensor *z, const pa_diffuzz_params *p) {
  (void)be;
  int64_t n = pa_numel(x);
  for (int64_t i = 0; i < n; i++) {
    float e = pa_prior_guidance(CF(eps_c)[i], CF(eps_u)[i], p->cfg);
    F(x)[i] = p->ddim ? pa_diffuzz_ddim(F(x)[i], e, p->ac, p->acp) : pa_diffuzz_ddpm(F(x)[i], e, CF(z)[i], p->a, p->ac, p->sd);
  }
  return PA_OK;
}

static pa_backend cpu_backend = {
    .name = "cpu",
    .device = PA_HOST,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .to_host = cpu_copy_bytes,
    .from_host = cpu_copy_bytes,
    .sync = cpu_sync,
    .linear = cpu_linear,
    .embedding = cpu_embedding,
    .layernorm = cpu_layernorm,
    .rmsnorm = cpu_rmsnorm,
    .activation = cpu_activation,
    .add = cpu_add,
    .mul = cpu_mul,
    .affine = cpu_affine,
    .modulate = cpu_modulate,
    .channel_affine = cpu_channel_affine,
    .grn = cpu_grn,
    .conv2d = cpu_conv2d,
    .conv_transpose2d = cpu_conv_transpose2d,
    .pixel_unshuffle = cpu_pixel_unshuffle,
    .pixel_shuffle = cpu_pixel_shuffle,
    .concat = cpu_concat,
    .attention = cpu_attention,
    .vq_nearest = cpu_vq_nearest,
    .copy = cpu_copy_bytes,
    .diffuzz_step = cpu_diffuzz_step,
};

pa_backend *pa_cpu_backend(void) { return &cpu_backend; }
