/* End-to-end quality of the embedded default model: does the whole pipeline (tokenizers, both
 * text encoders, prior, CFG sampler, VQGAN) draw what the caption says?
 *
 * For 100 training captions (every 19th emoji name of the retrieval set), generate at the
 * native size with fixed seeds and the default sampler (prior and CFG on), then rank all
 * dataset images by pixel distance to the result. The dataset images are the VQGAN decodes of
 * their token grids (model/data/default_retrieval.safetensors, written by train/train.py).
 * Chance puts the captioned image at median rank ~955 of 1911 and in the top 5 for 0.26% of
 * the captions. The trained weights must bring the median rank into the first TRAINED_MEDIAN_MAX
 * of the set; the random-weight twin (same architecture) must stay near chance, which shows that
 * the score measures the weights, not the metric. Wiring mistakes (cond and uncond swapped,
 * ByT5 states dropped) fail the trained bound (docs/models.md has the measured figures).
 * Issue 17 asks for >= 15% top-5 hits: the committed weights do not reach it yet (see there). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model/default_model.h"
#include "model/pipeline.h"
#include "ops/ops.h"
#include "tests/test.h"

#define N_CAPTIONS 100 /* so that counts are percentages */
#define SEED 1000
/* What the committed weights must reach (docs/models.md has the measured figures). */
#define TRAINED_MEDIAN_MAX 0.15 /* of the set */
#define TRAINED_TOP100_MIN 30 /* % of the captions */
#define RANDOM_MEDIAN_MIN 0.35 /* of the set */
#define RANDOM_TOP5_MAX 2

typedef struct {
  int n, side;        /* images, pixels per side */
  float *pixels;      /* (n, side, side, 3) */
  json_t *names;      /* n captions */
} retrieval_set;

