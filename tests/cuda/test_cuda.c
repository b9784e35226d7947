/* CUDA backend vs the CPU reference: every op on random inputs, the exhaustive Gumbel-noise
 * check and the fused sampler (tokens must be identical), every network on its tiny golden
 * (pa_eval_net on both backends) and mid-size networks with the real channel widths at small
 * spatial size (synthetic weights). Prints one table row per check: op, shape, max-norm
 * relative error (or disagreement), tolerance. bf16 GEMMs: 2e-2; F32-only ops: 1e-3.
 * Exits 77 (ctest SKIP_RETURN_CODE) when no CUDA device is present. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_backend.h"
#include "model/clip.h"
#include "model/eval.h"
#include "model/paella.h"
#include "model/prior.h"
#include "model/sampler.h"
#include "model/t5.h"
#include "model/vqgan.h"
#include "ops/rng.h"
#include "tests/test.h"

#define SKIP_CODE 77
#define TOL_BF16 2e-2
#define TOL_F32 1e-3

static pa_backend *cpu, *gpu;
static uint64_t rs = 0x9E3779B97F4A7C15ull;

static float frand(void) { /* xorshift64*, uniform in [-1, 1) */
  rs ^= rs >> 12, rs ^= rs << 25, rs ^= rs >> 27;
  return (float)((rs * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1 << 23) - 1.0f;
}

static pa_tensor *rnd(float scale, int ndim, const int64_t *shape) {
  pa_tensor *t = pa_tensor_new(PA_F32, ndim, shape);
  for (int64_t i = 0; t && i < pa_numel(t); i++) ((float *)t->data)[i] = scale * frand();
  return t;
}
#define RND(scale, ...) rnd(scale, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__})

static void row(const char *op, const char *shape, double err, double tol, const char *unit) {
  bool ok = err <= tol;
  printf("%-34s %-28s %10.3e %9.1e %s%s\n", op, shape, err, tol, unit, ok ? "" : "  FAIL");
  CHECK_MSG(ok, "%s %s: %.3e > %.1e", op, shape, err, tol);
}

/* max |a - b| / max |b| over two host F32 tensors */
static double relerr_host(const pa_tensor *a, const pa_tensor *b) {
  double diff = 0, mag = 0;
  for (int64_t i = 0; i < pa_numel(b); i++) {
    double x = ((const float *)a->data)[i], y = ((const float *)b->data)[i];
    diff = fmax(diff, isfinite(x) ? fabs(x - y) : INFINITY);
    mag = fmax(mag, fabs(y));
  }
  return mag > 0 ? diff / mag : diff;
}

/* cpu_out is a host tensor, gpu_out a device tensor of the same shape */
static void cmp(const char *op, const char *shape, const pa_tensor *cpu_out, const pa_tensor *gpu_out, double tol) {
  pa_tensor *h = pa_download(gpu, gpu_out);
  CHECK_MSG(h != NULL, "%s: download: %s", op, pa_errmsg());
  if (!h) return;
  if (cpu_out->dtype == PA_I64) {
    int64_t n = pa_numel(h), diff = 0;
    for (int64_t i = 0; i < n; i++) diff += ((int64_t *)h->data)[i] != ((int64_t *)cpu_out->data)[i];
    row(op, shape, n ? (double)diff / (double)n : 0, tol, "(disagree)");
  } else {
    row(op, shape, relerr_host(h, cpu_out), tol, "");
  }
  pa_tensor_free(h);
}

static pa_tensor *up(const pa_tensor *t) { return t ? pa_upload(gpu, t) : NULL; }
static pa_tensor *like_cpu(const pa_tensor *t) { return pa_tensor_new_like(t); }
static pa_tensor *like_gpu(const pa_tensor *t) { return pa_alloc(gpu, t->dtype, t->ndim, t->shape); }
static void rel(pa_tensor *h, pa_tensor *d) {
  pa_tensor_free(h);
  pa_release(gpu, d);
}

/* ---- ops ------------------------------------------------------------------------------------ */

static void t_linear(const char *label, int64_t M, int64_t K, int64_t N, pa_act act, bool as_param) {
  pa_tensor *x = RND(1, M, K), *w = RND(0.1f, N, K), *b = RND(0.1f, N), *y = pa_tensor_new_2d(PA_F32, M, N);
  pa_tensor *xd = up(x), *wd = NULL, *bd = NULL, *yd = like_gpu(y);
  pa_weights *ws = NULL;
  if (as_param) { /* through pa_param: the bf16 parameter copy */
    ws = pa_weights_new("test");
    pa_weights_add(ws, "w", pa_tensor_clone(w));
    pa_weights_add(ws, "b", pa_tensor_clone(b));
    CHECK_OK(pa_param(gpu, ws, &wd, 2, w->shape, "w"));
    CHECK_OK(pa_param(gpu, ws, &bd, 1, b->shape, "b"));
  } else {
    wd = up(w), bd = up(b);
  }
  CHECK_OK(pa_linear(cpu, y, x, w, b, act));
  CHECK_OK(pa_linear(gpu, yd, xd, wd, bd, act));
  char s[64];
  snprintf(s, sizeof s, "%lldx%lld @ %lldx%lld^T", (long long)M, (long long)K, (long long)N, (long long)K);
  cmp(label, s, y, yd, TOL_BF16);
  pa_tensor_free(x), pa_tensor_free(w), pa_tensor_free(b), pa_tensor_free(y);
  pa_release(gpu, xd), pa_release(gpu, wd), pa_release(gpu, bd), pa_release(gpu, yd);
  pa_weights_free(ws);
}

