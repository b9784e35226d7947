/* Every CPU op against a naive float64 re-implementation written here from the PyTorch
 * semantics it stands for, on small random tensors with odd sizes; plus the shape checks of
 * the wrappers. */
#include <stdio.h>
#include <string.h>

#include "ops/ops.h"
#include "ops/parse.h"
#include "tests/test.h"

static pa_backend *be;
static uint64_t rng = 88172645463325252ull;

static float frand(void) { /* xorshift64*, uniform in [-1, 1) */
  rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
  return (float)((rng * 2685821657736338717ull) >> 40) / (float)(1 << 23) - 1.0f;
}

static pa_tensor *rnd(int nd, const int64_t *s) {
  pa_tensor *t = pa_tensor_new(PA_F32, nd, s);
  for (int64_t i = 0; i < pa_numel(t); i++) ((float *)t->data)[i] = frand();
  return t;
}
#define T(...) rnd((int)(sizeof((int64_t[]){__VA_ARGS__}) / 8), (const int64_t[]){__VA_ARGS__})
#define Z(...) pa_tensor_new(PA_F32, (int)(sizeof((int64_t[]){__VA_ARGS__}) / 8), (const int64_t[]){__VA_ARGS__})

/* max |y - ref| / max |ref| against a double reference array */
static double err(const pa_tensor *y, const double *ref) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < pa_numel(y); i++) {
    num = fmax(num, fabs(((float *)y->data)[i] - ref[i]));
    den = fmax(den, fabs(ref[i]));
  }
  return den > 0 ? num / den : num;
}

#define EXPECT(name, y, ref, tol)                                        \
  do {                                                                   \
    double e_ = err(y, ref);                                             \
    CHECK_MSG(e_ <= (tol), "%s: rel err %.3e > %.1e", name, e_, (double)(tol)); \
  } while (0)

static double gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static double gelu_tanh(double x) { return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }
static double act(double x, pa_act a) {
  return a == PA_ACT_GELU ? gelu(x) : a == PA_ACT_GELU_TANH ? gelu_tanh(x) : a == PA_ACT_SILU ? x / (1 + exp(-x)) : x;
}
#define F(t) ((const float *)(t)->data)

static void test_linear_activation(void) {
  pa_act acts[] = {PA_ACT_NONE, PA_ACT_GELU, PA_ACT_GELU_TANH, PA_ACT_SILU};
  pa_tensor *x = T(3, 5, 7), *w = T(11, 7), *b = T(11), *y = Z(3, 5, 11);
  double ref[165];
  for (int a = 0; a < 4; a++) {
    CHECK_OK(pa_linear(be, y, x, w, a % 2 ? b : NULL, acts[a]));
    for (int r = 0; r < 15; r++)
      for (int o = 0; o < 11; o++) {
        double s = a % 2 ? F(b)[o] : 0;
        for (int k = 0; k < 7; k++) s += (double)F(x)[r * 7 + k] * F(w)[o * 7 + k];
        ref[r * 11 + o] = act(s, acts[a]);
      }
    EXPECT("linear", y, ref, 1e-5);
    pa_tensor *ya = Z(3, 5, 7);
    CHECK_OK(pa_activation(be, ya, x, acts[a]));
    double ra[105];
    for (int i = 0; i < 105; i++) ra[i] = act(F(x)[i], acts[a]);
    EXPECT("activation", ya, ra, 1e-6);
    pa_tensor_free(ya);
  }
  pa_tensor *bad = Z(3, 5, 10);
  CHECK(pa_linear(be, bad, x, w, b, PA_ACT_NONE) == PA_ERR_SHAPE);
  pa_tensor_free(bad);
  pa_tensor_free(x), pa_tensor_free(w), pa_tensor_free(b), pa_tensor_free(y);
}

