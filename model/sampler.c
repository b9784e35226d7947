#include "model/sampler.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "ops/error.h"
#include "ops/ops.h"
#include "ops/rng.h"

pa_sampler_config pa_sampler_default_config(void) {
  return (pa_sampler_config){.steps = 12, .t_start = 1.0f, .t_end = 0.0f, .temp = {0.7f, 0.3f},
                             .cfg = {8.0f, 8.0f}, .renoise_steps = 11, .cond_steps = 12,
                             .mode = PA_SAMPLE_MULTINOMIAL, .typical_mass = 0.0f, .typical_min_tokens = 1};
}

int pa_sampler_config_check(const pa_sampler_config *c) {
  if (c->steps < 1 || c->steps > 1000) return pa_fail(PA_ERR_INVALID, "steps must be in 1..1000 (got %d)", c->steps);
  if (!(c->t_start >= 0 && c->t_start <= 1 && c->t_end >= 0 && c->t_end <= 1))
    return pa_fail(PA_ERR_INVALID, "t_start and t_end must be in [0, 1]");
  if (!(c->temp[0] > 0 && c->temp[1] > 0)) return pa_fail(PA_ERR_INVALID, "temperatures must be > 0");
  if (!isfinite(c->cfg[0]) || !isfinite(c->cfg[1])) return pa_fail(PA_ERR_INVALID, "cfg must be finite");
  if (c->renoise_steps < 0 || c->renoise_steps > c->steps)
    return pa_fail(PA_ERR_INVALID, "renoise_steps must be in 0..steps");
  if (c->cond_steps < 0) return pa_fail(PA_ERR_INVALID, "cond_steps must be >= 0");
  if (c->typical_mass < 0 || c->typical_mass > 1) return pa_fail(PA_ERR_INVALID, "typical mass must be in [0, 1]");
  return PA_OK;
}

void pa_linspace_f32(float start, float end, int n, float *out) {
  if (n == 1) {
    out[0] = start;
    return;
  }
  float step = (end - start) / (float)(n - 1);
  int half = n / 2;
  for (int i = 0; i < n; i++) out[i] = i < half ? start + step * (float)i : end - step * (float)(n - 1 - i);
}

void pa_sampler_schedules(const pa_sampler_config *c, float *t, float *temp, float *cfg) {
  if (t) pa_linspace_f32(c->t_start, c->t_end, c->steps + 1, t);
  if (temp) pa_linspace_f32(c->temp[0], c->temp[1], c->steps, temp);
  if (cfg) pa_linspace_f32(c->cfg[0], c->cfg[1], c->steps, cfg);
}

/* ---- Philox4x32-10 (shared with the CUDA sampler kernel: ops/rng.h) -------------------------- */

void pa_philox4x32(const uint32_t ctr[4], uint64_t key, uint32_t out[4]) { pa_philox4x32_hd(ctr, key, out); }

static uint32_t rng_u32(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos, uint32_t sub) {
  uint32_t ctr[4] = {sub >> 2, pos, step, purpose}, out[4];
  pa_philox4x32(ctr, seed, out);
  return out[sub & 3];
}

float pa_rng_uniform(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos, uint32_t sub) {
  return pa_u32_to_uniform(rng_u32(seed, purpose, step, pos, sub));
}

float pa_rng_uniform_open(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos, uint32_t sub) {
  return pa_u32_to_uniform_open(rng_u32(seed, purpose, step, pos, sub));
}

uint32_t pa_rng_below(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos, uint32_t n) {
  return (uint32_t)(((uint64_t)rng_u32(seed, purpose, step, pos, 0) * n) >> 32);
}