static void t_norms(void) {
  pa_tensor *x = RND(2, 4, 33, 640), *g = RND(1, 640), *b = RND(1, 640), *y = like_cpu(x);
  pa_tensor *xd = up(x), *gd = up(g), *bd = up(b), *yd = like_gpu(x);
  CHECK_OK(pa_layernorm(cpu, y, x, g, b, 1e-5f));
  CHECK_OK(pa_layernorm(gpu, yd, xd, gd, bd, 1e-5f));
  cmp("layernorm(affine)", "[4, 33, 640]", y, yd, TOL_F32);
  CHECK_OK(pa_layernorm(cpu, x, x, NULL, NULL, 1e-6f));
  CHECK_OK(pa_layernorm(gpu, xd, xd, NULL, NULL, 1e-6f));
  cmp("layernorm(in place, no affine)", "[4, 33, 640]", x, xd, TOL_F32);
  rel(x, xd), rel(g, gd), rel(b, bd), rel(y, yd);
  x = RND(3, 2, 17, 2560), g = RND(1, 2560), y = like_cpu(x), xd = up(x), gd = up(g), yd = like_gpu(x);
  CHECK_OK(pa_rmsnorm(cpu, y, x, g, 1e-6f));
  CHECK_OK(pa_rmsnorm(gpu, yd, xd, gd, 1e-6f));
  cmp("rmsnorm", "[2, 17, 2560]", y, yd, TOL_F32);
  rel(x, xd), rel(g, gd), rel(y, yd);
  x = RND(1, 2, 8, 8, 2560), g = RND(1, 2560), b = RND(1, 2560), xd = up(x), gd = up(g), bd = up(b);
  CHECK_OK(pa_grn(cpu, x, x, g, b));
  CHECK_OK(pa_grn(gpu, xd, xd, gd, bd));
  cmp("grn(in place)", "[2, 8, 8, 2560]", x, xd, TOL_F32);
  rel(x, xd), rel(g, gd), rel(b, bd);
}

static void t_elementwise(void) {
  pa_tensor *a = RND(3, 2, 8, 8, 640), *b = RND(3, 2, 8, 8, 640), *y = like_cpu(a);
  pa_tensor *ad = up(a), *bd = up(b), *yd = like_gpu(a);
  const pa_act acts[] = {PA_ACT_GELU, PA_ACT_GELU_TANH, PA_ACT_SILU};
  const char *names[] = {"activation(gelu)", "activation(gelu_tanh)", "activation(silu)"};
  for (int i = 0; i < 3; i++) {
    CHECK_OK(pa_activation(cpu, y, a, acts[i]));
    CHECK_OK(pa_activation(gpu, yd, ad, acts[i]));
    cmp(names[i], "[2, 8, 8, 640]", y, yd, TOL_F32);
  }
  CHECK_OK(pa_add(cpu, y, a, b, -0.5f));
  CHECK_OK(pa_add(gpu, yd, ad, bd, -0.5f));
  cmp("add", "[2, 8, 8, 640]", y, yd, TOL_F32);
  CHECK_OK(pa_mul(cpu, y, a, b));
  CHECK_OK(pa_mul(gpu, yd, ad, bd));
  cmp("mul", "[2, 8, 8, 640]", y, yd, TOL_F32);
  CHECK_OK(pa_affine(cpu, y, a, 0.3f, -1.25f));
  CHECK_OK(pa_affine(gpu, yd, ad, 0.3f, -1.25f));
  cmp("affine", "[2, 8, 8, 640]", y, yd, TOL_F32);
  pa_tensor *am = RND(1, 2, 1280), *amd = up(am);
  CHECK_OK(pa_modulate(cpu, y, a, am));
  CHECK_OK(pa_modulate(gpu, yd, ad, amd));
  cmp("modulate", "[2, 8, 8, 640]", y, yd, TOL_F32);
  pa_tensor am1 = pa_view_rows(am, 1, 2), am1d = pa_view_rows(amd, 1, 2); /* one row for the batch */
  CHECK_OK(pa_modulate(cpu, y, a, &am1));
  CHECK_OK(pa_modulate(gpu, yd, ad, &am1d));
  cmp("modulate(shared row)", "[2, 8, 8, 640]", y, yd, TOL_F32);
  pa_tensor *sc = RND(1, 640), *sh = RND(1, 640), *scd = up(sc), *shd = up(sh);
  CHECK_OK(pa_channel_affine(cpu, y, a, sc, sh));
  CHECK_OK(pa_channel_affine(gpu, yd, ad, scd, shd));
  cmp("channel_affine", "[2, 8, 8, 640]", y, yd, TOL_F32);
  CHECK_OK(pa_copy(cpu, y, b));
  CHECK_OK(pa_copy(gpu, yd, bd));
  cmp("copy", "[2, 8, 8, 640]", y, yd, 0);
  rel(a, ad), rel(b, bd), rel(y, yd), rel(am, amd), rel(sc, scd), rel(sh, shd);
}

static void t_conv(const char *label, int64_t B, int64_t H, int64_t C, int64_t O, int k, pa_conv_params p) {
  int g = p.groups < 1 ? 1 : p.groups;
  pa_tensor *x = RND(1, B, H, H, C), *w = RND(0.2f, O, C / g, k, k), *b = RND(0.1f, O);
  int64_t Ho = pa_conv_out(H, k, p);
  pa_tensor *y = pa_tensor_new(PA_F32, 4, (const int64_t[]){B, Ho, Ho, O});
  pa_tensor *xd = up(x), *wd = up(w), *bd = up(b), *yd = like_gpu(y);
  CHECK_OK(pa_conv2d(cpu, y, x, w, b, p));
  CHECK_OK(pa_conv2d(gpu, yd, xd, wd, bd, p));
  char s[64];
  snprintf(s, sizeof s, "[%lld, %lld, %lld, %lld] k%d g%d", (long long)B, (long long)H, (long long)H, (long long)C, k, g);
  cmp(label, s, y, yd, g > 1 ? TOL_F32 : TOL_BF16);
  rel(x, xd), rel(w, wd), rel(b, bd), rel(y, yd);
}