static void test_norms(void) {
  pa_tensor *x = T(4, 3, 9), *g = T(9), *b = T(9), *y = Z(4, 3, 9);
  double ref[108];
  for (int affine = 0; affine < 2; affine++) {
    CHECK_OK(pa_layernorm(be, y, x, affine ? g : NULL, affine ? b : NULL, 1e-5f));
    for (int r = 0; r < 12; r++) {
      double m = 0, v = 0;
      for (int c = 0; c < 9; c++) m += F(x)[r * 9 + c] / 9.0;
      for (int c = 0; c < 9; c++) v += pow(F(x)[r * 9 + c] - m, 2) / 9.0; /* biased */
      for (int c = 0; c < 9; c++) {
        double n = (F(x)[r * 9 + c] - m) / sqrt(v + 1e-5);
        ref[r * 9 + c] = affine ? n * F(g)[c] + F(b)[c] : n;
      }
    }
    EXPECT("layernorm", y, ref, 1e-6);
  }
  CHECK_OK(pa_rmsnorm(be, y, x, g, 1e-6f));
  for (int r = 0; r < 12; r++) {
    double ss = 0;
    for (int c = 0; c < 9; c++) ss += pow(F(x)[r * 9 + c], 2) / 9.0;
    for (int c = 0; c < 9; c++) ref[r * 9 + c] = F(x)[r * 9 + c] / sqrt(ss + 1e-6) * F(g)[c];
  }
  EXPECT("rmsnorm", y, ref, 1e-6);
  /* GRN on (B, H, W, C): L2 over H, W; divided by the channel mean (+1e-6 outside the sqrt) */
  pa_tensor *x4 = T(2, 3, 5, 6), *gg = T(6), *gb = T(6), *y4 = Z(2, 3, 5, 6);
  CHECK_OK(pa_grn(be, y4, x4, gg, gb));
  double r4[180];
  for (int bb = 0; bb < 2; bb++) {
    double G[6], mean = 0;
    for (int c = 0; c < 6; c++) {
      G[c] = 0;
      for (int p = 0; p < 15; p++) G[c] += pow(F(x4)[(bb * 15 + p) * 6 + c], 2);
      mean += (G[c] = sqrt(G[c])) / 6;
    }
    for (int p = 0; p < 15; p++)
      for (int c = 0; c < 6; c++) {
        double v = F(x4)[(bb * 15 + p) * 6 + c];
        r4[(bb * 15 + p) * 6 + c] = F(gg)[c] * (v * G[c] / (mean + 1e-6)) + F(gb)[c] + v;
      }
  }
  EXPECT("grn", y4, r4, 1e-6);
  pa_tensor *ca = Z(2, 3, 5, 6);
  CHECK_OK(pa_channel_affine(be, ca, x4, gg, gb));
  for (int i = 0; i < 180; i++) r4[i] = F(x4)[i] * F(gg)[i % 6] + F(gb)[i % 6];
  EXPECT("channel_affine", ca, r4, 1e-7);
  pa_tensor *am = T(2, 12), *mo = Z(2, 3, 5, 6); /* TimestepBlock: x*(1+a)+b */
  CHECK_OK(pa_modulate(be, mo, x4, am));
  for (int i = 0; i < 180; i++) {
    int bb = i / 90, c = i % 6;
    r4[i] = F(x4)[i] * (1 + F(am)[bb * 12 + c]) + F(am)[bb * 12 + 6 + c];
  }
  EXPECT("modulate", mo, r4, 1e-6);
  pa_tensor *sum = Z(2, 3, 5, 6), *prod = Z(2, 3, 5, 6), *aff = Z(2, 3, 5, 6);
  CHECK_OK(pa_add(be, sum, x4, y4, -0.5f));
  CHECK_OK(pa_mul(be, prod, x4, y4));
  CHECK_OK(pa_affine(be, aff, x4, 1.5f, -0.25f));
  double rs[180], rp[180], ra[180];
  for (int i = 0; i < 180; i++)
    rs[i] = F(x4)[i] - 0.5 * F(y4)[i], rp[i] = (double)F(x4)[i] * F(y4)[i], ra[i] = F(x4)[i] * 1.5 - 0.25;
  EXPECT("add", sum, rs, 1e-7);
  EXPECT("mul", prod, rp, 1e-7);
  EXPECT("affine", aff, ra, 1e-7);
  pa_tensor *ts[] = {x, g, b, y, x4, gg, gb, y4, ca, am, mo, sum, prod, aff};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_tensor_free(ts[i]);
}

