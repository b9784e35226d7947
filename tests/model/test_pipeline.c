/* The generation pipeline on the embedded model's architecture with random weights (their
 * high-entropy images make "differs" and "kept" properties sharp; the trained weights are
 * tested in test_default_quality.c): each capability by its defining property. */
#include <stdio.h>
#include <string.h>

#include "model/pipeline.h"
#include "tests/test.h"

#define S 64 /* image side: a 16x16 token grid */

static pa_pipeline *p;

static pa_gen_request req(const char *prompt, uint64_t seed) {
  pa_gen_request r = pa_gen_request_default();
  r.prompt = prompt;
  r.width = r.height = S;
  r.seed = seed;
  r.sampler.steps = 4;
  r.sampler.renoise_steps = 3;
  r.sampler.cond_steps = 4;
  r.prior_steps = 3;
  return r;
}

static int64_t *gen(const pa_gen_request *r, pa_gen_result *out) {
  int rc = pa_generate(p, r, out);
  CHECK_MSG(rc == PA_OK, "pa_generate: %s", pa_errmsg());
  return rc == PA_OK ? out->tokens : NULL;
}

static const int64_t N = (S / 4) * (S / 4);

static void test_determinism_and_batch(void) {
  pa_gen_result a, b, c, d;
  pa_gen_request r = req("a red fox", 7);
  int64_t *ta = gen(&r, &a), *tb = gen(&r, &b);
  CHECK(ta && tb && memcmp(ta, tb, N * sizeof *ta) == 0);
  r.seed = 8;
  int64_t *tc = gen(&r, &c);
  int same = 0;
  for (int64_t q = 0; tc && ta && q < N; q++) same += ta[q] == tc[q];
  CHECK_MSG(same < N / 4, "seed 7 and 8 share %d of %lld tokens", same, (long long)N);
  /* image 1 of a batch seeded 7 is the image seeded 8 */
  r.seed = 7;
  r.batch = 2;
  int64_t *td = gen(&r, &d);
  int agree = 0;
  for (int64_t q = 0; td && tc && q < N; q++) agree += td[N + q] == tc[q];
  printf("batch composition: %d / %lld tokens agree\n", agree, (long long)N);
  CHECK(agree >= N * 99 / 100);
  int agree0 = 0;
  for (int64_t q = 0; td && ta && q < N; q++) agree0 += td[q] == ta[q];
  CHECK(agree0 >= N * 99 / 100);
  CHECK(a.n == 1 && a.images[0]->width == S && a.images[0]->height == S);
  CHECK(a.seconds_prior > 0 && a.seconds_encode > 0 && a.seconds_denoise > 0 && a.seconds_decode > 0);
  pa_gen_result_free(&a);
  pa_gen_result_free(&b);
  pa_gen_result_free(&c);
  pa_gen_result_free(&d);
}

static pa_image *input_image(void) {
  pa_gen_result g;
  pa_gen_request r = req("an input picture", 99);
  gen(&r, &g);
  pa_image *img = NULL;
  pa_image_crop(g.images[0], 0, 0, S, S, &img);
  pa_gen_result_free(&g);
  return img;
}