static void t_convt(const char *label, int64_t B, int64_t H, int64_t C, int64_t O, int k, pa_conv_params p) {
  pa_tensor *x = RND(1, B, H, H, C), *w = RND(0.2f, C, O, k, k), *b = RND(0.1f, O);
  int64_t Ho = pa_convt_out(H, k, p);
  pa_tensor *y = pa_tensor_new(PA_F32, 4, (const int64_t[]){B, Ho, Ho, O});
  pa_tensor *xd = up(x), *wd = up(w), *bd = up(b), *yd = like_gpu(y);
  CHECK_OK(pa_conv_transpose2d(cpu, y, x, w, b, p));
  CHECK_OK(pa_conv_transpose2d(gpu, yd, xd, wd, bd, p));
  char s[64];
  snprintf(s, sizeof s, "[%lld, %lld, %lld, %lld] k%d s%d", (long long)B, (long long)H, (long long)H, (long long)C, k, p.stride);
  cmp(label, s, y, yd, TOL_BF16);
  rel(x, xd), rel(w, wd), rel(b, bd), rel(y, yd);
}

static void t_layout(void) {
  pa_tensor *x = RND(1, 2, 16, 12, 24), *u = pa_tensor_new(PA_F32, 4, (const int64_t[]){2, 8, 6, 96});
  pa_tensor *xd = up(x), *ud = like_gpu(u), *s = like_cpu(x), *sd = like_gpu(x);
  CHECK_OK(pa_pixel_unshuffle(cpu, u, x, 2));
  CHECK_OK(pa_pixel_unshuffle(gpu, ud, xd, 2));
  cmp("pixel_unshuffle", "[2, 16, 12, 24] p2", u, ud, 0);
  CHECK_OK(pa_pixel_shuffle(cpu, s, u, 2));
  CHECK_OK(pa_pixel_shuffle(gpu, sd, ud, 2));
  cmp("pixel_shuffle", "[2, 8, 6, 96] p2", s, sd, 0);
  pa_tensor *a = RND(1, 2, 5, 7, 3), *b = RND(1, 2, 5, 7, 4), *ad = up(a), *bd = up(b);
  pa_tensor *y = pa_tensor_new(PA_F32, 4, (const int64_t[]){2, 5, 7, 7}), *yd = like_gpu(y);
  CHECK_OK(pa_concat(cpu, y, a, b, 3));
  CHECK_OK(pa_concat(gpu, yd, ad, bd, 3));
  cmp("concat(axis 3)", "[2, 5, 7, 3|4]", y, yd, 0);
  pa_tensor *c = RND(1, 2, 9, 16), *e = RND(1, 2, 4, 16), *cd = up(c), *ed = up(e);
  pa_tensor *z = pa_tensor_new(PA_F32, 3, (const int64_t[]){2, 13, 16}), *zd = like_gpu(z);
  CHECK_OK(pa_concat(cpu, z, c, e, 1));
  CHECK_OK(pa_concat(gpu, zd, cd, ed, 1));
  cmp("concat(axis 1)", "[2, 9|4, 16]", z, zd, 0);
  rel(x, xd), rel(u, ud), rel(s, sd), rel(a, ad), rel(b, bd), rel(y, yd), rel(c, cd), rel(e, ed), rel(z, zd);
  /* embedding */
  pa_tensor *ids = pa_tensor_new_2d(PA_I64, 2, 50), *tab = RND(1, 300, 64);
  for (int i = 0; i < 100; i++) ((int64_t *)ids->data)[i] = (i * 37) % 300;
  pa_tensor *o = pa_tensor_new(PA_F32, 3, (const int64_t[]){2, 50, 64}), *idsd = up(ids), *tabd = up(tab), *od = like_gpu(o);
  CHECK_OK(pa_embedding(cpu, o, ids, tab));
  CHECK_OK(pa_embedding(gpu, od, idsd, tabd));
  cmp("embedding", "[2, 50] of [300, 64]", o, od, 0);
  rel(ids, idsd), rel(tab, tabd), rel(o, od);
}

static void t_attention(const char *label, int64_t B, int64_t Lq, int64_t Lk, int64_t C, int H, bool causal,
                        bool bias, int64_t nw) {
  pa_tensor *q = RND(1, B, Lq, C), *k = RND(1, B, Lk, C), *v = RND(1, B, Lk, C), *y = like_cpu(q);
  pa_tensor *pb = bias ? RND(2, H, Lq, Lk) : NULL, *kw = nw ? RND(1, nw) : NULL;
  for (int64_t i = 0; kw && i < nw; i++) ((float *)kw->data)[i] += 1.0f;
  pa_tensor *qd = up(q), *kd = up(k), *vd = up(v), *yd = like_gpu(q), *pbd = up(pb), *kwd = up(kw);
  pa_attn_params p = {.nhead = H, .scale = bias ? 1.0f : 1.0f / sqrtf((float)(C / H)), .causal = causal,
                      .pos_bias = pb, .key_weight = kw};
  CHECK_OK(pa_attention(cpu, y, q, k, v, &p));
  p.pos_bias = pbd, p.key_weight = kwd;
  CHECK_OK(pa_attention(gpu, yd, qd, kd, vd, &p));
  char s[64];
  snprintf(s, sizeof s, "B%lld Lq%lld Lk%lld C%lld H%d", (long long)B, (long long)Lq, (long long)Lk, (long long)C, H);
  cmp(label, s, y, yd, TOL_F32);
  rel(q, qd), rel(k, kd), rel(v, vd), rel(y, yd), rel(pb, pbd), rel(kw, kwd);
}

