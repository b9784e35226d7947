/* What one denoising step asks of the backend, counted on the CPU backend (ops/counting.h)
 * with the REAL Paella v3 configuration (published channel widths and depths, synthetic
 * weights) at a small spatial size (16x16 tokens), a 12-step CFG sample at batch 1 through
 * the product loop (model/denoise.c). After the first step (which plans the activation
 * arena):
 *   - one forward per step (conditional and unconditional rows in one batch),
 *   - no host<->backend transfer: the tokens come back once, at the end,
 *   - no allocation (activations are views of the planned arena),
 *   - at most 215 GEMM calls per forward (351 before the conditioning K/V, the timestep
 *     mappers and the q|k|v projections were hoisted or fused),
 * and prints the per-step figures (GEMM calls and FLOPs, other ops, allocations) that
 * bench/RESULTS.md records. Takes one to two minutes here (mostly creating 1 B weights). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/denoise.h"
#include "ops/counting.h"
#include "tests/test.h"

#define T 16     /* token grid side */
#define STEPS 12
#define L_TEXT 12 /* ByT5 length of the prompt; the negative prompt is shorter */

typedef struct {
  pa_backend *cb;
  pa_op_counts at[STEPS + 1]; /* snapshots: before the loop's first step is [0] */
  long long forwards[STEPS + 1];
  long long *fwd;
  double seconds[STEPS + 1];
} recorder;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool record(void *user, const char *stage, int step, int total) {
  (void)stage, (void)total;
  recorder *r = user;
  r->at[step] = pa_counting_snapshot(r->cb);
  r->forwards[step] = *r->fwd;
  r->seconds[step] = now_s();
  return true;
}

static pa_tensor *filled(int ndim, const int64_t *shape, int salt) {
  pa_tensor *t = pa_tensor_new(PA_F32, ndim, shape);
  for (int64_t i = 0; t && i < pa_numel(t); i++) ((float *)t->data)[i] = (float)((i * 7919 + salt) % 13 - 6) / 6.0f;
  return t;
}

int main(void) {
  pa_backend *cb = pa_counting_backend(pa_cpu_backend());
  pa_weights *w = pa_weights_new("paella v3 (synthetic weights)");
  pa_weights_set_autocreate(w, 1, 0.02f);
  pa_paella_config cfg = pa_paella_default_config();
  pa_paella *m = NULL;
  double t0 = now_s();
  CHECK_OK(pa_paella_load(cb, w, &cfg, &m));
  if (!m) TEST_END();
  printf("real v3 config loaded (synthetic weights) in %.1f s\n", now_s() - t0);
  /* a prompt (ByT5 + CLIP text + CLIP image) and a shorter negative prompt (ByT5 + CLIP text) */
  pa_tensor *byt5 = filled(3, (const int64_t[]){1, L_TEXT, cfg.byt5_embd}, 1);
  pa_tensor *neg = filled(3, (const int64_t[]){1, L_TEXT / 2, cfg.byt5_embd}, 2);
  pa_tensor *clip = filled(2, (const int64_t[]){1, cfg.clip_embd}, 3);
  pa_paella_cond *c = NULL, *u = NULL;
  CHECK_OK(pa_paella_cond_new(m, byt5, clip, clip, &c));
  CHECK_OK(pa_paella_cond_new(m, neg, clip, NULL, &u));
  int64_t n = T * T, start[T * T], out[T * T];
  uint64_t seed = 7;
  pa_sampler_init_noise(seed, n, cfg.num_labels, start);
  long long forwards = 0;
  recorder rec = {.cb = cb, .fwd = &forwards};
  pa_denoise_job j = {.B = 1, .h = T, .w = T, .sampler = pa_sampler_default_config(), .cond = c, .uncond = u,
                      .seeds = &seed, .start = start, .init = start, .progress = record, .progress_user = &rec,
                      .forwards = &forwards};
  CHECK(j.sampler.steps == STEPS);
  pa_counting_reset(cb);
  rec.seconds[0] = now_s();
  CHECK_OK(pa_denoise(m, &j, out));
  pa_op_counts total = pa_counting_snapshot(cb);
  printf("whole loop: %lld to_host (%lld B), %lld from_host (%lld B), %lld allocations\n", total.to_host,
         total.to_host_bytes, total.from_host, total.from_host_bytes, total.allocs);
  long long gemm_per_forward = 0;
  for (int i = 1; i <= STEPS; i++) {
    pa_op_counts d = pa_op_counts_diff(&rec.at[i], &rec.at[i - 1]);
    if (i == 1) continue; /* [0] is taken before preparation: step 1 includes it */
    long long f = rec.forwards[i] - rec.forwards[i - 1];
    printf("step %2d: %lld forward, %lld GEMMs (%.2f GFLOP), %lld other ops, %lld+%lld transfers, "
           "%lld allocations (%.1f MB), %.2f s\n",
           i, f, d.gemm_calls, d.gemm_flops / 1e9, d.other_ops, d.to_host, d.from_host, d.allocs,
           (double)d.alloc_bytes / 1e6, rec.seconds[i] - rec.seconds[i - 1]);
    CHECK_MSG(f == 1, "step %d ran %lld forwards", i, f);
    CHECK_MSG(d.to_host == 0 && d.from_host == 0, "step %d: %lld + %lld transfers", i, d.to_host, d.from_host);
    CHECK_MSG(d.allocs == 0 && d.releases == 0, "step %d: %lld allocations, %lld releases", i, d.allocs, d.releases);
    CHECK_MSG(d.gemm_calls <= 215 * f, "step %d: %lld GEMM calls", i, d.gemm_calls);
    gemm_per_forward = f ? d.gemm_calls / f : 0;
  }
  printf("GEMM calls per forward: %lld\n", gemm_per_forward);
  /* the only transfer after preparation: the final tokens, once */
  pa_op_counts tail = pa_op_counts_diff(&total, &rec.at[STEPS]);
  CHECK(tail.to_host == 1 && tail.to_host_bytes == n * (int64_t)sizeof(int64_t) && tail.from_host == 0);
  int valid = 1;
  for (int64_t q = 0; q < n; q++) valid &= out[q] >= 0 && out[q] < cfg.num_labels;
  CHECK(valid);
  pa_paella_cond_free(m, c);
  pa_paella_cond_free(m, u);
  pa_tensor_free(byt5);
  pa_tensor_free(neg);
  pa_tensor_free(clip);
  pa_paella_free(m);
  pa_weights_free(w);
  pa_counting_backend_free(cb);
  TEST_END();
}
