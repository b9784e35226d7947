/* The two CLIP towers Paella conditions on (OpenCLIP ViT-H-14, laion2B-s32B-b79K, in its
 * transformers layout: CLIPTextModelWithProjection / CLIPVisionModelWithProjection names),
 * plus CLIP's image preprocessing.
 *
 * Both towers are pre-LN transformers (LayerNorm with affine, eps 1e-5; q/k/v/out
 * projections with bias; MLP fc1-GELU-fc2; attention scale 1/sqrt(head_dim)).
 * Text: token + position embeddings, causal mask, final LayerNorm, pooled at the first
 * position of the largest id (the EOT token, 49407, as OpenCLIP's argmax), projected without
 * bias. Vision: a stride-patch conv without bias, a class token in front, position
 * embeddings, `pre_layrnorm` (sic), no mask; the class token after `post_layernorm` is
 * projected without bias. */
#ifndef PAELLA_MODEL_CLIP_H
#define PAELLA_MODEL_CLIP_H

#include <jansson.h>
#include <stdint.h>

#include "ops/ops.h"

typedef struct {
  int hidden_size, intermediate_size, num_layers, num_heads, projection_dim;
  int vocab_size, max_positions; /* text tower */
  int image_size, patch_size;    /* vision tower */
  double eps;                    /* layer_norm_eps */
  pa_act act;                    /* hidden_act: "gelu" (erf) or a tanh GELU */
} pa_clip_config;

/* ViT-H-14 as published: text width 1024, 24 layers, 16 heads; vision 1280, 32, 16. */
pa_clip_config pa_clip_text_default_config(void);
pa_clip_config pa_clip_vision_default_config(void);
/* A CLIPTextConfig / CLIPVisionConfig JSON, or a full CLIPConfig (text_config /
 * vision_config inside, projection_dim at the top). */
int pa_clip_config_from_json(json_t *cfg, bool vision, pa_clip_config *out);
/* Sizes from the shapes; heads (not in any shape) default to ViT-H-14's 16. */
int pa_clip_config_infer(const pa_weights *w, bool vision, pa_clip_config *out);

typedef struct pa_clip pa_clip;

/* Loads one tower. Tensors of the other tower, `logit_scale` and the `position_ids`
 * buffers of a full CLIPModel checkpoint are ignored; any other unused tensor is an error. */
int pa_clip_load(pa_backend *be, pa_weights *w, const pa_clip_config *cfg, bool vision, pa_clip **out);
void pa_clip_free(pa_clip *m);
const pa_clip_config *pa_clip_cfg(const pa_clip *m);

/* ids (B, L) I64 host tensor, L <= max_positions -> hidden (B, L, C) after the final
 * LayerNorm and embeds (B, projection_dim), both device tensors. */
int pa_clip_text_forward(pa_clip *m, const pa_tensor *ids, pa_tensor *hidden, pa_tensor *embeds);
/* pixels (B, S, S, 3) NHWC device tensor, already normalised -> hidden (B, 1 + (S/p)^2, C)
 * before post_layernorm, and embeds (B, projection_dim). */
int pa_clip_vision_forward(pa_clip *m, const pa_tensor *pixels, pa_tensor *hidden, pa_tensor *embeds);

/* Called after every encoder layer ("layers.%d") with its output (B, L, C). */
typedef void (*pa_clip_hook)(void *user, const char *name, const pa_tensor *t);
void pa_clip_set_hook(pa_clip *m, pa_clip_hook hook, void *user);

/* CLIP image preprocessing, as transformers' CLIPImageProcessor for ViT-H-14: resize the
 * shortest side to `size` (the other to floor(size * long / short)) with PIL's bicubic
 * (Keys cubic a = -0.5, the kernel widened by the scale factor when downscaling, i.e.
 * antialiased, weights normalised per output pixel, horizontal pass then vertical pass),
 * centre crop size x size at offset floor((H - size) / 2), floor((W - size) / 2), then
 * (v - mean) / std per channel. Returns a new host (1, size, size, 3) F32 NHWC tensor.
 *
 * `rgb_u8` (H, W, 3) follows PIL's 8-bit path bit for bit (22-bit fixed-point weights,
 * each pass rounded and clipped to 0..255), which is what the slow CLIPImageProcessor
 * computes. `rgb_f32` (H, W, 3) in [0, 1] is resampled in floating point with the same
 * weights and no intermediate rounding (PIL's mode "F", and torchvision's antialiased
 * bicubic on tensors as in CLIPImageProcessorFast); it differs from the 8-bit path by the
 * 8-bit roundings only, at most ~2/255 before normalisation. */
#define PA_CLIP_IMAGE_SIZE 224
extern const float pa_clip_mean[3], pa_clip_std[3];
int pa_clip_preprocess_u8(const uint8_t *rgb, int H, int W, int size, pa_tensor **out);
int pa_clip_preprocess_f32(const float *rgb, int H, int W, int size, pa_tensor **out);

#endif