/* Paella's attention block as it runs: q | k | v of the image tokens as column slices of one
 * (B, N, 3C) tensor (row stride 3C), the conditioning's cached keys | values (B, Lc, 2C) as a
 * second key segment (row stride 2C), padded rows and per-row key weights. */
static void t_attention_fused(void) {
  enum { B = 2, N = 64, Lc = 30, C = 320, H = 4, NW = 30 };
  pa_tensor *qkv = RND(1, B, N, 3 * C), *kv = RND(1, B, Lc, 2 * C), *y = pa_tensor_new(PA_F32, 3, (const int64_t[]){B, N, C});
  pa_tensor *kw = RND(1, B, NW), *pad = pa_tensor_new(PA_I32, 1, (const int64_t[]){B});
  for (int64_t i = 0; i < B * NW; i++) ((float *)kw->data)[i] += 1.0f;
  ((int32_t *)pad->data)[1] = 9;
  pa_tensor *qkvd = up(qkv), *kvd = up(kv), *yd = like_gpu(y), *kwd = up(kw), *padd = up(pad);
  pa_tensor *srcs[2][2] = {{qkv, kv}, {qkvd, kvd}}, *outs[2] = {y, yd}, *kws[2] = {kw, kwd}, *pads[2] = {pad, padd};
  pa_backend *bes[2] = {cpu, gpu};
  for (int i = 0; i < 2; i++) {
    pa_tensor q = pa_view(srcs[i][0], 3, (const int64_t[]){B, N, C}), k = q, v = q;
    pa_tensor kc = pa_view(srcs[i][1], 3, (const int64_t[]){B, Lc, C}), vc = kc;
    k.data = (float *)q.data + C, v.data = (float *)q.data + 2 * C, vc.data = (float *)kc.data + C;
    pa_attn_params p = {.nhead = H, .scale = 1.0f / sqrtf((float)(C / H)), .key_weight = kws[i], .key_pad = pads[i],
                        .k2 = &kc, .v2 = &vc, .q_ld = 3 * C, .kv_ld = 3 * C, .kv2_ld = 2 * C};
    CHECK_OK(pa_attention(bes[i], outs[i], &q, &k, &v, &p));
  }
  cmp("attention(fused qkv, cached cond k|v, pad)", "B2 N64 Lc30 C320 H4", y, yd, TOL_F32);
  rel(qkv, qkvd), rel(kv, kvd), rel(y, yd), rel(kw, kwd), rel(pad, padd);
}

/* Padded keys (per-row key_pad) with per-row key weights: the Paella CFG batch. */
static void t_attention_padded(void) {
  enum { B = 3, Lq = 64, Lk = 64 + 40, C = 320, H = 4, NW = 24 };
  pa_tensor *q = RND(1, B, Lq, C), *k = RND(1, B, Lk, C), *v = RND(1, B, Lk, C), *y = like_cpu(q);
  pa_tensor *kw = RND(1, B, NW), *pad = pa_tensor_new(PA_I32, 1, (const int64_t[]){B});
  for (int64_t i = 0; i < B * NW; i++) ((float *)kw->data)[i] += 1.0f;
  for (int b = 0; b < B; b++) ((int32_t *)pad->data)[b] = 11 * b; /* 0, 11, 22 padded keys */
  pa_tensor *qd = up(q), *kd = up(k), *vd = up(v), *yd = like_gpu(q), *kwd = up(kw), *padd = up(pad);
  pa_attn_params p = {.nhead = H, .scale = 1.0f / sqrtf((float)(C / H)), .key_weight = kw, .key_pad = pad};
  CHECK_OK(pa_attention(cpu, y, q, k, v, &p));
  p.key_weight = kwd, p.key_pad = padd;
  CHECK_OK(pa_attention(gpu, yd, qd, kd, vd, &p));
  cmp("attention(key_pad, row key weights)", "B3 Lq64 Lk104 C320 H4", y, yd, TOL_F32);
  rel(q, qd), rel(k, kd), rel(v, vd), rel(y, yd), rel(kw, kwd), rel(pad, padd);
}

static void t_vq(void) {
  pa_tensor *z = RND(1, 500, 4), *cb = RND(1, 8192, 4), *idx = pa_tensor_new(PA_I64, 1, (const int64_t[]){500});
  pa_tensor *zd = up(z), *cbd = up(cb), *idxd = like_gpu(idx);
  CHECK_OK(pa_vq_nearest(cpu, idx, z, cb));
  CHECK_OK(pa_vq_nearest(gpu, idxd, zd, cbd));
  cmp("vq_nearest", "[500, 4] vs [8192, 4]", idx, idxd, 0.01); /* F32 vs double distances: near ties */
  rel(z, zd), rel(cb, cbd), rel(idx, idxd);
}

/* ---- sampler -------------------------------------------------------------------------------- */

