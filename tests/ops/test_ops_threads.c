/* The CPU ops give the same bits with 1, 2, 3 and 4 threads (docs/determinism.md): every op
 * that splits work over threads, at shapes large enough to be split (and where Debian's
 * OpenBLAS, left to thread a GEMM itself, changes most elements), plus the sampler step and
 * the thread-count setting itself. Each case runs at 1 thread first; the others must match
 * it byte for byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/sampler.h"
#include "ops/cpu_gemm.h"
#include "ops/ops.h"
#include "ops/threads.h"
#include "tests/test.h"

static pa_backend *be;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float frand(void) { /* xorshift64*, uniform in [-1, 1) */
  rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
  return (float)((rng * 2685821657736338717ull) >> 40) / (float)(1 << 23) - 1.0f;
}

static pa_tensor *rnd(int nd, const int64_t *s) {
  pa_tensor *t = pa_tensor_new(PA_F32, nd, s);
  for (int64_t i = 0; i < pa_numel(t); i++) ((float *)t->data)[i] = frand();
  return t;
}
#define SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / 8), (const int64_t[]) { __VA_ARGS__ }
#define T(...) rnd(SHAPE(__VA_ARGS__))
#define Z(...) pa_tensor_new(PA_F32, SHAPE(__VA_ARGS__))

/* One op into `y` with the current thread count. */
typedef int (*op_fn)(pa_tensor *y, void *ctx);

/* Runs `op` at 1 thread, then at 2, 3 and 4, and compares the bytes of y. */
static void same_bits(const char *name, op_fn op, void *ctx, pa_tensor *y) {
  size_t n = pa_nbytes(y);
  unsigned char *ref = malloc(n);
  CHECK_OK(pa_threads_set(1));
  memset(y->data, 0xA5, n); /* stale bytes would hide an element left unwritten */
  CHECK_OK(op(y, ctx));
  memcpy(ref, y->data, n);
  for (int t = 2; t <= 4; t++) {
    CHECK_OK(pa_threads_set(t));
    memset(y->data, 0x5A, n);
    CHECK_OK(op(y, ctx));
    size_t diff = 0;
    for (size_t i = 0; i < n; i += 4) diff += memcmp(ref + i, (unsigned char *)y->data + i, 4) != 0;
    CHECK_MSG(diff == 0, "%s: %zu of %zu values differ between 1 and %d threads", name, diff, n / 4, t);
  }
  free(ref);
}

/* ---- GEMM-based ops ------------------------------------------------------------------------ */

typedef struct {
  pa_tensor *x, *w, *b;
  pa_act act;
} linear_ctx;

static int op_linear(pa_tensor *y, void *c) {
  linear_ctx *l = c;
  return pa_linear(be, y, l->x, l->w, l->b, l->act);
}

/* Shapes of the real networks' GEMMs (tall image rows, short conditioning rows) and odd ones
 * that leave partial tiles. */
static void test_linear(void) {
  static const int64_t shapes[][3] = {{1024, 256, 256}, {100, 1000, 64}, {4096, 64, 100}, {2, 2048, 1024},
                                      {77, 640, 320},   {513, 33, 257}, {8192, 24, 96}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    int64_t M = shapes[i][0], N = shapes[i][1], K = shapes[i][2];
    linear_ctx l = {T(M, K), T(N, K), T(N), i % 2 ? PA_ACT_GELU : PA_ACT_NONE};
    pa_tensor *y = Z(M, N);
    char name[64];
    snprintf(name, sizeof name, "linear (%lld, %lld) x (%lld)", (long long)M, (long long)K, (long long)N);
    same_bits(name, op_linear, &l, y);
    pa_tensor_free(l.x), pa_tensor_free(l.w), pa_tensor_free(l.b), pa_tensor_free(y);
  }
}

/* The tiles depend on the shape only, cover the product, and cut short products into columns. */
static void test_tiles(void) {
  int64_t tm, tn;
  pa_cpu_sgemm_tiles(8192, 256, &tm, &tn);
  CHECK(tm == 256 && tn == 256);
  pa_cpu_sgemm_tiles(2, 2048, &tm, &tn);
  CHECK(tm == 2 && tn == 128);
  pa_cpu_sgemm_tiles(1, 1, &tm, &tn);
  CHECK(tm == 1 && tn == 1);
  int64_t tm1, tn1;
  CHECK_OK(pa_threads_set(1));
  pa_cpu_sgemm_tiles(1000, 300, &tm1, &tn1);
  CHECK_OK(pa_threads_set(3));
  pa_cpu_sgemm_tiles(1000, 300, &tm, &tn);
  CHECK(tm == tm1 && tn == tn1 && tm >= 32 && tn >= 64);
}

