/* The denoising loop: one loop on the backend for every mode and every caller (pa_generate,
 * pa_generate_many's grouped batches, bench_cuda's `sample`).
 *
 * Per request: the conditioning rows are stacked once ([conditional | second region |
 * unconditional], padded to the longest sequence and masked by per-row key padding), the
 * r-embeddings of every step are computed and uploaded once. Per step: ONE Paella forward
 * over all rows, then the fused sampler step (regions, CFG, typical filtering, Gumbel-max
 * draw with each image's seed, re-noise, inpainting pins) reading the logits where they are
 * and writing the tokens where they are. The host sees the tokens once, at the end (and a
 * preview of them when one is asked for: pa_preview_hook). */
#ifndef PAELLA_MODEL_DENOISE_H
#define PAELLA_MODEL_DENOISE_H

#include <stdbool.h>
#include <stdint.h>

#include "model/paella.h"
#include "model/prior.h"
#include "model/sampler.h"

/* Called after every step (and prior step); returning false cancels (PA_ERR_CANCELED). */
typedef bool (*pa_progress_fn)(void *user, const char *stage, int step, int total);

/* Previews of the tokens while they are sampled. After step `step` (1-based) with
 * step % every == 0 (never after the last step: the result follows), the loop asks `due`
 * (NULL: always due) and, when due, hands the current tokens to `show` where they are, on
 * the backend: whatever `show` reads back is the only transfer a preview costs. every = 0:
 * no previews, and the loop makes no call and no copy for them. */
typedef struct {
  int every;
  bool (*due)(void *user, int step, int total);
  int (*show)(void *user, int step, int total, const pa_tensor *tokens /* (B, h, w) I64 */);
  void *user;
} pa_preview_hook;

typedef struct {
  int B, h, w;              /* images and their token grid */
  pa_sampler_config sampler; /* as run (image-to-image: its shortened schedule) */
  /* Conditioning of every row of the forward, B rows per part in this order: conditional,
   * second region (cond2), unconditional (uncond). cond2 and uncond may be NULL: without
   * uncond no step is guided. */
  pa_paella_cond *cond, *cond2, *uncond;
  pa_sample_regions regions;     /* how cond2 splits the grid */
  const float *attn_weights;     /* (n_attn) re-weighting of the conditional rows' last keys, or NULL */
  int n_attn;
  const uint64_t *seeds;         /* (B) the seed of each image */
  const int64_t *start, *init;   /* (B, h*w) first tokens and initial noise (host) */
  const int64_t *pinned;         /* (B, h*w) tokens kept where keep[p], or NULL */
  const uint8_t *keep;           /* (h*w) */
  pa_progress_fn progress;
  void *progress_user;
  pa_preview_hook preview;       /* zeroed: no previews */
  long long *forwards;           /* incremented per forward when set */
} pa_denoise_job;

/* Runs the loop; tokens (B, h*w) host receives the final tokens. */
int pa_denoise(pa_paella *m, const pa_denoise_job *j, int64_t *tokens);

/* The prior's sampler (Diffuzz.sample) on the backend: x ~ N(0, I) from each image's seed, r
 * over linspace(1, 0, steps + 2)[1:], the conditional (CLIP text) and unconditional (zeros)
 * rows in one forward per step, guidance and the DDPM (or DDIM) step in one backend op. The
 * noise of every step and the r-embeddings are uploaded once; the host reads the result once. */
typedef struct {
  int B, steps;
  float cfg;
  bool ddim;
  const uint64_t *seeds;       /* (B) */
  const float *clip_text;      /* (clip_r) host: the prompt's CLIP text embedding */
  pa_progress_fn progress;
  void *progress_user;
} pa_prior_job;
int pa_prior_sample(pa_prior *m, const pa_prior_job *j, float *out /* (B, clip_r) host */);

#endif