static void t_gumbel(void) {
  float *dev = malloc(((size_t)1 << 24) * sizeof *dev);
  CHECK_OK(pa_cuda_gumbel_table(gpu, dev));
  int64_t bad = 0;
  for (uint32_t i = 0; i < (1u << 24); i++) bad += dev[i] != pa_gumbel(pa_u32_to_uniform_open(i << 8));
  row("gumbel(all 2^24 uniforms)", "host vs device bits", (double)bad, 0, "(mismatches)");
  free(dev);
}

/* The fused sampler: CFG, per-image seeds, left/right regions, re-noise and pins (typical
 * filtering stays on the host path: pa_sampler_step never hands it to the kernel). */
static void t_sampler(bool argmax) {
  enum { B = 2, N = 256, K = 1000 };
  pa_tensor *c = RND(4, B, 16, 16, K), *u = RND(4, B, 16, 16, K), *c2 = RND(4, B, 16, 16, K);
  pa_tensor *seeds = pa_tensor_new(PA_I64, 1, (const int64_t[]){B});
  ((int64_t *)seeds->data)[0] = 1234, ((int64_t *)seeds->data)[1] = 99; /* two requests' images */
  for (int i = 0; i < 50; i++) ((float *)c->data)[i * 997 % (B * N * K)] = -INFINITY; /* filtered classes */
  pa_tensor *init = pa_tensor_new_2d(PA_I64, B, N), *pin = pa_tensor_new_2d(PA_I64, B, N);
  pa_tensor *keep = pa_tensor_new(PA_U8, 1, (const int64_t[]){N}), *tok = pa_tensor_new_2d(PA_I64, B, N);
  for (int i = 0; i < B * N; i++) ((int64_t *)init->data)[i] = i % K, ((int64_t *)pin->data)[i] = (7 * i) % K;
  for (int i = 0; i < N; i++) ((uint8_t *)keep->data)[i] = i % 5 == 0;
  pa_tensor *cd = up(c), *ud = up(u), *c2d = up(c2), *seedsd = up(seeds), *initd = up(init), *pind = up(pin);
  pa_tensor *keepd = up(keep), *tokd = like_gpu(tok);
  pa_sample_params p = {.cond = c, .uncond = u, .cond2 = c2, .regions = PA_SAMPLE_REGIONS_LEFT_RIGHT, .cfg = 8.0f,
                        .temp = 0.7f, .argmax = argmax, .seeds = seeds, .step = 3, .renoise = true,
                        .renoise_t = 0.4f, .init = init, .pinned = pin, .keep = keep, .tokens = tok};
  CHECK_OK(pa_sampler_step(cpu, &p));
  p.cond = cd, p.uncond = ud, p.cond2 = c2d, p.seeds = seedsd, p.init = initd, p.pinned = pind, p.keep = keepd;
  p.tokens = tokd;
  CHECK_OK(pa_sampler_step(gpu, &p));
  cmp(argmax ? "sampler(cfg, regions, argmax, renoise, pin)" : "sampler(cfg, regions, gumbel, renoise, pin)",
      "[2, 16, 16, 1000]", tok, tokd, 0);
  rel(c, cd), rel(u, ud), rel(c2, c2d), rel(seeds, seedsd), rel(init, initd), rel(pin, pind), rel(keep, keepd);
  rel(tok, tokd);
}

/* The prior's step op (guidance + DDPM in double, and DDIM) against the CPU backend: the same
 * rounded operations on both (ops/rng.h), so the results should agree to the bit. */
static void t_diffuzz(bool ddim) {
  enum { B = 3, D = 1024 };
  pa_tensor *x = RND(1, B, D), *ec = RND(1, B, D), *eu = RND(1, B, D), *z = RND(1, B, D);
  pa_tensor *xd = up(x), *ecd = up(ec), *eud = up(eu), *zd = up(z);
  pa_diffuzz_params p = pa_diffuzz_at(0.6f, 0.55f, ddim, 3.0f);
  CHECK_OK(pa_diffuzz_step(cpu, x, ec, eu, z, &p));
  CHECK_OK(pa_diffuzz_step(gpu, xd, ecd, eud, zd, &p));
  cmp(ddim ? "diffuzz step (cfg, ddim)" : "diffuzz step (cfg, ddpm)", "[3, 1024]", x, xd, 0);
  rel(x, xd), rel(ec, ecd), rel(eu, eud), rel(z, zd);
}

/* ---- networks ------------------------------------------------------------------------------- */

static const pa_tensor *find_out(const pa_eval_outputs *o, const char *name) {
  for (int i = 0; i < o->n; i++)
    if (!strcmp(o->items[i].name, name)) return o->items[i].tensor;
  return NULL;
}

/* Share of rows (last dim) whose argmax agrees. */
static double argmax_agree(const pa_tensor *a, const pa_tensor *b) {
  int64_t K = pa_last(a), R = pa_rows(a), same = 0;
  for (int64_t r = 0; r < R; r++) {
    const float *x = (const float *)a->data + r * K, *y = (const float *)b->data + r * K;
    int64_t ia = 0, ib = 0;
    for (int64_t k = 1; k < K; k++) {
      if (x[k] > x[ia]) ia = k;
      if (y[k] > y[ib]) ib = k;
    }
    same += ia == ib;
  }
  return R ? (double)same / (double)R : 1;
}