float pa_rng_normal(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos) {
  double u1 = pa_rng_uniform_open(seed, purpose, step, pos, 0), u2 = pa_rng_uniform_open(seed, purpose, step, pos, 1);
  return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* ---- sampler ----------------------------------------------------------------------------- */

void pa_sampler_init_noise(uint64_t seed, int64_t n, int K, int64_t *tokens) {
  for (int64_t p = 0; p < n; p++) tokens[p] = pa_rng_below(seed, PA_RNG_INIT_NOISE, 0, (uint32_t)p, (uint32_t)K);
}

void pa_sampler_cfg(float *cond, const float *uncond, int64_t n, float cfg) {
  for (int64_t i = 0; i < n; i++) cond[i] = pa_cfg_combine(cond[i], uncond[i], cfg);
}

/* One position's token: the first class of the largest score; -inf (filtered) and NaN
 * classes never win; all of them filtered gives class 0. The CUDA kernel reproduces this. */
static int64_t draw_row(const float *row, int K, float temp, pa_sample_mode mode, uint64_t seed,
                        int step, int64_t p) {
  float best = -INFINITY;
  int arg = 0;
  for (int k = 0; k < K; k++) {
    float v = row[k];
    if (mode == PA_SAMPLE_MULTINOMIAL) {
      if (v == -INFINITY) continue; /* filtered class: probability 0 */
      float u = pa_rng_uniform_open(seed, PA_RNG_SAMPLE, (uint32_t)step, (uint32_t)p, (uint32_t)k);
      v = pa_gumbel_score(v, temp, u); /* Gumbel-max: argmax ~ softmax(logits / temp) */
    }
    if (v > best) {
      best = v;
      arg = k;
    }
  }
  return arg;
}

void pa_sampler_draw(const float *logits, int64_t n, int K, float temp, pa_sample_mode mode,
                     uint64_t seed, int step, int64_t *tokens) {
#pragma omp parallel for schedule(static) if (n * K >= 32768)
  for (int64_t p = 0; p < n; p++) tokens[p] = draw_row(logits + p * K, K, temp, mode, seed, step, p);
}

/* ---- the fused step (host path) -------------------------------------------------------- */

static int step_check(const pa_sample_params *p, int64_t *B, int64_t *n, int *K) {
  const pa_tensor *c = p->cond, *t = p->tokens;
  if (!c || c->dtype != PA_F32 || c->ndim < 2 || !t || t->dtype != PA_I64 || t->shape[0] != c->shape[0])
    return pa_fail(PA_ERR_SHAPE, "sampler step: logits must be F32 (B, ..., K), tokens I64 (B, ...)");
  *B = c->shape[0];
  *K = (int)pa_last(c);
  *n = pa_rows(c) / (*B ? *B : 1);
  if (pa_numel(t) != *B * *n) return pa_fail(PA_ERR_SHAPE, "sampler step: tokens must hold B * positions");
  if (p->uncond && (p->uncond->dtype != PA_F32 || !pa_same_shape(p->uncond, c)))
    return pa_fail(PA_ERR_SHAPE, "sampler step: uncond logits differ in shape from cond");
  if (p->cond2 && (p->cond2->dtype != PA_F32 || !pa_same_shape(p->cond2, c) || c->ndim != 4))
    return pa_fail(PA_ERR_SHAPE, "sampler step: regions need cond and cond2 logits (B, h, w, K) alike");
  if (!p->seeds || p->seeds->dtype != PA_I64 || pa_numel(p->seeds) != *B)
    return pa_fail(PA_ERR_SHAPE, "sampler step: seeds must be I64 (B)");
  if (p->renoise && (!p->init || p->init->dtype != PA_I64 || pa_numel(p->init) != *B * *n))
    return pa_fail(PA_ERR_SHAPE, "sampler step: re-noising needs init noise I64 (B, positions)");
  if (!p->pinned != !p->keep || (p->pinned && (p->pinned->dtype != PA_I64 || pa_numel(p->pinned) != *B * *n ||
                                               p->keep->dtype != PA_U8 || pa_numel(p->keep) != *n)))
    return pa_fail(PA_ERR_SHAPE, "sampler step: pinned I64 (B, positions) and keep U8 (positions) go together");
  if (!(p->temp > 0) && !p->argmax) return pa_fail(PA_ERR_INVALID, "sampler step: temperature must be > 0");
  return PA_OK;
}

/* Host tensors of the step (downloaded copies when the backend is a device); NULL stays NULL. */
static int host_copy(pa_backend *be, const pa_tensor *t, pa_tensor **own, const pa_tensor **out) {
  *own = NULL;
  *out = t;
  if (!t || be->device == PA_HOST) return PA_OK;
  if (!(*own = pa_download(be, t))) return PA_ERR_NOMEM;
  *out = *own;
  return PA_OK;
}

/* Whether position q of an (h, w) grid lies in the second region. */
static bool second_region(pa_sample_regions regions, int64_t q, int64_t h, int64_t w) {
  if (regions == PA_SAMPLE_REGIONS_LEFT_RIGHT) return q % w >= w / 2;
  if (regions == PA_SAMPLE_REGIONS_TOP_BOTTOM) return q / w >= h / 2;
  return false;
}

/* The logits row a position samples from: its region's, guided, typical-filtered. `row`
 * (K floats) is scratch for the combination; returns the row to draw from. */
static const float *step_row(const pa_sample_params *p, const pa_tensor *c, const pa_tensor *c2,
                             const pa_tensor *u, int64_t b, int64_t q, int64_t n, int K, float *row) {
  int64_t off = (b * n + q) * K;
  const float *cr = (const float *)c->data + off;
  if (c2 && second_region(p->regions, q, p->cond->shape[1], p->cond->shape[2])) cr = (const float *)c2->data + off;
  if (u) {
    const float *ur = (const float *)u->data + off;
    for (int k = 0; k < K; k++) row[k] = pa_cfg_combine(cr[k], ur[k], p->cfg);
    cr = row;
  }
  if (p->typical_mass > 0) {
    if (cr != row) memcpy(row, cr, (size_t)K * sizeof *row);
    if (pa_typical_filter(row, K, p->typical_mass, p->typical_min_tokens, NULL)) return NULL;
    cr = row;
  }
  return cr;
}

#ifdef _OPENMP
static int thread_count(void) { return omp_get_max_threads(); }
static int thread_index(void) { return omp_get_thread_num(); }
#else
static int thread_count(void) { return 1; }
static int thread_index(void) { return 0; }
#endif

static int step_host(pa_backend *be, const pa_sample_params *p, int64_t B, int64_t n, int K) {
  int rc = PA_OK;
  pa_tensor *own[7] = {0}, *tok_own = NULL;
  const pa_tensor *c, *c2, *u, *init, *pin, *keep, *seeds;
  float *row = malloc((size_t)thread_count() * K * sizeof *row);
  if (!row) return pa_fail(PA_ERR_NOMEM, "sampler step: out of memory");
  PA_TRY(host_copy(be, p->cond, &own[0], &c));
  PA_TRY(host_copy(be, p->uncond, &own[1], &u));
  PA_TRY(host_copy(be, p->renoise ? p->init : NULL, &own[2], &init));
  PA_TRY(host_copy(be, p->pinned, &own[3], &pin));
  PA_TRY(host_copy(be, p->keep, &own[4], &keep));
  PA_TRY(host_copy(be, p->cond2, &own[5], &c2));
  PA_TRY(host_copy(be, p->seeds, &own[6], &seeds));
  int64_t *tok = p->tokens->data;
  if (be->device != PA_HOST) {
    if (!(tok_own = pa_tensor_new(PA_I64, p->tokens->ndim, p->tokens->shape))) goto nomem;
    tok = tok_own->data;
  }
  pa_sample_mode mode = p->argmax ? PA_SAMPLE_ARGMAX : PA_SAMPLE_MULTINOMIAL;
  int failed = 0;
  /* positions are independent: spread them over the cores, one scratch row per thread */
#pragma omp parallel for schedule(static) if (B * n * K >= 32768)
  for (int64_t i = 0; i < B * n; i++) {
    int64_t b = i / n, q = i % n;
    uint64_t seed = (uint64_t)((const int64_t *)seeds->data)[b];
    const float *cr = step_row(p, c, c2, u, b, q, n, K, row + (size_t)thread_index() * K);
    if (!cr) {
#pragma omp atomic write
      failed = 1;
      continue;
    }
    int64_t t = draw_row(cr, K, p->temp, mode, seed, p->step, q);
    if (p->renoise && pa_rng_uniform(seed, PA_RNG_RENOISE, (uint32_t)p->step, (uint32_t)q, 0) <= p->renoise_t)
      t = ((const int64_t *)init->data)[b * n + q];
    if (pin && ((const uint8_t *)keep->data)[q]) t = ((const int64_t *)pin->data)[b * n + q];
    tok[b * n + q] = t;
  }
  if (failed) {
    rc = pa_fail(PA_ERR_NOMEM, "sampler step: out of memory (typical filtering)");
    goto fail;
  }
  if (tok_own) rc = be->from_host(be, p->tokens, tok_own);
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  for (int i = 0; i < 7; i++) pa_tensor_free(own[i]);
  pa_tensor_free(tok_own);
  free(row);
  return rc;
}

int pa_sampler_step(pa_backend *be, const pa_sample_params *p) {
  int64_t B = 0, n = 0;
  int K = 0;
  int rc = step_check(p, &B, &n, &K);
  if (rc) return rc;
  if (B == 0 || n == 0) return PA_OK;
  /* typical filtering sorts every row: the backends' fused kernels do not have it yet */
  return be->sample && !(p->typical_mass > 0) ? be->sample(be, p) : step_host(be, p, B, n, K);
}

void pa_sampler_renoise(int64_t *tokens, const int64_t *init, int64_t n, float t, uint64_t seed, int step) {
  for (int64_t p = 0; p < n; p++)
    if (pa_rng_uniform(seed, PA_RNG_RENOISE, (uint32_t)step, (uint32_t)p, 0) <= t) tokens[p] = init[p];
}

void pa_add_noise(const int64_t *x, const float *u, const int64_t *random_x, float t, int64_t n,
                  int64_t *out, int64_t *mask) {
  for (int64_t i = 0; i < n; i++) {
    int64_t m = u[i] <= t; /* inclusive, as upstream */
    if (mask) mask[i] = m;
    out[i] = x[i] * (1 - m) + random_x[i] * m;
  }
}

void pa_softmax_row(const float *logits, int K, float temp, float *probs) {
  double mx = -INFINITY, sum = 0;
  for (int k = 0; k < K; k++) mx = fmax(mx, (double)logits[k] / temp);
  for (int k = 0; k < K; k++) sum += exp((double)logits[k] / temp - mx);
  for (int k = 0; k < K; k++) probs[k] = (float)(exp((double)logits[k] / temp - mx) / sum);
}

typedef struct {
  double score;
  int k;
} scored;

static int by_score(const void *a, const void *b) {
  const scored *x = a, *y = b;
  if (x->score != y->score) return x->score < y->score ? -1 : 1;
  return x->k - y->k; /* stable */
}

/* Typical filtering (v1): s_k = |-log p_k - H|; classes sorted by s ascending; n = number of
 * cumulative masses (in that order) below `mass`; every class with s <= s_sorted[n] is kept
 * (ties kept together); the min_tokens lowest-score classes are always kept. */
int pa_typical_filter(float *logits, int K, float mass, int min_tokens, int32_t *keep) {
  scored *s = malloc((size_t)K * sizeof *s);
  double *logp = malloc((size_t)K * sizeof *logp);
  if (!s || !logp) {
    free(s);
    free(logp);
    return pa_fail(PA_ERR_NOMEM, "typical filter: out of memory");
  }
  double mx = -INFINITY, sum = 0, H = 0;
  for (int k = 0; k < K; k++) mx = fmax(mx, logits[k]);
  for (int k = 0; k < K; k++) sum += exp(logits[k] - mx);
  for (int k = 0; k < K; k++) {
    logp[k] = logits[k] - mx - log(sum);
    if (isfinite(logp[k])) H -= exp(logp[k]) * logp[k];
  }
  for (int k = 0; k < K; k++) s[k] = (scored){fabs(-logp[k] - H), k};
  qsort(s, (size_t)K, sizeof *s, by_score);
  double cm = 0;
  int n = 0;
  for (int i = 0; i < K; i++) {
    cm += exp(logp[s[i].k]);
    if (cm < mass) n++;
  }
  if (n > K - 1) n = K - 1;
  double cut = s[n].score;
  for (int i = 0; i < K; i++) {
    int k = s[i].k;
    int kept = s[i].score <= cut || i < min_tokens;
    if (keep) keep[k] = kept;
    if (!kept) logits[k] = -INFINITY;
  }
  free(s);
  free(logp);
  return PA_OK;
}