/* pa_cpu_sgemm with a transposed (N, K) and a plain (K, N) w, row strides wider than the rows. */
typedef struct {
  bool w_nk;
  int64_t M, N, K;
  const float *x, *w;
} gemm_ctx;

static int op_gemm(pa_tensor *y, void *c) {
  gemm_ctx *g = c;
  pa_cpu_sgemm(g->w_nk, g->M, g->N, g->K, 0.5f, g->x, g->K + 3, g->w, g->w_nk ? g->K + 1 : g->N + 5,
               (float *)y->data, g->N + 2);
  for (int64_t r = 0; r < g->M; r++) /* the 2 columns past N are not the product's */
    ((float *)y->data)[r * (g->N + 2) + g->N] = ((float *)y->data)[r * (g->N + 2) + g->N + 1] = 0;
  return PA_OK;
}

static void test_gemm_strides(void) {
  int64_t M = 700, N = 300, K = 200;
  pa_tensor *x = T(M, K + 3), *wt = T(N, K + 1), *wn = T(K, N + 5), *y = Z(M, N + 2);
  gemm_ctx g = {true, M, N, K, x->data, wt->data};
  same_bits("sgemm x @ w^T", op_gemm, &g, y);
  g = (gemm_ctx){false, M, N, K, x->data, wn->data};
  same_bits("sgemm x @ w", op_gemm, &g, y);
  /* and it is the product: one element against a double dot product */
  double s = 0;
  for (int64_t k = 0; k < K; k++) s += (double)((float *)x->data)[5 * (K + 3) + k] * ((float *)wn->data)[k * (N + 5) + 7];
  CHECK_NEAR(((float *)y->data)[5 * (N + 2) + 7], 0.5 * s, 1e-4);
  pa_tensor_free(x), pa_tensor_free(wt), pa_tensor_free(wn), pa_tensor_free(y);
}

typedef struct {
  pa_tensor *x, *w, *b;
  pa_conv_params p;
  bool transpose;
} conv_ctx;

static int op_conv(pa_tensor *y, void *c) {
  conv_ctx *k = c;
  return k->transpose ? pa_conv_transpose2d(be, y, k->x, k->w, k->b, k->p) : pa_conv2d(be, y, k->x, k->w, k->b, k->p);
}

static void test_convs(void) {
  /* 3x3 (im2col + GEMM), grouped depthwise, 1x1, transposed with stride 2 */
  conv_ctx c = {T(2, 40, 40, 32), T(48, 32, 3, 3), T(48), {1, 1, 1, PA_PAD_ZERO}, false};
  pa_tensor *y = Z(2, 40, 40, 48);
  same_bits("conv2d 3x3", op_conv, &c, y);
  pa_tensor_free(c.w), pa_tensor_free(c.b), pa_tensor_free(y);
  c = (conv_ctx){c.x, T(32, 1, 3, 3), T(32), {1, 1, 32, PA_PAD_REPLICATE}, false};
  y = Z(2, 40, 40, 32);
  same_bits("conv2d depthwise", op_conv, &c, y);
  pa_tensor_free(c.w), pa_tensor_free(c.b), pa_tensor_free(y);
  c = (conv_ctx){c.x, T(32, 24, 4, 4), T(24), {2, 1, 1, PA_PAD_ZERO}, true};
  y = Z(2, 80, 80, 24);
  same_bits("conv_transpose2d 4x4 stride 2", op_conv, &c, y);
  pa_tensor_free(c.x), pa_tensor_free(c.w), pa_tensor_free(c.b), pa_tensor_free(y);
}

/* ---- attention ----------------------------------------------------------------------------- */

typedef struct {
  pa_tensor *q, *k, *v;
  pa_attn_params p;
} attn_ctx;

static int op_attn(pa_tensor *y, void *c) {
  attn_ctx *a = c;
  return pa_attention(be, y, a->q, a->k, a->v, &a->p);
}

static void test_attention(void) {
  /* Paella's shape: image queries over image keys then conditioning keys, a padded row,
   * re-weighted conditioning keys; Lq = 300 leaves a partial query chunk */
  int64_t B = 2, Lq = 300, L2 = 20, C = 64;
  pa_tensor *pad = pa_tensor_new(PA_I32, 1, (const int64_t[]){B});
  ((int32_t *)pad->data)[1] = 7;
  pa_tensor *k2 = T(B, L2, C), *v2 = T(B, L2, C), *kw = T(B, 5);
  attn_ctx a = {T(B, Lq, C), T(B, Lq, C), T(B, Lq, C), {.nhead = 4, .scale = 0.25f}};
  a.p.k2 = k2, a.p.v2 = v2, a.p.key_pad = pad, a.p.key_weight = kw;
  pa_tensor *y = Z(B, Lq, C);
  same_bits("attention (cached keys, padding, key weights)", op_attn, &a, y);
  /* T5's relative bias and CLIP's causal mask */
  pa_tensor *bias = T(4, Lq, Lq);
  a.p = (pa_attn_params){.nhead = 4, .scale = 1.0f, .pos_bias = bias, .causal = true};
  same_bits("attention (position bias, causal)", op_attn, &a, y);
  pa_tensor_free(bias), pa_tensor_free(pad), pa_tensor_free(k2), pa_tensor_free(v2), pa_tensor_free(kw);
  pa_tensor_free(a.q), pa_tensor_free(a.k), pa_tensor_free(a.v), pa_tensor_free(y);
}