static void t_golden(const char *file, const char *net) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", PAELLA_GOLDEN_DIR, file);
  pa_weights *w = NULL;
  pa_eval_outputs oc = {0}, og = {0};
  CHECK_OK(pa_weights_open(path, &w));
  if (!w) return;
  CHECK_OK(pa_eval_net(cpu, net, w, false, &oc));
  CHECK_OK(pa_eval_net(gpu, net, w, false, &og));
  for (int i = 0; i < oc.n; i++) {
    const pa_tensor *a = oc.items[i].tensor, *b = find_out(&og, oc.items[i].name);
    char label[96], shape[64];
    snprintf(label, sizeof label, "%s:%s", net, oc.items[i].name);
    CHECK_MSG(b && pa_same_shape(a, b), "%s: missing or reshaped on cuda", label);
    if (!b || !pa_same_shape(a, b)) continue;
    pa_shape_str(a, shape, sizeof shape);
    if (a->dtype == PA_I64) {
      int64_t diff = 0;
      for (int64_t j = 0; j < pa_numel(a); j++) diff += ((int64_t *)a->data)[j] != ((int64_t *)b->data)[j];
      row(label, shape, (double)diff / (double)(pa_numel(a) ? pa_numel(a) : 1), 0.01, "(disagree)");
    } else if (a->dtype == PA_F32) {
      row(label, shape, relerr_host(b, a), TOL_BF16, "");
    }
  }
  pa_eval_outputs_free(&oc);
  pa_eval_outputs_free(&og);
  pa_weights_free(w);
}

/* logits max-norm error and argmax agreement of a host pair */
static void logits_rows(const char *label, const pa_tensor *ref, const pa_tensor *got) {
  char shape[64];
  pa_shape_str(ref, shape, sizeof shape);
  row(label, shape, relerr_host(got, ref), TOL_BF16, "");
  char l2[96];
  snprintf(l2, sizeof l2, "%s argmax", label);
  row(l2, shape, 1.0 - argmax_agree(got, ref), 0.01, "(disagree)");
}

/* Paella with the real widths (640/1280/1280, c_cond 1024, 8192 labels, byt5 2560) and fewer
 * blocks, at a 16x16 token grid; same synthetic weights on both backends. */
static int paella_run(pa_backend *be, pa_weights *w, const pa_paella_config *cfg, const pa_tensor *byt5_h,
                      const pa_tensor *clip_h, const pa_tensor *x_h, pa_tensor *logits_h) {
  int rc = PA_OK;
  pa_paella *m = NULL;
  pa_paella_cond *c = NULL;
  pa_tensor *byt5 = pa_upload(be, byt5_h), *clip = pa_upload(be, clip_h), *x = pa_upload(be, x_h);
  pa_tensor *lg = pa_alloc(be, PA_F32, 4, logits_h->shape);
  float r[2] = {0.8f, 0.3f};
  if (!byt5 || !clip || !x || !lg) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_paella_load(be, w, cfg, &m));
  PA_TRY(pa_paella_cond_new(m, byt5, clip, NULL, &c));
  PA_TRY(pa_paella_forward(m, c, x, r, NULL, lg));
  PA_TRY(be->to_host(be, logits_h, lg));
fail:
  if (m) pa_paella_cond_free(m, c);
  pa_paella_free(m);
  pa_release(be, byt5), pa_release(be, clip), pa_release(be, x), pa_release(be, lg);
  return rc;
}

static void t_paella_mid(void) {
  pa_paella_config cfg = pa_paella_default_config();
  cfg.blocks[0] = 1, cfg.blocks[1] = 2, cfg.blocks[2] = 1;
  pa_weights *w = pa_weights_new("paella-mid");
  pa_weights_set_autocreate(w, 7, 0.02f);
  pa_tensor *byt5 = RND(1, 2, 12, cfg.byt5_embd), *clip = RND(1, 2, cfg.clip_embd);
  pa_tensor *x = pa_tensor_new(PA_I64, 3, (const int64_t[]){2, 16, 16});
  for (int i = 0; i < 512; i++) ((int64_t *)x->data)[i] = (i * 2654435761u) % (uint32_t)cfg.num_labels;
  pa_tensor *lc = pa_tensor_new(PA_F32, 4, (const int64_t[]){2, 16, 16, cfg.num_labels}), *lg = pa_tensor_new_like(lc);
  CHECK_OK(paella_run(cpu, w, &cfg, byt5, clip, x, lc));
  CHECK_OK(paella_run(gpu, w, &cfg, byt5, clip, x, lg));
  logits_rows("paella-mid logits (blocks 1,2,1)", lc, lg);
  pa_tensor_free(byt5), pa_tensor_free(clip), pa_tensor_free(x), pa_tensor_free(lc), pa_tensor_free(lg);
  pa_weights_free(w);
}

static int t5_run(pa_backend *be, pa_weights *w, const pa_t5_config *cfg, const pa_tensor *ids, pa_tensor *out) {
  int rc = PA_OK;
  pa_t5 *m = NULL;
  pa_tensor *h = pa_alloc(be, PA_F32, 3, out->shape);
  if (!h) return PA_ERR_NOMEM;
  PA_TRY(pa_t5_load(be, w, cfg, &m));
  PA_TRY(pa_t5_encode(m, ids, h));
  PA_TRY(be->to_host(be, out, h));
fail:
  pa_t5_free(m);
  pa_release(be, h);
  return rc;
}

static int clip_run(pa_backend *be, pa_weights *w, const pa_clip_config *cfg, bool vision, const pa_tensor *in,
                    pa_tensor *hid, pa_tensor *emb) {
  int rc = PA_OK;
  pa_clip *m = NULL;
  pa_tensor *h = pa_alloc(be, PA_F32, 3, hid->shape), *e = pa_alloc(be, PA_F32, 2, emb->shape), *px = NULL;
  if (!h || !e) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_clip_load(be, w, cfg, vision, &m));
  if (vision) {
    if (!(px = pa_upload(be, in))) {
      rc = PA_ERR_NOMEM;
      goto fail;
    }
    PA_TRY(pa_clip_vision_forward(m, px, h, e));
  } else {
    PA_TRY(pa_clip_text_forward(m, in, h, e));
  }
  PA_TRY(be->to_host(be, hid, h));
  PA_TRY(be->to_host(be, emb, e));
