/* The embedded default model: the Paella v3 stack (ByT5-style T5 encoder, CLIP text and vision
 * towers, prior, Paella denoiser, VQGAN f4) at emoji scale, trained by `bash train/run.sh` on the
 * Twemoji set (CC-BY 4.0, see NOTICE): 32x32 images (8x8 tokens), a few MB of F16 weights linked
 * into the library. Each network's constructor arguments travel in its safetensors
 * __metadata__["config"], written by train/train.py, so the sizes are defined once. */
#ifndef PAELLA_MODEL_DEFAULT_MODEL_H
#define PAELLA_MODEL_DEFAULT_MODEL_H

#include <stdbool.h>

#include "model/clip.h"
#include "model/paella.h"
#include "model/prior.h"
#include "model/t5.h"
#include "model/vqgan.h"

/* The image side the default model was trained at (pixels). */
#define PA_DEFAULT_NATIVE_SIZE 32

typedef struct {
  pa_weights *t5, *clip, *prior, *vqgan, *paella; /* owned by the caller once opened */
  pa_t5_config t5_cfg;
  pa_clip_config clip_text_cfg, clip_vision_cfg;
  pa_prior_config prior_cfg;
  pa_vqgan_config vqgan_cfg;
  pa_paella_config paella_cfg;
} pa_default_model;

/* The embedded weights and their configurations. random_weights: the same architecture with
 * deterministic random weights instead (the baseline of the quality test). */
int pa_default_model_open(bool random_weights, pa_default_model *out);
/* Where the embedded weights of each network are (for checksums): t5, clip, prior, vqgan,
 * paella in this order. */
typedef struct {
  const char *start, *end;
} pa_default_blob;
void pa_default_model_blobs(pa_default_blob out[5]);
/* Frees the five weight sets (for callers that did not hand them on). */
void pa_default_model_free(pa_default_model *m);

#endif