/* direct NHWC conv reference: w (O, I/g, kh, kw) */
static void conv_ref(const pa_tensor *x, const pa_tensor *w, const pa_tensor *b, pa_conv_params p, int64_t Ho,
                     int64_t Wo, double *ref) {
  int64_t B = x->shape[0], H = x->shape[1], W = x->shape[2], Ci = x->shape[3], O = w->shape[0], Ig = w->shape[1];
  int64_t kh = w->shape[2], kw = w->shape[3], Og = O / p.groups;
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t oy = 0; oy < Ho; oy++)
      for (int64_t ox = 0; ox < Wo; ox++)
        for (int64_t o = 0; o < O; o++) {
          double s = b ? F(b)[o] : 0;
          for (int64_t j = 0; j < Ig; j++)
            for (int64_t ky = 0; ky < kh; ky++)
              for (int64_t kx = 0; kx < kw; kx++) {
                int64_t iy = oy * p.stride - p.pad + ky, ix = ox * p.stride - p.pad + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) {
                  if (p.pad_mode == PA_PAD_ZERO) continue;
                  iy = iy < 0 ? 0 : iy >= H ? H - 1 : iy;
                  ix = ix < 0 ? 0 : ix >= W ? W - 1 : ix;
                }
                int64_t ci = (o / Og) * Ig + j;
                s += (double)F(x)[((bb * H + iy) * W + ix) * Ci + ci] * F(w)[((o * Ig + j) * kh + ky) * kw + kx];
              }
          ref[((bb * Ho + oy) * Wo + ox) * O + o] = s;
        }
}

