/* The Paella v3 token sampler (src_distributed/utils.py::sample) and its randomness.
 *
 * Every random draw comes from Philox4x32-10 keyed by the image's seed and counted by
 * (purpose, step, position, class), so an image is fixed by its seed alone: the same on any
 * backend and in any batch composition (image b of a batch uses seed + b). */
#ifndef PAELLA_MODEL_SAMPLER_H
#define PAELLA_MODEL_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "ops/backend.h"

typedef enum { PA_SAMPLE_MULTINOMIAL, PA_SAMPLE_ARGMAX } pa_sample_mode;

typedef struct {
  int steps;                /* denoising steps (12) */
  float t_start, t_end;     /* noise levels, linear (1.0 -> 0.0) */
  float temp[2];            /* temperature from .. to (0.7 -> 0.3) */
  float cfg[2];             /* classifier-free guidance from .. to (8 -> 8) */
  int renoise_steps;        /* steps re-noised toward the initial noise (steps - 1) */
  int cond_steps;           /* steps that apply CFG (sampling_conditional_steps, = steps) */
  pa_sample_mode mode;
  float typical_mass;       /* > 0 enables v1 typical filtering (0 = off) */
  int typical_min_tokens;
} pa_sampler_config;

pa_sampler_config pa_sampler_default_config(void);
/* Checks ranges; returns PA_OK or PA_ERR_INVALID naming the field. */
int pa_sampler_config_check(const pa_sampler_config *c);

/* torch.linspace in float32: step = (end-start)/(n-1); start + i*step for the first half and
 * end - (n-1-i)*step for the second (bit-exact with torch for t_list; torch's vectorised
 * chunks can differ by 1 ulp elsewhere, see docs/sampler.md). */
void pa_linspace_f32(float start, float end, int n, float *out);

/* Schedules of a config: t (steps + 1), temperature (steps), cfg (steps). */
void pa_sampler_schedules(const pa_sampler_config *c, float *t, float *temp, float *cfg);

/* ---- randomness -------------------------------------------------------------------------- */

enum { PA_RNG_INIT_NOISE = 1, PA_RNG_RENOISE = 2, PA_RNG_SAMPLE = 3, PA_RNG_PRIOR = 4 };

/* Philox4x32-10: four 32-bit outputs for a 128-bit counter and a 64-bit key. */
void pa_philox4x32(const uint32_t ctr[4], uint64_t key, uint32_t out[4]);
/* Uniform in [0, 1) with 24 bits, in (0, 1) for the open variant. */
float pa_rng_uniform(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos, uint32_t sub);
float pa_rng_uniform_open(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos, uint32_t sub);
/* Integer in [0, n). */
uint32_t pa_rng_below(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos, uint32_t n);
/* Standard normal (Box-Muller on two open uniforms). */
float pa_rng_normal(uint64_t seed, uint32_t purpose, uint32_t step, uint32_t pos);

/* ---- sampler pieces (host, NHWC: logits (N, K) rows = positions of one image) --------------- */

/* Uniform initial tokens of an image with `n` positions. */
void pa_sampler_init_noise(uint64_t seed, int64_t n, int K, int64_t *tokens);
/* logits = cond*cfg + uncond*(1-cfg) in place on cond (not a lerp: upstream's exact form). */
void pa_sampler_cfg(float *cond, const float *uncond, int64_t n, float cfg);
/* One token per position: argmax(logits/temp + Gumbel) (= a multinomial draw from
 * softmax(logits/temp)) or plain argmax. keep (n, K) optional mask from typical filtering. */
void pa_sampler_draw(const float *logits, int64_t n, int K, float temp, pa_sample_mode mode,
                     uint64_t seed, int step, int64_t *tokens);
/* Re-noising: token p is replaced by init[p] where u(seed, step, p) <= t (inclusive). */
void pa_sampler_renoise(int64_t *tokens, const int64_t *init, int64_t n, float t, uint64_t seed, int step);
/* add_noise with explicit uniforms: mask = u <= t; x = x*(1-mask) + random*mask. */
void pa_add_noise(const int64_t *x, const float *u, const int64_t *random_x, float t, int64_t n,
                  int64_t *out, int64_t *mask);

/* One fused sampler step on the backend (see pa_sample_params in ops/backend.h): the
 * backend's `sample` kernel when it has one, else this host implementation (downloading
 * from a device backend). Both draw the same tokens for the same logits (ops/rng.h). */
int pa_sampler_step(pa_backend *be, const pa_sample_params *p);

/* v1 typical filtering of one row of K logits: dropped classes become -inf; keep[K] (0/1)
 * optional. See docs/sampler.md for the exact rule. */
int pa_typical_filter(float *logits, int K, float mass, int min_tokens, int32_t *keep);

/* softmax(logits/temp) of one row into probs (double accumulation) - used by tests. */
void pa_softmax_row(const float *logits, int K, float temp, float *probs);

#endif
