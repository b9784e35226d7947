/* The VQGAN f4 (src/vqgan.py::VQModel): images <-> 4x-downsampled latents <-> codebook
 * tokens. Paella v3 uses only the token path (encode -> indices, decode_indices). NHWC. */
#ifndef PAELLA_MODEL_VQGAN_H
#define PAELLA_MODEL_VQGAN_H

#include <jansson.h>

#include "ops/ops.h"

typedef struct {
  int levels, bottleneck_blocks, c_hidden, c_latent, codebook_size;
  double scale_factor;
} pa_vqgan_config;

pa_vqgan_config pa_vqgan_default_config(void); /* VQModel() as published */
int pa_vqgan_config_from_json(json_t *cfg, pa_vqgan_config *out);
int pa_vqgan_config_infer(const pa_weights *w, pa_vqgan_config *out);

typedef struct pa_vqgan pa_vqgan;

int pa_vqgan_load(pa_backend *be, pa_weights *w, const pa_vqgan_config *cfg, pa_vqgan **out);
void pa_vqgan_free(pa_vqgan *m);
const pa_vqgan_config *pa_vqgan_cfg(const pa_vqgan *m);
/* Spatial downsampling factor image -> tokens (4 for the published model). */
int pa_vqgan_factor(const pa_vqgan *m);

/* image (B, H, W, 3) in [0, 1] -> latent (B, H/f, W/f, c_latent) = BatchNorm output before
 * the scale factor (may be NULL) and indices (B, H/f, W/f) int64 (may be NULL). */
int pa_vqgan_encode(pa_vqgan *m, const pa_tensor *image, pa_tensor *latent, pa_tensor *indices);
/* codebook rows for indices: (B, h, w) -> (B, h, w, c_latent) */
int pa_vqgan_lookup(pa_vqgan *m, const pa_tensor *indices, pa_tensor *latent);
/* decoder on a latent (B, h, w, c_latent) that is multiplied by `scale` first (decode():
 * scale = scale_factor on an encode() output; decode_indices: scale 1 on codebook rows). */
int pa_vqgan_decode(pa_vqgan *m, const pa_tensor *latent, float scale, pa_tensor *image);
int pa_vqgan_decode_indices(pa_vqgan *m, const pa_tensor *indices, pa_tensor *image);

typedef void (*pa_vqgan_hook)(void *user, const char *name, const pa_tensor *t);
void pa_vqgan_set_hook(pa_vqgan *m, pa_vqgan_hook hook, void *user);

#endif