static void test_conv(void) {
  struct {
    int64_t C, O, Ig, k;
    pa_conv_params p;
  } cases[] = {
      {5, 7, 5, 3, {1, 1, 1, PA_PAD_ZERO}},      /* dense 3x3 */
      {6, 4, 6, 4, {2, 1, 1, PA_PAD_ZERO}},      /* VQGAN 4x4 stride 2 */
      {6, 6, 6, 2, {2, 0, 1, PA_PAD_ZERO}},      /* Paella 2x2 downsample */
      {5, 3, 5, 1, {1, 0, 1, PA_PAD_ZERO}},      /* 1x1 */
      {6, 6, 1, 3, {1, 1, 6, PA_PAD_ZERO}},      /* depthwise */
      {6, 6, 1, 3, {1, 1, 6, PA_PAD_REPLICATE}}, /* VQGAN depthwise, edge replication */
      {8, 4, 2, 5, {1, 2, 4, PA_PAD_ZERO}},      /* grouped with skip: 2 inputs per group, k5 */
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    pa_conv_params p = cases[c].p;
    int64_t k = cases[c].k, H = 7, W = 6;
    pa_tensor *x = T(2, H, W, cases[c].C), *w = T(cases[c].O, cases[c].Ig, k, k), *b = T(cases[c].O);
    int64_t Ho = pa_conv_out(H, (int)k, p), Wo = pa_conv_out(W, (int)k, p);
    pa_tensor *y = Z(2, Ho, Wo, cases[c].O);
    double *ref = malloc((size_t)pa_numel(y) * sizeof *ref);
    CHECK_OK(pa_conv2d(be, y, x, w, b, p));
    conv_ref(x, w, b, p, Ho, Wo, ref);
    char name[32];
    snprintf(name, sizeof name, "conv2d case %zu", c);
    EXPECT(name, y, ref, 1e-5);
    free(ref);
    pa_tensor_free(x), pa_tensor_free(w), pa_tensor_free(b), pa_tensor_free(y);
  }
  /* transposed conv, w (I, O, kh, kw): y[o, s*h - p + i, s*w - p + j] += x[c,h,w] W[c,o,i,j] */
  int64_t ks[] = {2, 4}, pads[] = {0, 1};
  for (int c = 0; c < 2; c++) {
    pa_conv_params p = {2, (int)pads[c], 1, PA_PAD_ZERO};
    int64_t H = 3, W = 5, I = 4, O = 3, k = ks[c], Ho = pa_convt_out(H, (int)k, p), Wo = pa_convt_out(W, (int)k, p);
    pa_tensor *x = T(2, H, W, I), *w = T(I, O, k, k), *b = T(O), *y = Z(2, Ho, Wo, O);
    double *ref = calloc((size_t)pa_numel(y), sizeof *ref);
    CHECK_OK(pa_conv_transpose2d(be, y, x, w, b, p));
    for (int64_t bb = 0; bb < 2; bb++)
      for (int64_t i = 0; i < Ho * Wo; i++)
        for (int64_t o = 0; o < O; o++) ref[(bb * Ho * Wo + i) * O + o] = F(b)[o];
    for (int64_t bb = 0; bb < 2; bb++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t ww = 0; ww < W; ww++)
          for (int64_t ci = 0; ci < I; ci++)
            for (int64_t o = 0; o < O; o++)
              for (int64_t i = 0; i < k; i++)
                for (int64_t j = 0; j < k; j++) {
                  int64_t oy = 2 * h - p.pad + i, ox = 2 * ww - p.pad + j;
                  if (oy < 0 || oy >= Ho || ox < 0 || ox >= Wo) continue;
                  ref[((bb * Ho + oy) * Wo + ox) * O + o] +=
                      (double)F(x)[((bb * H + h) * W + ww) * I + ci] * F(w)[((ci * O + o) * k + i) * k + j];
                }
    EXPECT("conv_transpose2d", y, ref, 1e-5);
    free(ref);
    pa_tensor_free(x), pa_tensor_free(w), pa_tensor_free(b), pa_tensor_free(y);
  }
  pa_tensor *x = T(1, 4, 4, 3), *w = T(2, 3, 3, 3), *bad = Z(1, 4, 4, 3);
  CHECK(pa_conv2d(be, bad, x, w, NULL, (pa_conv_params){1, 1, 1, PA_PAD_ZERO}) == PA_ERR_SHAPE);
  pa_tensor_free(x), pa_tensor_free(w), pa_tensor_free(bad);
}

static void test_layout(void) {
  int p = 2;
  pa_tensor *x = T(2, 4, 6, 3), *u = Z(2, 2, 3, 12), *back = Z(2, 4, 6, 3);
  CHECK_OK(pa_pixel_unshuffle(be, u, x, p));
  double ref[144];
  /* PyTorch: out[b, c*p*p + i*p + j, h, w] = in[b, c, h*p + i, w*p + j] */
  for (int b = 0; b < 2; b++)
    for (int h = 0; h < 2; h++)
      for (int w = 0; w < 3; w++)
        for (int c = 0; c < 3; c++)
          for (int i = 0; i < p; i++)
            for (int j = 0; j < p; j++)
              ref[((b * 2 + h) * 3 + w) * 12 + c * 4 + i * 2 + j] = F(x)[((b * 4 + h * 2 + i) * 6 + w * 2 + j) * 3 + c];
  EXPECT("pixel_unshuffle", u, ref, 0);
  CHECK_OK(pa_pixel_shuffle(be, back, u, p));
  CHECK(memcmp(back->data, x->data, pa_nbytes(x)) == 0);
  pa_tensor *a = T(2, 3, 4), *b = T(2, 5, 4), *c1 = Z(2, 8, 4), *d = T(2, 3, 2), *c2 = Z(2, 3, 6);
  CHECK_OK(pa_concat(be, c1, a, b, 1));
  CHECK(memcmp(c1->data, a->data, 48) == 0 && memcmp((float *)c1->data + 12, b->data, 80) == 0);
  CHECK_OK(pa_concat(be, c2, a, d, 2));
  for (int r = 0; r < 6; r++)
    CHECK(!memcmp((float *)c2->data + r * 6, F(a) + r * 4, 16) && !memcmp((float *)c2->data + r * 6 + 4, F(d) + r * 2, 8));
  CHECK(pa_concat(be, c1, a, d, 1) == PA_ERR_SHAPE);
  pa_tensor *cp = Z(2, 3, 4);
  CHECK_OK(pa_copy(be, cp, a));
  CHECK(memcmp(cp->data, a->data, pa_nbytes(a)) == 0);
  pa_tensor *ts[] = {x, u, back, a, b, c1, d, c2, cp};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_tensor_free(ts[i]);
}

