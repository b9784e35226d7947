/* The backend interface: a table of op functions that every network calls (model/ never
 * touches CUDA or BLAS directly). ops/cpu_backend.c is the reference implementation
 * (float32, OpenBLAS GEMMs, OpenMP across cores); kernels/ provides the CUDA twin.
 *
 * Conventions: activations are row-major with channels last: (B, H, W, C) images,
 * (B, L, C) sequences, (N, C) rows. Weights keep their PyTorch layouts; each op documents
 * which. Output tensors are allocated by the caller with pa_alloc() on the same backend.
 * Call the checked wrappers in ops/ops.h, not these pointers. */
#ifndef PAELLA_OPS_BACKEND_H
#define PAELLA_OPS_BACKEND_H

#include <stdbool.h>

#include "ops/tensor.h"

typedef enum { PA_ACT_NONE, PA_ACT_GELU, PA_ACT_GELU_TANH, PA_ACT_SILU } pa_act;
typedef enum { PA_PAD_ZERO, PA_PAD_REPLICATE } pa_pad_mode;

typedef struct {
  int stride, pad, groups;
  pa_pad_mode pad_mode;
} pa_conv_params;

typedef struct {
  int nhead;
  float scale;                 /* multiplies q.k (1/sqrt(d) for MHA, 1 for T5) */
  bool causal;                 /* key j > query i masked out (CLIP text) */
  const pa_tensor *pos_bias;   /* (H, Lq, Lk) added to the scores before softmax (T5), or NULL */
  /* (n) or (B, n) per row: multiplies the softmax of the last n keys of each row that are not
   * padding (no renormalisation) */
  const pa_tensor *key_weight;
  /* (B) I32 or NULL: the last key_pad[b] keys of row b are padding and never attended, so
   * rows whose key sequences differ in length share one batch (a key-padding mask). A row is
   * computed exactly as if its keys were only the first Lk - key_pad[b]. */
  const pa_tensor *key_pad;
  /* (B, L2, C) or NULL: more keys and values after those of k and v (key j >= Lk of row b is
   * k2[b, j - Lk]); the attention runs over Lk + L2 keys. Paella's cached conditioning keys. */
  const pa_tensor *k2, *v2;
  /* Row strides (floats) of q, k/v and k2/v2 when they are column slices of wider rows (a
   * fused q|k|v projection); 0 = C, contiguous. */
  int64_t q_ld, kv_ld, kv2_ld;
} pa_attn_params;

/* One fused sampler step over device logits (model/sampler.h: pa_sampler_step). Position p
 * of image b: logits = cond, or cond2 where p lies in the second region (right half or bottom
 * half of the (h, w) grid), then cfg_combine(logits, uncond) (when uncond), then typical
 * filtering (when typical_mass > 0), token = argmax of logit/temp +
 * Gumbel(Philox(seeds[b], PA_RNG_SAMPLE, step, p, class)) (plain argmax when `argmax`), then
 * re-noise (token = init where uniform(seeds[b], PA_RNG_RENOISE, step, p) <= renoise_t) and
 * the inpainting pin (token = pinned where keep[p]). Logits are only read; no probabilities
 * are written. All tensors live on the backend. */
typedef enum { PA_SAMPLE_REGIONS_NONE, PA_SAMPLE_REGIONS_LEFT_RIGHT, PA_SAMPLE_REGIONS_TOP_BOTTOM } pa_sample_regions;
typedef struct {
  const pa_tensor *cond;   /* (B, h, w, K) F32 (any (B, ..., K) without regions) */
  const pa_tensor *uncond; /* same shape, or NULL (no guidance) */
  const pa_tensor *cond2;  /* same shape: the second region's logits, or NULL */
  pa_sample_regions regions;
  float cfg, temp;
  bool argmax;
  float typical_mass; /* > 0: v1 typical filtering of the guided logits (pa_typical_filter) */
  int typical_min_tokens;
  const pa_tensor *seeds; /* (B) I64: the seed of each image (any request's, in any order) */
  int step;
  bool renoise;
  float renoise_t;
  const pa_tensor *init;   /* (B, n) I64 initial noise; required when renoise */
  const pa_tensor *pinned; /* (B, n) I64 or NULL */
  const pa_tensor *keep;   /* (n) U8 or NULL: 1 where pinned wins */
  pa_tensor *tokens;       /* (B, n) I64 out */
} pa_sample_params;

/* One step of the prior's Diffuzz sampler, every row at the same noise level:
 * eps = pa_prior_guidance(eps_c, eps_u, cfg), then x = pa_diffuzz_ddpm(x, eps, z, a, ac, sd) or
 * pa_diffuzz_ddim(x, eps, ac, acp) (ops/rng.h), in place. */
