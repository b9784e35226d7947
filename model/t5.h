/* The T5 encoder as Paella conditions on it: ByT5-XL (google/byt5-xl), transformers
 * `T5EncoderModel` state_dict names. Pre-norm blocks with T5's RMS norm (no mean, no bias),
 * unscaled attention scores plus a learned relative position bias (table only in block 0,
 * reused by every block), gated-GELU feed-forward (tanh GELU), no bias anywhere. Paella calls
 * it without an attention mask, so padding tokens are attended like any other token. */
#ifndef PAELLA_MODEL_T5_H
#define PAELLA_MODEL_T5_H

#include <jansson.h>
#include <stdbool.h>

#include "ops/ops.h"

typedef struct {
  int vocab_size, d_model, d_kv, d_ff, num_layers, num_heads;
  int num_buckets, max_distance; /* relative_attention_num_buckets / _max_distance */
  double eps;                    /* layer_norm_epsilon */
} pa_t5_config;

pa_t5_config pa_t5_default_config(void); /* ByT5-XL encoder */
/* transformers T5Config JSON; only feed_forward_proj "gated-gelu" is supported. */
int pa_t5_config_from_json(json_t *cfg, pa_t5_config *out);
/* Sizes from the tensor shapes (heads and buckets from the bias table); the published
 * defaults for what shapes do not tell (max_distance 128, eps 1e-6). */
int pa_t5_config_infer(const pa_weights *w, pa_t5_config *out);

/* T5's bidirectional bucket of relative position rel = key - query: half the buckets per
 * direction, exact below num_buckets/4, log-spaced up to max_distance. */
int pa_t5_bucket(int rel, int num_buckets, int max_distance);

typedef struct pa_t5 pa_t5;

/* Loads the encoder from w. The decoder.* and lm_head.* tensors of a full T5 checkpoint are
 * ignored; any other tensor the encoder does not use is an error (mark it used first to
 * accept it). `shared.weight` and `encoder.embed_tokens.weight` may both be present (tied):
 * they must then hold the same values. */
int pa_t5_load(pa_backend *be, pa_weights *w, const pa_t5_config *cfg, pa_t5 **out);
void pa_t5_free(pa_t5 *m);
const pa_t5_config *pa_t5_cfg(const pa_t5 *m);

/* hidden (B, L, d_model) device = encoder(ids (B, L) I64 host tensor): the last hidden state
 * after the final RMS norm. */
int pa_t5_encode(pa_t5 *m, const pa_tensor *ids, pa_tensor *hidden);

/* Called after every block ("block.%d") with its output (B, L, d_model). */
typedef void (*pa_t5_hook)(void *user, const char *name, const pa_tensor *t);
void pa_t5_set_hook(pa_t5 *m, pa_t5_hook hook, void *user);

#endif