static void test_inpaint_outpaint_img2img(void) {
  pa_image *img = input_image(), *mask = NULL;
  int64_t x0[N];
  CHECK_OK(pa_pipeline_encode_image(p, img, x0));
  pa_image_new(S, S, &mask);
  for (int y = 0; y < S; y++)
    for (int x = 0; x < S; x++)
      for (int c = 0; c < 3; c++) mask->rgb[(y * S + x) * 3 + c] = (x >= 24 && y >= 16) ? 1.0f : 0.0f;
  pa_gen_result g;
  pa_gen_request r = req("a cat", 3);
  r.mode = PA_GEN_INPAINT;
  r.image = img;
  r.mask = mask;
  int64_t *t = gen(&r, &g);
  int kept = 0, changed = 0;
  for (int y = 0; t && y < S / 4; y++)
    for (int x = 0; x < S / 4; x++) {
      int64_t q = y * (S / 4) + x;
      if (x >= 6 && y >= 4)
        changed += t[q] != x0[q];
      else
        kept += t[q] == x0[q];
    }
  int n_keep = N - (S / 4 - 6) * (S / 4 - 4);
  printf("inpaint: %d / %d unmasked tokens kept, %d masked tokens changed\n", kept, n_keep, changed);
  CHECK(kept == n_keep);
  CHECK(changed > 0);
  pa_gen_result_free(&g);

  /* outpainting: the 64x64 image at (32, 16) on a 128x96 canvas */
  r = req("a cat", 3);
  r.mode = PA_GEN_OUTPAINT;
  r.image = img;
  r.width = 128;
  r.height = 96;
  r.offset_x = 32;
  r.offset_y = 16;
  t = gen(&r, &g);
  int placed = 0;
  for (int y = 0; t && y < S / 4; y++)
    for (int x = 0; x < S / 4; x++) placed += t[(y + 4) * 32 + (x + 8)] == x0[y * (S / 4) + x];
  printf("outpaint: %d / %lld placed tokens unchanged\n", placed, (long long)N);
  CHECK(placed == N);
  pa_gen_result_free(&g);

  /* image-to-image at strength ~0 returns the input tokens */
  r = req("a cat", 3);
  r.mode = PA_GEN_IMG2IMG;
  r.image = img;
  r.strength = 0.01f;
  t = gen(&r, &g);
  CHECK(t && memcmp(t, x0, sizeof x0) == 0);
  pa_gen_result_free(&g);
  r.strength = 0.75f; /* and at 0.75 it does change them */
  t = gen(&r, &g);
  CHECK(t && memcmp(t, x0, sizeof x0) != 0);
  pa_gen_result_free(&g);

  /* variations run from the image alone */
  r = req("", 5);
  r.mode = PA_GEN_VARIATION;
  r.image = img;
  CHECK(gen(&r, &g) != NULL);
  pa_gen_result_free(&g);
  pa_image_free(img);
  pa_image_free(mask);
}

static void test_interpolation_regions_cfg(void) {
  pa_gen_result a, b, f0, f1, m;
  pa_gen_request r = req("a cat", 11); /* "a cat" and "a dog": the same ByT5 length */
  int64_t *ta = gen(&r, &a);
  r.prompt = "a dog";
  int64_t *tb = gen(&r, &b);
  for (int slerp = 0; slerp < 2; slerp++) {
    r = req("a cat", 11);
    r.prompt2 = "a dog";
    r.interpolate = true;
    r.slerp = slerp;
    r.interp_t = 0.0f;
    int64_t *t0 = gen(&r, &f0);
    r.interp_t = 1.0f;
    int64_t *t1 = gen(&r, &f1);
    CHECK_MSG(t0 && ta && memcmp(t0, ta, N * 8) == 0, "frame 0 != plain 'a cat' (slerp %d)", slerp);
    CHECK_MSG(t1 && tb && memcmp(t1, tb, N * 8) == 0, "last frame != plain 'a dog' (slerp %d)", slerp);
    pa_gen_result_free(&f0);
    pa_gen_result_free(&f1);
  }
  /* regions with the same prompt on both sides are the plain generation */
  r = req("a cat", 11);
  r.prompt2 = "a cat";
  r.regions = PA_REGIONS_LEFT_RIGHT;
  int64_t *tm = gen(&r, &m);
  CHECK(tm && ta && memcmp(tm, ta, N * 8) == 0);
  pa_gen_result_free(&m);
  /* CFG 1 equals the conditional-only path (no guided step at all) */
  float cond[64], unc[64], ref[64];
  for (int i = 0; i < 64; i++) cond[i] = ref[i] = (float)(i * 37 % 11) - 5.3f, unc[i] = (float)(i % 7) * 1.7f;
  pa_sampler_cfg(cond, unc, 64, 1.0f);
  CHECK(memcmp(cond, ref, sizeof cond) == 0);
  pa_gen_result c1, c0;
  r = req("a cat", 11);
  r.sampler.cfg[0] = r.sampler.cfg[1] = 1.0f;
  int64_t *t1 = gen(&r, &c1);
  r = req("a cat", 11);
  r.sampler.cond_steps = 0;
  int64_t *t0 = gen(&r, &c0);
  CHECK(t1 && t0 && memcmp(t1, t0, N * 8) == 0);
  CHECK(t1 && ta && memcmp(t1, ta, N * 8) != 0); /* and guidance 8 is a different image */
  pa_gen_result_free(&c1);
  pa_gen_result_free(&c0);
  pa_gen_result_free(&a);
  pa_gen_result_free(&b);
}