typedef struct {
  float cfg;
  bool ddim;
  double a, ac, acp, sd; /* a = ac / acp; sd the DDPM noise scale (0 on the last step) */
} pa_diffuzz_params;

typedef struct pa_backend pa_backend;
struct pa_backend {
  const char *name;
  pa_device device;
  void *ctx;

  /* memory */
  pa_tensor *(*alloc)(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape);
  void (*release)(pa_backend *be, pa_tensor *t);
  int (*to_host)(pa_backend *be, pa_tensor *host_dst, const pa_tensor *src);
  int (*from_host)(pa_backend *be, pa_tensor *dst, const pa_tensor *host_src);
  int (*sync)(pa_backend *be);

  /* y(..., N) = act(x(..., K) @ w(N, K)^T + b(N)) */
  int (*linear)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                const pa_tensor *b, pa_act act);
  /* y(N, D) = table(V, D)[ids(N)] ; ids int64 */
  int (*embedding)(pa_backend *be, pa_tensor *y, const pa_tensor *ids, const pa_tensor *table);
  /* over the last dim; gamma/beta optional */
  int (*layernorm)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
                   const pa_tensor *beta, float eps);
  int (*rmsnorm)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
                 float eps);
  int (*activation)(pa_backend *be, pa_tensor *y, const pa_tensor *x, pa_act act);
  /* y = a + alpha * b (same shapes; y may alias a) */
  int (*add)(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, float alpha);
  /* y = a * b elementwise */
  int (*mul)(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b);
  /* y = x * s + t with scalars */
  int (*affine)(pa_backend *be, pa_tensor *y, const pa_tensor *x, float s, float t);
  /* x (B, ..., C); y = x * (1 + a[b, c]) + m[b, c]; am (B, 2C) = [a | m] (TimestepBlock), or
   * (1, 2C) shared by every b */
  int (*modulate)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *am);
  /* x (..., C): y = x * scale[c] + shift[c] (BatchNorm in eval) */
  int (*channel_affine)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *scale,
                        const pa_tensor *shift);
  /* GlobalResponseNorm on (B, H, W, C), gamma/beta (C) */
  int (*grn)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
             const pa_tensor *beta);
  /* NHWC conv, w (O, I/groups, kh, kw), b (O) optional */
  int (*conv2d)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                const pa_tensor *b, pa_conv_params p);
  /* NHWC transposed conv, w (I, O, kh, kw), groups = 1 */
  int (*conv_transpose2d)(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                          const pa_tensor *b, pa_conv_params p);
  /* (B, H, W, C) -> (B, H/p, W/p, C*p*p), channel c*p*p + i*p + j (PyTorch order) */
  int (*pixel_unshuffle)(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p);
  int (*pixel_shuffle)(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p);
  /* y = cat([a, b], axis); a and b agree on every other dim */
  int (*concat)(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, int axis);
  /* y (B, Lq, C) = MHA over q (B, Lq, C), k/v (B, Lk, C); head h = features [h*d, (h+1)*d) */
  int (*attention)(pa_backend *be, pa_tensor *y, const pa_tensor *q, const pa_tensor *k,
                   const pa_tensor *v, const pa_attn_params *p);
  /* idx (N) int64 = argmin_k |z_n - e_k|^2 over codebook (K, C); z (N, C) */
  int (*vq_nearest)(pa_backend *be, pa_tensor *idx, const pa_tensor *z, const pa_tensor *codebook);
  int (*copy)(pa_backend *be, pa_tensor *y, const pa_tensor *x);

  /* Optional (NULL = the generic path). upload_param makes a network parameter resident
   * (pa_param; e.g. CUDA keeps a bf16 GEMM copy beside the F32 one). sample is the fused
   * sampler step; shapes are checked by pa_sampler_step. */
  pa_tensor *(*upload_param)(pa_backend *be, const pa_tensor *host);
  int (*sample)(pa_backend *be, const pa_sample_params *p);

  /* x (B, D) updated in place from eps_c, eps_u (B, D) and z (B, D) (DDPM only, else NULL) */
  int (*diffuzz_step)(pa_backend *be, pa_tensor *x, const pa_tensor *eps_c, const pa_tensor *eps_u,
                      const pa_tensor *z, const pa_diffuzz_params *p);
};

pa_backend *pa_cpu_backend(void);
/* "cpu" or "cuda"; NULL + error if unavailable in this build. */
pa_backend *pa_backend_by_name(const char *name);

#endif
