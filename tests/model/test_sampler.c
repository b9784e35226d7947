/* The v3 sampler's deterministic pieces vs tests/golden/sampler_math.safetensors and
 * paella_noise.safetensors, Philox against the Random123 known-answer vectors, and the
 * Gumbel-max draw against the softmax it must sample from. */
#include <stdio.h>
#include <string.h>

#include "model/nn.h"
#include "model/sampler.h"
#include "ops/rng.h"
#include "ops/weights.h"
#include "tests/golden.h"
#include "tests/test.h"

static pa_weights *g;

static const float *gf(const char *name) {
  const pa_tensor *t;
  return pa_weights_get_any(g, &t, "%s", name) == PA_OK ? t->data : NULL;
}

static void test_philox(void) {
  struct { uint32_t ctr[4]; uint64_t key; uint32_t want[4]; } kat[] = {
      {{0, 0, 0, 0}, 0, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, 0xffffffffffffffffull, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, 0x299f31d0a4093822ull, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (int i = 0; i < 3; i++) {
    uint32_t out[4];
    pa_philox4x32(kat[i].ctr, kat[i].key, out);
    CHECK_MSG(memcmp(out, kat[i].want, sizeof out) == 0, "philox KAT %d: %08x %08x %08x %08x", i, out[0], out[1], out[2], out[3]);
  }
}

/* The open uniforms stay inside (0, 1), so every Gumbel score is finite. */
static void test_uniform_bounds(void) {
  float lo = pa_u32_to_uniform_open(0), hi = pa_u32_to_uniform_open(0xffffffffu);
  CHECK(lo > 0.0f && hi < 1.0f);
  CHECK(isfinite(pa_gumbel(lo)) && isfinite(pa_gumbel(hi)));
  CHECK(pa_u32_to_uniform(0xffffffffu) < 1.0f);
}

static void test_schedules(void) {
  pa_sampler_config c = pa_sampler_default_config();
  float t[13], temp[12], cfg[12];
  pa_sampler_schedules(&c, t, temp, cfg);
  CHECK(memcmp(t, gf("out.t_list"), sizeof t) == 0); /* bit-exact with torch.linspace */
  CHECK(memcmp(cfg, gf("out.cfgs"), sizeof cfg) == 0);
  int differ = 0;
  for (int i = 0; i < 12; i++) {
    float want = gf("out.temperatures")[i];
    CHECK_MSG(fabsf(temp[i] - want) <= nextafterf(want, 1.0f) - want, "temperature %d: %a vs %a", i, temp[i], want);
    differ += temp[i] != want;
  }
  CHECK(differ <= 1); /* torch's vectorised chunk rounds index 8 differently (docs/sampler.md) */
  /* r-embedding of the real model (c_r = 64) at the golden t values */
  pa_tensor *e = pa_r_embedding(gf("out.t_list"), 13, 64);
  double err = golden_rel_err(e, pa_weights_find(g, "out.r_embed_c_r64_tlist_f64"));
  printf("r_embed c_r=64 at t_list: rel err %.3e\n", err);
  CHECK(err <= 1e-6);
  pa_tensor_free(e);
}

/* (B, K, H, W) NCHW golden tensor -> rows (B*H*W, K) */
static void to_rows(const float *nchw, int B, int K, int H, int W, float *rows) {
  for (int b = 0; b < B; b++)
    for (int k = 0; k < K; k++)
      for (int p = 0; p < H * W; p++) rows[(b * H * W + p) * K + k] = nchw[(b * K + k) * H * W + p];
}

static void test_cfg_softmax_typical(void) {
  enum { B = 2, K = 16, H = 3, W = 4, N = B * H * W };
  float cond[N * K], unc[N * K], probs[N * K];
  to_rows(gf("in.logits_cond"), B, K, H, W, cond);
  to_rows(gf("in.logits_uncond"), B, K, H, W, unc);
  pa_sampler_cfg(cond, unc, N * K, gf("in.cfg")[0]);
  pa_tensor *y = pa_tensor_wrap(PA_F32, 2, (const int64_t[]){N, K}, cond);
  pa_tensor *r = pa_tensor_new(PA_F64, 2, (const int64_t[]){N, K});
  const double *f64 = pa_weights_find(g, "out.cfg_logits_f64")->data;
  for (int b = 0; b < B; b++)
    for (int k = 0; k < K; k++)
      for (int p = 0; p < H * W; p++) ((double *)r->data)[(b * H * W + p) * K + k] = f64[(b * K + k) * H * W + p];
  double e = golden_rel_err(y, r);
  printf("cfg logits: rel err %.3e\n", e);
  CHECK(e <= 1e-6);
  const char *names[2] = {"out.scores_t0_f64", "out.scores_tlast_f64"};
  float temps[2];
  pa_sampler_config c = pa_sampler_default_config();
  float tl[12];
  pa_sampler_schedules(&c, NULL, tl, NULL);
  temps[0] = tl[0];
  temps[1] = tl[11];
  for (int s = 0; s < 2; s++) {
    for (int n = 0; n < N; n++) pa_softmax_row(cond + n * K, K, temps[s], probs + n * K);
    const double *sf = pa_weights_find(g, names[s])->data;
    for (int b = 0; b < B; b++)
      for (int k = 0; k < K; k++)
        for (int p = 0; p < H * W; p++) ((double *)r->data)[(b * H * W + p) * K + k] = sf[(b * K + k) * H * W + p];
    pa_tensor *pt = pa_tensor_wrap(PA_F32, 2, (const int64_t[]){N, K}, probs);
    e = golden_rel_err(pt, r);
    printf("%s: rel err %.3e\n", names[s], e);
    CHECK(e <= 1e-4);
    pa_tensor_free(pt);
  }
  /* typical filtering: kept entries copied, dropped = -inf, keep mask exact */
  float typ[N * K];
  int32_t keep[N * K];
  to_rows(gf("in.typical_logits"), B, K, H, W, typ);
  for (int n = 0; n < N; n++) CHECK_OK(pa_typical_filter(typ + n * K, K, 0.2f, 1, keep + n * K));
  const pa_tensor *wk = pa_weights_find(g, "out.typical_keep"), *wf = pa_weights_find(g, "out.typical_filtered");
  CHECK(memcmp(keep, wk->data, sizeof keep) == 0);
  CHECK(memcmp(typ, wf->data, sizeof typ) == 0);
  pa_tensor_free(y);
  pa_tensor_free(r);
}

static void test_add_noise(void) {
  pa_weights *n;
  CHECK_OK(pa_safetensors_open(PAELLA_GOLDEN_DIR "/paella_noise.safetensors", &n));
  const pa_tensor *x = pa_weights_find(n, "in.x"), *t = pa_weights_find(n, "in.t"), *m = pa_weights_find(n, "in.mask");
  const pa_tensor *rx = pa_weights_find(n, "in.random_x"), *u = pa_weights_find(n, "in.u");
  int64_t B = x->shape[0], P = x->shape[1] * x->shape[2];
  int64_t out[70], mask[70];
  for (int64_t b = 0; b < B; b++) { /* explicit mask: u = 0 where mask else 2 */
    float uu[35];
    for (int64_t p = 0; p < P; p++) uu[p] = ((const int64_t *)m->data)[b * P + p] ? 0.0f : 2.0f;
    pa_add_noise((const int64_t *)x->data + b * P, uu, (const int64_t *)rx->data + b * P, 1.0f, P, out + b * P, NULL);
  }
  CHECK(memcmp(out, pa_weights_find(n, "out.x")->data, (size_t)(B * P) * 8) == 0);
  for (int64_t b = 0; b < B; b++)
    pa_add_noise((const int64_t *)x->data + b * P, (const float *)u->data + b * P, (const int64_t *)rx->data + b * P,
                 ((const float *)t->data)[b], P, out + b * P, mask + b * P);
  CHECK(memcmp(mask, pa_weights_find(n, "out.mask_from_u")->data, (size_t)(B * P) * 8) == 0);
  CHECK(memcmp(out, pa_weights_find(n, "out.x_from_u")->data, (size_t)(B * P) * 8) == 0);
  pa_weights_free(n);
}

/* Gumbel-max frequencies match softmax(logits / temp) */
static void test_draw_distribution(void) {
  enum { K = 4, N = 40000 };
  static float logits[N * K];
  static int64_t tok[N];
  const float row[K] = {1.0f, 0.2f, -0.5f, 0.9f};
  for (int n = 0; n < N; n++) memcpy(logits + n * K, row, sizeof row);
  float probs[K];
  pa_softmax_row(row, K, 0.7f, probs);
  pa_sampler_draw(logits, N, K, 0.7f, PA_SAMPLE_MULTINOMIAL, 1234, 3, tok);
  int count[K] = {0};
  for (int n = 0; n < N; n++) count[tok[n]]++;
  for (int k = 0; k < K; k++) {
    double f = (double)count[k] / N, sd = sqrt(probs[k] * (1 - probs[k]) / N);
    CHECK_MSG(fabs(f - probs[k]) < 5 * sd, "class %d: freq %.4f vs p %.4f", k, f, probs[k]);
  }
  int64_t again[N];
  pa_sampler_draw(logits, N, K, 0.7f, PA_SAMPLE_MULTINOMIAL, 1234, 3, again);
  CHECK(memcmp(tok, again, sizeof again) == 0); /* same seed, step: same draw */
  pa_sampler_draw(logits, N, K, 0.7f, PA_SAMPLE_MULTINOMIAL, 1235, 3, again);
  CHECK(memcmp(tok, again, sizeof again) != 0);
  pa_sampler_draw(logits, 8, K, 0.7f, PA_SAMPLE_ARGMAX, 1, 0, again);
  for (int n = 0; n < 8; n++) CHECK(again[n] == 0);
}

int main(void) {
  CHECK_OK(pa_safetensors_open(PAELLA_GOLDEN_DIR "/sampler_math.safetensors", &g));
  if (!g) TEST_END();
  test_philox();
  test_uniform_bounds();
  test_schedules();
  test_cfg_softmax_typical();
  test_add_noise();
  test_draw_distribution();
  pa_weights_free(g);
  TEST_END();
}