static void test_bad_requests(void) {
  pa_gen_result g;
  pa_gen_request r = req("a cat", 1);
  r.width = 40; /* not a multiple of 16 */
  CHECK(pa_generate(p, &r, &g) == PA_ERR_INVALID);
  r = req("", 1);
  CHECK(pa_generate(p, &r, &g) == PA_ERR_INVALID);
  r = req("a cat", 1);
  r.width = 2048;
  CHECK(pa_generate(p, &r, &g) == PA_ERR_INVALID);
  pa_image *img = NULL, *mask = NULL;
  pa_image_new(S, S, &img);
  pa_image_new(S, 32, &mask);
  r = req("a cat", 1);
  r.mode = PA_GEN_INPAINT;
  r.image = img;
  r.mask = mask;
  CHECK(pa_generate(p, &r, &g) == PA_ERR_INVALID);
  CHECK(strstr(pa_errmsg(), "mask") != NULL);
  r.mode = PA_GEN_OUTPAINT;
  r.offset_x = 8; /* the image does not fit the canvas */
  CHECK(pa_generate(p, &r, &g) == PA_ERR_INVALID);
  pa_image_free(img);
  pa_image_free(mask);
}

/* A one-entry-per-key in-memory cache that counts its traffic. */
typedef struct {
  int hits, misses, stores;
  char keys[8][200];
  pa_tensor *vals[8];
  int n;
} mem_cache;

static void key_of(char *buf, const char *enc, const int64_t *ids, int n) {
  unsigned long long h = 1469598103934665603ull;
  for (int i = 0; i < n; i++) h = (h ^ (unsigned long long)ids[i]) * 1099511628211ull;
  snprintf(buf, 200, "%s/%d/%llx", enc, n, h);
}

static bool mc_lookup(void *user, const char *enc, const int64_t *ids, int n, pa_tensor **out) {
  mem_cache *c = user;
  char k[200];
  key_of(k, enc, ids, n);
  for (int i = 0; i < c->n; i++)
    if (!strcmp(c->keys[i], k)) {
      c->hits++;
      *out = pa_tensor_clone(c->vals[i]);
      return true;
    }
  c->misses++;
  return false;
}

static void mc_store(void *user, const char *enc, const int64_t *ids, int n, const pa_tensor *v) {
  mem_cache *c = user;
  if (c->n == 8) return;
  key_of(c->keys[c->n], enc, ids, n);
  c->vals[c->n++] = pa_tensor_clone(v);
  c->stores++;
}

static bool cancel_at_2(void *user, const char *stage, int step, int total) {
  (void)user, (void)total;
  return !(strcmp(stage, "denoise") == 0 && step == 2);
}

