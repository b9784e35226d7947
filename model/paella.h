/* The Paella v3 denoiser (src_distributed/modules.py::Paella): a U-Net of ResBlocks,
 * TimestepBlocks and cross-attention over a discrete token grid, predicting logits over the
 * VQGAN codebook for every position. Activations are NHWC; the forward is a flat list of
 * backend op calls. */
#ifndef PAELLA_MODEL_PAELLA_H
#define PAELLA_MODEL_PAELLA_H

#include <jansson.h>
#include <stdbool.h>

#include "ops/ops.h"

#define PAELLA_MAX_LEVELS 6
#define PAELLA_MAX_PATTERN 8

typedef struct {
  int c_in, c_out, num_labels, c_r, patch_size, c_cond;
  int levels;
  int c_hidden[PAELLA_MAX_LEVELS], nhead[PAELLA_MAX_LEVELS], blocks[PAELLA_MAX_LEVELS];
  char level_config[PAELLA_MAX_LEVELS][PAELLA_MAX_PATTERN + 1]; /* e.g. "CTA" */
  int clip_embd, byt5_embd, clip_seq_len, kernel_size;
  bool self_attn;
} pa_paella_config;

/* The published v3 configuration (Paella(byt5_embd=2560)). */
pa_paella_config pa_paella_default_config(void);
/* Config from JSON constructor kwargs (missing keys keep the defaults of `base`). */
int pa_paella_config_from_json(json_t *cfg, pa_paella_config *out);
/* Config read off the state_dict shapes (nhead assumed head dim 80 unless `cfg` says). */
int pa_paella_config_infer(const pa_weights *w, pa_paella_config *out);

typedef struct pa_paella pa_paella;

/* Loads every parameter, checking each key and shape; a tensor of `w` that no parameter
 * claimed (and the caller did not mark used) is an error. */
int pa_paella_load(pa_backend *be, pa_weights *w, const pa_paella_config *cfg, pa_paella **out);
void pa_paella_free(pa_paella *m);
const pa_paella_config *pa_paella_cfg(const pa_paella *m);
pa_backend *pa_paella_backend(const pa_paella *m);

/* Conditioning prepared once per (prompt, image): the normalised sequence and, per
 * attention block, its kv_mapper output (which depends only on the conditioning). */
typedef struct pa_paella_cond pa_paella_cond;

/* byt5 (B, L, byt5_embd); clip / clip_image (B, clip_embd) or NULL. Device tensors. */
int pa_paella_cond_new(pa_paella *m, const pa_tensor *byt5, const pa_tensor *clip,
                       const pa_tensor *clip_image, pa_paella_cond **out);
void pa_paella_cond_free(pa_paella *m, pa_paella_cond *c);
/* (B, L_c, c_cond) after seq_norm (borrowed). */
const pa_tensor *pa_paella_cond_embed(const pa_paella_cond *c);

/* Several conditionings as one of their summed rows (in order), each row's sequence padded
 * at the end to the longest; attention masks the padding (pa_attn_params.key_pad), so every
 * row computes exactly what it computes alone. This is how conditional and unconditional
 * rows, and requests with different prompt lengths, share one forward. */
int pa_paella_cond_stack(pa_paella *m, pa_paella_cond *const *parts, int n, pa_paella_cond **out);
/* A view of rows [r0, r1) (borrows the tensors of c; free it before c). */
int pa_paella_cond_rows(const pa_paella_cond *c, int64_t r0, int64_t r1, pa_paella_cond **out);

/* logits (B, H, W, num_labels) NHWC from tokens x (B, H, W) int64 and r (B) host floats.
 * attn_weights (n) or (B, n) scales the softmax of the last n (unpadded) conditioning keys
 * of every attention layer (attention re-weighting), or NULL. */
int pa_paella_forward(pa_paella *m, const pa_paella_cond *c, const pa_tensor *x, const float *r,
                      const pa_tensor *attn_weights, pa_tensor *logits);
/* Noise levels prepared once (e.g. every step of a sampling loop): the r-embeddings and the
 * [a | m] modulation of every TimestepBlock for each of n levels r (host), in one GEMM over
 * the concatenated mapper weights. */
typedef struct pa_paella_time pa_paella_time;
int pa_paella_time_new(pa_paella *m, const float *r, int n, pa_paella_time **out);
void pa_paella_time_free(pa_paella *m, pa_paella_time *t);
/* The forward with every row at noise level `index` of t: no upload, no mapper GEMM. */
int pa_paella_forward_at(pa_paella *m, const pa_paella_cond *c, const pa_tensor *x, const pa_paella_time *t,
                         int index, const pa_tensor *attn_weights, pa_tensor *logits);

/* Debug hook: when set, called with each named intermediate (NHWC device tensor), e.g.
 * "down_blocks.1.3", "in_mapper", "embedding", "clf". */
typedef void (*pa_paella_hook)(void *user, const char *name, const pa_tensor *t);
void pa_paella_set_hook(pa_paella *m, pa_paella_hook hook, void *user);

#endif