/* ---- reductions and the rest ------------------------------------------------------------- */

typedef struct {
  pa_tensor *x, *a, *b;
  int which;
} misc_ctx;

static int op_misc(pa_tensor *y, void *c) {
  misc_ctx *m = c;
  switch (m->which) {
    case 0: return pa_layernorm(be, y, m->x, m->a, m->b, 1e-6f);
    case 1: return pa_rmsnorm(be, y, m->x, m->a, 1e-6f);
    case 2: return pa_grn(be, y, m->x, m->a, m->b);
    case 3: return pa_modulate(be, y, m->x, m->a);
    default: return pa_vq_nearest(be, y, m->x, m->a);
  }
}

static void test_reductions(void) {
  pa_tensor *x = T(2, 32, 32, 96), *g = T(96), *b = T(96), *am = T(2, 192), *y = Z(2, 32, 32, 96);
  static const char *names[] = {"layernorm", "rmsnorm", "grn", "modulate"};
  for (int i = 0; i < 4; i++) {
    misc_ctx m = {x, i == 3 ? am : g, b, i};
    same_bits(names[i], op_misc, &m, y);
  }
  pa_tensor *z = T(2048, 4), *cb = T(512, 4), *idx = pa_tensor_new(PA_I64, 1, (const int64_t[]){2048});
  misc_ctx m = {z, cb, NULL, 4};
  same_bits("vq_nearest", op_misc, &m, idx);
  pa_tensor_free(x), pa_tensor_free(g), pa_tensor_free(b), pa_tensor_free(am), pa_tensor_free(y);
  pa_tensor_free(z), pa_tensor_free(cb), pa_tensor_free(idx);
}

/* The sampler step (model/sampler.c): guidance, Gumbel-max draws and re-noising per position. */
static int op_sample(pa_tensor *y, void *c) {
  pa_sample_params *p = c;
  p->tokens = y;
  return pa_sampler_step(be, p);
}

static void test_sampler(void) {
  int64_t B = 2, n = 1024, K = 256;
  pa_tensor *cond = T(B, 32, 32, K), *uncond = T(B, 32, 32, K);
  pa_tensor *seeds = pa_tensor_new(PA_I64, 1, (const int64_t[]){B}), *init = pa_tensor_new(PA_I64, 2, (const int64_t[]){B, n});
  pa_tensor *tok = pa_tensor_new(PA_I64, 2, (const int64_t[]){B, n});
  ((int64_t *)seeds->data)[0] = 7, ((int64_t *)seeds->data)[1] = 8;
  for (int64_t i = 0; i < B * n; i++) ((int64_t *)init->data)[i] = i % K;
  pa_sample_params p = {.cond = cond, .uncond = uncond, .cfg = 8.0f, .temp = 0.7f, .seeds = seeds, .step = 3,
                        .renoise = true, .renoise_t = 0.4f, .init = init};
  same_bits("sampler step", op_sample, &p, tok);
  p.typical_mass = 0.9f, p.typical_min_tokens = 1;
  same_bits("sampler step (typical filtering)", op_sample, &p, tok);
  pa_tensor_free(cond), pa_tensor_free(uncond), pa_tensor_free(seeds), pa_tensor_free(init), pa_tensor_free(tok);
}

static void test_setting(void) {
  CHECK_OK(pa_threads_set(3));
  CHECK(pa_threads_get() == 3);
  CHECK(pa_threads_set(0) == PA_ERR_INVALID);
  CHECK(pa_threads_set(PA_THREADS_MAX + 1) == PA_ERR_INVALID);
  CHECK(strstr(pa_errmsg(), "out of range") != NULL);
  CHECK(pa_threads_get() == 3); /* a refused count changes nothing */
}

int main(void) {
  be = pa_cpu_backend();
  test_setting();
  test_tiles();
  test_linear();
  test_gemm_strides();
  test_convs();
  test_attention();
  test_reductions();
  test_sampler();
  TEST_END();
}