static void test_embedding_vq(void) {
  pa_tensor *table = T(10, 4), *y = Z(5, 4), *ids = pa_tensor_new(PA_I64, 1, (const int64_t[]){5});
  int64_t want[5] = {3, 0, 9, 3, 7};
  memcpy(ids->data, want, sizeof want);
  CHECK_OK(pa_embedding(be, y, ids, table));
  for (int i = 0; i < 5; i++) CHECK(!memcmp(F(y) + i * 4, F(table) + want[i] * 4, 16));
  ((int64_t *)ids->data)[2] = 10;
  CHECK(pa_embedding(be, y, ids, table) == PA_ERR_INVALID); /* out of range: an error, not a read */
  /* vq: nearest codebook row by squared distance; rows = codebook rows + small noise */
  pa_tensor *z = Z(5, 4), *idx = pa_tensor_new(PA_I64, 1, (const int64_t[]){5});
  for (int i = 0; i < 5; i++)
    for (int c = 0; c < 4; c++) ((float *)z->data)[i * 4 + c] = F(table)[want[i] * 4 + c] + 0.001f * frand();
  CHECK_OK(pa_vq_nearest(be, idx, z, table));
  CHECK(memcmp(idx->data, want, sizeof want) == 0);
  pa_tensor_free(table), pa_tensor_free(y), pa_tensor_free(ids), pa_tensor_free(z), pa_tensor_free(idx);
}