static void test_cache_and_cancel(void) {
  mem_cache mc = {0};
  pa_embed_cache cache = {&mc, mc_lookup, mc_store};
  pa_gen_result a, b;
  pa_gen_request r = req("a lighthouse", 21);
  int64_t *ta = gen(&r, &a);
  pa_pipeline_set_cache(p, &cache);
  gen(&r, &b); /* fills the cache: prompt and empty prompt, both encoders */
  pa_gen_result_free(&b);
  int64_t *tb = gen(&r, &b);
  printf("cache: %d hits, %d misses, %d stores\n", mc.hits, mc.misses, mc.stores);
  CHECK(mc.stores == 4 && mc.hits == 4);
  CHECK(ta && tb && memcmp(ta, tb, N * 8) == 0); /* cached embeddings give the same image */
  pa_pipeline_set_cache(p, NULL);
  for (int i = 0; i < mc.n; i++) pa_tensor_free(mc.vals[i]);
  pa_gen_result_free(&a);
  pa_gen_result_free(&b);
  r.progress = cancel_at_2;
  CHECK(pa_generate(p, &r, &a) == PA_ERR_CANCELED);
  CHECK(a.images == NULL);
}

static int agree(const int64_t *a, const int64_t *b, int64_t n) {
  int k = 0;
  for (int64_t q = 0; a && b && q < n; q++) k += a[q] == b[q];
  return k;
}

/* A worker's claimed batch: compatible neighbours share every forward, each image as if alone. */
static void test_generate_many(void) {
  pa_gen_request r[4] = {req("a red fox", 1), req("a big cat", 5), req("a sailboat at dawn", 3), req("a big dog", 9)};
  r[1].batch = 2; /* prompt lengths differ (the sailboat): padded and masked, one group */
  pa_gen_result many[4], one[4];
  int failed = 0;
  long long f0 = pa_pipeline_forwards(p);
  CHECK_OK(pa_generate_many(p, r, 4, many, &failed));
  long long used = pa_pipeline_forwards(p) - f0;
  CHECK(failed == -1);
  for (int i = 0; i < 4; i++) gen(&r[i], &one[i]);
  /* one group, 4 steps, cond and uncond rows in one forward per step */
  printf("generate_many: %lld forwards for 4 requests (one at a time: 16)\n", used);
  CHECK(used == 4);
  for (int i = 0; i < 4; i++) {
    int64_t n = N * r[i].batch;
    int k = agree(many[i].tokens, one[i].tokens, n);
    printf("  request %d: %d / %lld tokens as when run alone\n", i, k, (long long)n);
    CHECK(many[i].n == r[i].batch && many[i].images[0]->width == S);
    CHECK(k == n); /* padded keys are masked: exactly the request's own tokens */
  }
  for (int i = 0; i < 4; i++) pa_gen_result_free(&many[i]), pa_gen_result_free(&one[i]);
  /* a request canceled inside a group: charged to it, the one before it still finishes */
  pa_gen_request c[2] = {req("a red fox", 1), req("a big cat", 5)};
  c[1].progress = cancel_at_2;
  pa_gen_result cm[2] = {{0}};
  CHECK(pa_generate_many(p, c, 2, cm, &failed) == PA_ERR_CANCELED);
  CHECK(failed == 1 && cm[0].n == 1 && cm[1].images == NULL);
  pa_gen_result solo;
  gen(&c[0], &solo);
  CHECK(agree(cm[0].tokens, solo.tokens, N) >= N * 99 / 100);
  pa_gen_result_free(&cm[0]);
  pa_gen_result_free(&solo);
}

int main(void) {
  pa_pipeline_options o = {.models_dir = NULL, .be = pa_cpu_backend(), .random_weights = true};
  CHECK_OK(pa_pipeline_open(&o, &p));
  if (!p) TEST_END();
  CHECK(pa_pipeline_untrained(p));
  CHECK(pa_pipeline_size_multiple(p) == 16); /* VQGAN f4 x patch 2 x two levels */
  test_determinism_and_batch();
  test_inpaint_outpaint_img2img();
  test_interpolation_regions_cfg();
  test_bad_requests();
  test_cache_and_cancel();
  test_generate_many();
  pa_pipeline_free(p);
  TEST_END();
}