/* Decodes every token grid with the default VQGAN, 64 images at a time. */
static int decode_all(const pa_tensor *tokens, retrieval_set *set) {
  pa_default_model d;
  pa_vqgan *vq = NULL;
  pa_backend *be = pa_cpu_backend();
  int rc = pa_default_model_open(false, &d), n = set->n, h = (int)tokens->shape[1], w = (int)tokens->shape[2];
  if (rc) return rc;
  PA_TRY(pa_vqgan_load(be, d.vqgan, &d.vqgan_cfg, &vq));
  int f = pa_vqgan_factor(vq);
  set->side = h * f;
  size_t img_floats = (size_t)set->side * set->side * 3;
  if (!(set->pixels = malloc((size_t)n * img_floats * sizeof(float)))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  for (int b0 = 0; b0 < n && rc == PA_OK; b0 += 64) {
    int nb = n - b0 < 64 ? n - b0 : 64;
    pa_tensor *idx = pa_tensor_new(PA_I64, 3, (const int64_t[]){nb, h, w});
    pa_tensor *img = pa_alloc_f32(be, 4, (int64_t)nb, (int64_t)set->side, (int64_t)set->side, (int64_t)3);
    pa_tensor *host = NULL;
    if (!idx || !img) rc = PA_ERR_NOMEM;
    for (int64_t i = 0; rc == PA_OK && i < (int64_t)nb * h * w; i++)
      ((int64_t *)idx->data)[i] = ((const int32_t *)tokens->data)[(int64_t)b0 * h * w + i];
    if (rc == PA_OK) rc = pa_vqgan_decode_indices(vq, idx, img);
    if (rc == PA_OK && !(host = pa_download(be, img))) rc = PA_ERR_NOMEM;
    if (rc == PA_OK) memcpy(set->pixels + (size_t)b0 * img_floats, host->data, (size_t)nb * img_floats * sizeof(float));
    pa_tensor_free(idx);
    pa_tensor_free(host);
    pa_release(be, img);
  }
fail:
  pa_vqgan_free(vq);
  pa_default_model_free(&d);
  return rc;
}

static int load_set(retrieval_set *set) {
  pa_weights *w = NULL;
  const pa_tensor *tokens;
  json_error_t err;
  int rc = pa_safetensors_open(PAELLA_SOURCE_DIR "/model/data/default_retrieval.safetensors", &w);
  if (rc) return rc;
  PA_TRY(pa_weights_get_raw(w, &tokens, "tokens"));
  const char *meta = pa_weights_metadata(w, "config");
  json_t *cfg = meta ? json_loads(meta, 0, &err) : NULL;
  set->names = json_incref(json_object_get(cfg, "names"));
  json_decref(cfg);
  set->n = (int)tokens->shape[0];
  if (!json_is_array(set->names) || (int)json_array_size(set->names) != set->n || tokens->dtype != PA_I32) {
    rc = pa_fail(PA_ERR_FORMAT, "retrieval set: tokens (N, h, w) I32 and N names expected");
    goto fail;
  }
  rc = decode_all(tokens, set);
fail:
  pa_weights_free(w);
  return rc;
}

/* Rank of image `target` (0 = nearest) by squared pixel distance to `img`. */
static int rank_of(const retrieval_set *set, const float *img, int target) {
  size_t m = (size_t)set->side * set->side * 3;
  double *d = malloc((size_t)set->n * sizeof *d);
  if (!d) return set->n;
  for (int i = 0; i < set->n; i++) {
    const float *ref = set->pixels + (size_t)i * m;
    double s = 0;
    for (size_t k = 0; k < m; k++) s += ((double)img[k] - ref[k]) * ((double)img[k] - ref[k]);
    d[i] = s;
  }
  int rank = 0;
  for (int i = 0; i < set->n; i++) rank += d[i] < d[target];
  free(d);
  return rank;
}

/* ranks[c] of caption c's own image among the results for the trained or the random weights. */
static void rank_captions(const retrieval_set *set, bool random_weights, int *ranks) {
  pa_pipeline_options o = {.be = pa_cpu_backend(), .random_weights = random_weights};
  pa_pipeline *p = NULL;
  int stride = set->n / N_CAPTIONS;
  for (int c = 0; c < N_CAPTIONS; c++) ranks[c] = set->n;
  CHECK_OK(pa_pipeline_open(&o, &p));
  for (int c = 0; p && c < N_CAPTIONS; c++) {
    int target = c * stride;
    pa_gen_request r = pa_gen_request_default();
    r.prompt = json_string_value(json_array_get(set->names, target));
    r.width = r.height = set->side;
    r.seed = SEED + (uint64_t)c;
    pa_gen_result res = {0};
    int rc = pa_generate(p, &r, &res);
    CHECK_MSG(rc == PA_OK, "%s: %s", r.prompt, pa_errmsg());
    if (rc) break;
    ranks[c] = rank_of(set, res.images[0]->rgb, target);
    if (getenv("PAELLA_QUALITY_VERBOSE")) printf("%4d  %-40s rank %d\n", target, r.prompt, ranks[c]);
    pa_gen_result_free(&res);
  }
  pa_pipeline_free(p);
}

static int by_value(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

typedef struct {
  int top5, top100, median; /* captions with rank < 5, < 100; the median rank */
} rank_summary;

static rank_summary summarise(const int *ranks) {
  int sorted[N_CAPTIONS];
  rank_summary s = {0};
  memcpy(sorted, ranks, sizeof sorted);
  qsort(sorted, N_CAPTIONS, sizeof *sorted, by_value);
  for (int c = 0; c < N_CAPTIONS; c++) s.top5 += sorted[c] < 5, s.top100 += sorted[c] < 100;
  s.median = (sorted[N_CAPTIONS / 2 - 1] + sorted[N_CAPTIONS / 2]) / 2;
  return s;
}

/* `test_default_quality trained` skips the random-weight baseline (quicker when measuring a
 * change to the pipeline); PAELLA_QUALITY_VERBOSE=1 prints every caption's rank. */
int main(int argc, char **argv) {
  retrieval_set set = {0};
  bool trained_only = argc > 1 && !strcmp(argv[1], "trained");
  int ranks[N_CAPTIONS];
  CHECK_OK(load_set(&set));
  if (!set.pixels) TEST_END();
  CHECK(set.n >= N_CAPTIONS && set.side == PA_DEFAULT_NATIVE_SIZE);
  rank_captions(&set, false, ranks);
  rank_summary t = summarise(ranks);
  printf("trained weights: top-5 %d%%, top-100 %d%%, median rank %d of %d\n", t.top5, t.top100, t.median, set.n);
  CHECK_MSG(t.median <= set.n * TRAINED_MEDIAN_MAX, "trained median rank %d", t.median);
  CHECK_MSG(t.top100 >= TRAINED_TOP100_MIN, "trained top-100 %d%%", t.top100);
  if (!trained_only) {
    rank_captions(&set, true, ranks);
    rank_summary r = summarise(ranks);
    printf("random weights:  top-5 %d%%, top-100 %d%%, median rank %d of %d\n", r.top5, r.top100, r.median, set.n);
    CHECK_MSG(r.median >= set.n * RANDOM_MEDIAN_MIN, "random-weight median rank %d", r.median);
    CHECK_MSG(r.top5 < RANDOM_TOP5_MAX, "random-weight top-5 %d%%", r.top5);
  }
  free(set.pixels);
  json_decref(set.names);
  TEST_END();
}