fail:
  pa_clip_free(m);
  pa_release(be, h), pa_release(be, e), pa_release(be, px);
  return rc;
}

static void t_encoders_mid(void) {
  pa_t5_config tc = pa_t5_default_config();
  tc.num_layers = 2;
  pa_weights *w = pa_weights_new("t5-mid");
  pa_weights_set_autocreate(w, 11, 0.05f);
  pa_tensor *ids = pa_tensor_new_2d(PA_I64, 2, 40);
  for (int i = 0; i < 80; i++) ((int64_t *)ids->data)[i] = 3 + (i * 13) % 250;
  pa_tensor *hc = pa_tensor_new(PA_F32, 3, (const int64_t[]){2, 40, tc.d_model}), *hg = pa_tensor_new_like(hc);
  CHECK_OK(t5_run(cpu, w, &tc, ids, hc));
  CHECK_OK(t5_run(gpu, w, &tc, ids, hg));
  row("t5-mid (byt5-xl widths, 2 layers)", "[2, 40, 2560]", relerr_host(hg, hc), TOL_BF16, "");
  pa_weights_free(w), pa_tensor_free(ids), pa_tensor_free(hc), pa_tensor_free(hg);

  w = pa_weights_new("clip-mid"); /* both towers' synthetic weights, created once */
  pa_weights_set_autocreate(w, 13, 0.05f);
  for (int vision = 0; vision < 2; vision++) {
    pa_clip_config cc = vision ? pa_clip_vision_default_config() : pa_clip_text_default_config();
    cc.num_layers = 2;
    if (vision) cc.image_size = 56;
    int64_t L = vision ? 1 + (56 / cc.patch_size) * (56 / cc.patch_size) : 20;
    pa_tensor *in;
    if (vision) {
      in = RND(1, 1, 56, 56, 3);
    } else {
      in = pa_tensor_new_2d(PA_I64, 1, L);
      for (int i = 0; i < L; i++) ((int64_t *)in->data)[i] = i == 10 ? 49407 : 100 + i * 7;
    }
    pa_tensor *h1 = pa_tensor_new(PA_F32, 3, (const int64_t[]){1, L, cc.hidden_size}), *h2 = pa_tensor_new_like(h1);
    pa_tensor *e1 = pa_tensor_new_2d(PA_F32, 1, cc.projection_dim), *e2 = pa_tensor_new_like(e1);
    CHECK_OK(clip_run(cpu, w, &cc, vision, in, h1, e1));
    CHECK_OK(clip_run(gpu, w, &cc, vision, in, h2, e2));
    row(vision ? "clip-vision-mid hidden (2 layers)" : "clip-text-mid hidden (2 layers)", vision ? "[1, 17, 1280]" : "[1, 20, 1024]",
        relerr_host(h2, h1), TOL_BF16, "");
    row(vision ? "clip-vision-mid embeds" : "clip-text-mid embeds", "[1, 1024]", relerr_host(e2, e1), TOL_BF16, "");
    pa_tensor_free(in), pa_tensor_free(h1), pa_tensor_free(h2), pa_tensor_free(e1), pa_tensor_free(e2);
  }
  pa_weights_free(w);
}

static int prior_run(pa_backend *be, pa_weights *w, const pa_prior_config *cfg, const pa_tensor *xh,
                     const pa_tensor *ch, pa_tensor *out) {
  int rc = PA_OK;
  pa_prior *m = NULL;
  pa_tensor *x = pa_upload(be, xh), *c = pa_upload(be, ch), *p = pa_alloc(be, PA_F32, 2, out->shape);
  float r[2] = {0.9f, 0.2f};
  if (!x || !c || !p) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_prior_load(be, w, cfg, &m));
  PA_TRY(pa_prior_forward(m, x, r, c, p));
  PA_TRY(be->to_host(be, out, p));
fail:
  pa_prior_free(m);
  pa_release(be, x), pa_release(be, c), pa_release(be, p);
  return rc;
}

static int vqgan_run(pa_backend *be, pa_weights *w, const pa_vqgan_config *cfg, const pa_tensor *idx_h, pa_tensor *img_h) {
  int rc = PA_OK;
  pa_vqgan *m = NULL;
  pa_tensor *idx = pa_upload(be, idx_h), *img = pa_alloc(be, PA_F32, 4, img_h->shape);
  if (!idx || !img) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_vqgan_load(be, w, cfg, &m));
  PA_TRY(pa_vqgan_decode_indices(m, idx, img));
  PA_TRY(be->to_host(be, img_h, img));
fail:
  pa_vqgan_free(m);
  pa_release(be, idx), pa_release(be, img);
  return rc;
}