static void test_attention(void) {
  int64_t B = 2, Lq = 5, Lk = 7, C = 12, H = 3, d = 4;
  pa_tensor *q = T(B, Lq, C), *k = T(B, Lk, C), *v = T(B, Lk, C), *y = Z(B, Lq, C);
  pa_tensor *bias = T(H, Lq, Lk), *kw = pa_tensor_new(PA_F32, 1, (const int64_t[]){3});
  float kwv[3] = {1.2f, 0.4f, 2.0f};
  memcpy(kw->data, kwv, sizeof kwv);
  for (int mode = 0; mode < 4; mode++) { /* plain, T5 bias, causal (Lq = Lk), key weights */
    int64_t lk = mode == 2 ? Lq : Lk;
    pa_tensor kk = pa_view(k, 3, (const int64_t[]){B, lk, C}), vv = pa_view(v, 3, (const int64_t[]){B, lk, C});
    pa_tensor *kc = mode == 2 ? Z(B, lk, C) : NULL, *vc = mode == 2 ? Z(B, lk, C) : NULL;
    if (mode == 2) { /* contiguous (B, Lq, C) slices of k and v */
      for (int64_t b = 0; b < B; b++) {
        memcpy((float *)kc->data + b * lk * C, F(k) + b * Lk * C, (size_t)(lk * C) * 4);
        memcpy((float *)vc->data + b * lk * C, F(v) + b * Lk * C, (size_t)(lk * C) * 4);
      }
      kk = *kc, vv = *vc;
    }
    pa_attn_params ap = {.nhead = (int)H, .scale = mode == 1 ? 1.0f : 0.5f, .causal = mode == 2,
                         .pos_bias = mode == 1 ? bias : NULL, .key_weight = mode == 3 ? kw : NULL};
    CHECK_OK(pa_attention(be, y, q, &kk, &vv, &ap));
    double ref[120];
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < Lq; i++) {
          double s[7], mx = -1e300, sum = 0;
          for (int64_t j = 0; j < lk; j++) {
            s[j] = 0;
            for (int64_t e = 0; e < d; e++) s[j] += (double)F(q)[(b * Lq + i) * C + h * d + e] * F(&kk)[(b * lk + j) * C + h * d + e];
            s[j] *= ap.scale;
            if (mode == 1) s[j] += F(bias)[(h * Lq + i) * Lk + j];
            if (mode == 2 && j > i) s[j] = -1e300;
            mx = fmax(mx, s[j]);
          }
          for (int64_t j = 0; j < lk; j++) sum += (s[j] = s[j] <= -1e299 ? 0 : exp(s[j] - mx));
          for (int64_t j = 0; j < lk; j++) s[j] /= sum;
          if (mode == 3) /* multiplied after the softmax, no renormalisation */
            for (int j = 0; j < 3; j++) s[lk - 3 + j] *= kwv[j];
          for (int64_t e = 0; e < d; e++) {
            double o = 0;
            for (int64_t j = 0; j < lk; j++) o += s[j] * F(&vv)[(b * lk + j) * C + h * d + e];
            ref[(b * Lq + i) * C + h * d + e] = o;
          }
        }
    char name[32];
    snprintf(name, sizeof name, "attention mode %d", mode);
    EXPECT(name, y, ref, 1e-5);
    pa_tensor_free(kc), pa_tensor_free(vc);
  }
  pa_attn_params bad = {.nhead = 5, .scale = 1};
  CHECK(pa_attention(be, y, q, k, v, &bad) == PA_ERR_SHAPE); /* 5 does not divide 12 */
  pa_tensor *ts[] = {q, k, v, y, bias, kw};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_tensor_free(ts[i]);
}

static void test_tensor_conversions(void) {
  /* bf16 round to nearest even, f16 incl. subnormals, NCHW <-> NHWC */
  CHECK(pa_f32_to_bf16(1.0f) == 0x3f80);
  CHECK(pa_bf16_to_f32(pa_f32_to_bf16(3.140625f)) == 3.140625f);
  CHECK(pa_f32_to_bf16(1.00390625f) == 0x3f80); /* tie -> even */
  CHECK(pa_f16_to_f32(pa_f32_to_f16(0.333251953125f)) == 0.333251953125f);
  CHECK(pa_f16_to_f32(0x0001) == ldexpf(1, -24));
  CHECK(pa_f32_to_f16(65520.0f) == 0x7c00);
  pa_tensor *x = T(2, 3, 4, 5), *n = pa_nchw_to_nhwc(x), *back = pa_nhwc_to_nchw(n);
  CHECK(n->shape[1] == 4 && n->shape[3] == 3);
  CHECK(F(n)[((1 * 4 + 2) * 5 + 3) * 3 + 1] == F(x)[((1 * 3 + 1) * 4 + 2) * 5 + 3]);
  CHECK(memcmp(back->data, x->data, pa_nbytes(x)) == 0);
  pa_tensor_free(x), pa_tensor_free(n), pa_tensor_free(back);
}

static void test_parse(void) {
  int v = 7;
  CHECK(pa_parse_int("42", 0, 100, &v) == 0 && v == 42);
  CHECK(pa_parse_int("-3", -5, 5, &v) == 0 && v == -3);
  CHECK(pa_parse_int("101", 0, 100, &v) == -1 && v == -3);
  CHECK(pa_parse_int("4x", 0, 100, &v) == -1);
  CHECK(pa_parse_int("", 0, 100, &v) == -1);
  CHECK(pa_parse_int("99999999999999999999", 0, 100, &v) == -1);
}

int main(void) {
  be = pa_cpu_backend();
  test_parse();
  test_linear_activation();
  test_norms();
  test_conv();
  test_layout();
  test_embedding_vq();
  test_attention();
  test_tensor_conversions();
  TEST_END();
}