static void t_prior_vqgan_mid(void) {
  pa_prior_config pc = pa_prior_default_config();
  pc.num_blocks = 2;
  pa_weights *w = pa_weights_new("prior-mid");
  pa_weights_set_autocreate(w, 17, 0.05f);
  pa_tensor *x = RND(1, 2, pc.clip_r), *c = RND(1, 2, pc.clip_r), *p1 = like_cpu(x), *p2 = like_cpu(x);
  CHECK_OK(prior_run(cpu, w, &pc, x, c, p1));
  CHECK_OK(prior_run(gpu, w, &pc, x, c, p2));
  row("prior-mid (real widths, 2 blocks)", "[2, 1024]", relerr_host(p2, p1), TOL_BF16, "");
  pa_weights_free(w), pa_tensor_free(x), pa_tensor_free(c), pa_tensor_free(p1), pa_tensor_free(p2);

  pa_vqgan_config vc = pa_vqgan_default_config();
  vc.bottleneck_blocks = 2;
  w = pa_weights_new("vqgan-mid");
  pa_weights_set_autocreate(w, 19, 0.05f);
  pa_tensor *idx = pa_tensor_new(PA_I64, 3, (const int64_t[]){1, 8, 8});
  for (int i = 0; i < 64; i++) ((int64_t *)idx->data)[i] = (i * 977) % vc.codebook_size;
  pa_tensor *i1 = pa_tensor_new(PA_F32, 4, (const int64_t[]){1, 32, 32, 3}), *i2 = pa_tensor_new_like(i1);
  CHECK_OK(vqgan_run(cpu, w, &vc, idx, i1));
  CHECK_OK(vqgan_run(gpu, w, &vc, idx, i2));
  row("vqgan-mid decode (real widths, 2 bottleneck)", "[1, 8, 8] -> [1, 32, 32, 3]", relerr_host(i2, i1), TOL_BF16, "");
  pa_weights_free(w), pa_tensor_free(idx), pa_tensor_free(i1), pa_tensor_free(i2);
}

int main(void) {
  if (pa_cuda_device_count() < 1) {
    printf("SKIP: no CUDA device\n");
    return SKIP_CODE;
  }
  cpu = pa_cpu_backend();
  gpu = pa_backend_by_name("cuda");
  if (!gpu) {
    printf("SKIP: no usable CUDA device: %s\n", pa_errmsg());
    return SKIP_CODE;
  }
  char dev[128] = "?";
  pa_cuda_device_name(dev, sizeof dev);
  const char *prec = getenv("PAELLA_CUDA_PRECISION");
  printf("device: %s; GEMM precision %s\n", dev, prec ? prec : "bf16");
  printf("%-34s %-28s %10s %9s\n", "op", "shape", "max-rel", "tol");
  t_linear("linear", 3 * 37, 96, 200, PA_ACT_NONE, false);
  t_linear("linear(gelu)", 256, 1280, 5120, PA_ACT_GELU, false);
  t_linear("linear(gelu_tanh, param)", 77, 2560, 6720, PA_ACT_GELU_TANH, true);
  t_linear("linear(silu, param, odd)", 5, 13, 7, PA_ACT_SILU, true);
  t_norms();
  t_elementwise();
  t_conv("conv2d(depthwise 3x3)", 2, 16, 640, 640, 3, (pa_conv_params){.stride = 1, .pad = 1, .groups = 640});
  t_conv("conv2d(grouped 3x3)", 2, 12, 32, 64, 3, (pa_conv_params){.stride = 1, .pad = 1, .groups = 4});
  t_conv("conv2d(3x3 zero pad)", 2, 16, 64, 128, 3, (pa_conv_params){.stride = 1, .pad = 1, .groups = 1});
  t_conv("conv2d(3x3 replicate pad)", 1, 16, 48, 96, 3,
         (pa_conv_params){.stride = 1, .pad = 1, .groups = 1, .pad_mode = PA_PAD_REPLICATE});
  t_conv("conv2d(2x2 stride 2)", 2, 16, 640, 1280, 2, (pa_conv_params){.stride = 2, .pad = 0, .groups = 1});
  t_conv("conv2d(1x1)", 2, 8, 256, 640, 1, (pa_conv_params){.stride = 1, .pad = 0, .groups = 1});
  t_conv("conv2d(4x4 stride 2 pad 1)", 1, 16, 24, 32, 4, (pa_conv_params){.stride = 2, .pad = 1, .groups = 1});
  t_convt("conv_transpose2d(2x2 stride 2)", 2, 8, 1280, 640, 2, (pa_conv_params){.stride = 2, .pad = 0, .groups = 1});
  t_convt("conv_transpose2d(4x4 s2 p1)", 1, 8, 32, 24, 4, (pa_conv_params){.stride = 2, .pad = 1, .groups = 1});
  t_layout();
  t_attention("attention(self+cond, key weights)", 2, 256, 256 + 85, 1280, 16, false, false, 85);
  t_attention("attention(t5 pos bias)", 2, 64, 64, 256, 4, false, true, 0);
  t_attention("attention(clip causal)", 2, 77, 77, 1024, 16, true, false, 0);
  t_attention("attention(long keys)", 1, 40, 3000, 128, 2, false, false, 0);
  t_attention_padded();
  t_attention_fused();
  t_vq();
  t_gumbel();
  t_sampler(false);
  t_sampler(true);
  t_diffuzz(false);
  t_diffuzz(true);
  t_golden("paella_tiny.safetensors", "paella");
  t_golden("vqgan_tiny.safetensors", "vqgan");
  t_golden("prior_tiny.safetensors", "prior");
  t_golden("t5_tiny.safetensors", "t5");
  t_golden("clip_text_tiny.safetensors", "clip-text");
  t_golden("clip_vision_tiny.safetensors", "clip-vision");
  t_paella_mid();
  t_encoders_mid();
  t_prior_vqgan_mid();
  size_t live = 0, cached = 0;
  pa_cuda_memory(gpu, &live, &cached);
  printf("device memory: %zu MiB live, %zu MiB cached\n", live >> 20, cached >> 20);
  printf("naive GEMM fallbacks: %lld calls\n", (long long)pa_cuda_gemm_fallbacks(gpu));
  TEST_END();
}
