#include "model/default_model.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "ops/error.h"

/* Linked in by the pa_embed_file rules of model/CMakeLists.txt. */
extern const char pa_default_t5[], pa_default_t5_end[], pa_default_clip[], pa_default_clip_end[];
extern const char pa_default_prior[], pa_default_prior_end[], pa_default_vqgan[], pa_default_vqgan_end[];
extern const char pa_default_paella[], pa_default_paella_end[];

/* Random weights: N(0, 0.1^2), the VQGAN at 0.5 so that its output spans the pixel range. */
#define RANDOM_SEED 0x9aE11a5EEDull
#define RANDOM_SCALE 0.1f
#define RANDOM_SCALE_VQGAN 0.5f

static int open_blob(const char *start, const char *end, const char *net, pa_weights **w) {
  char source[96];
  snprintf(source, sizeof source, "embedded default model (%s)", net);
  return pa_safetensors_open_memory(start, (size_t)(end - start), source, w);
}

/* The constructor arguments train/train.py stored with the weights. */
static int config_json(const pa_weights *w, json_t **out) {
  const char *text = pa_weights_metadata(w, "config");
  json_error_t err;
  if (!text) return pa_fail(PA_ERR_FORMAT, "%s: no config in the metadata", pa_weights_source(w));
  if (!(*out = json_loads(text, 0, &err)))
    return pa_fail(PA_ERR_FORMAT, "%s: config metadata is not JSON (%s)", pa_weights_source(w), err.text);
  return PA_OK;
}

static int read_configs(pa_default_model *m) {
  json_t *t5 = NULL, *clip = NULL, *prior = NULL, *vqgan = NULL, *paella = NULL;
  int rc = PA_OK;
  m->t5_cfg = pa_t5_default_config();
  m->clip_text_cfg = pa_clip_text_default_config();
  m->clip_vision_cfg = pa_clip_vision_default_config();
  m->prior_cfg = pa_prior_default_config();
  m->vqgan_cfg = pa_vqgan_default_config();
  m->paella_cfg = pa_paella_default_config();
  PA_TRY(config_json(m->t5, &t5));
  PA_TRY(config_json(m->clip, &clip));
  PA_TRY(config_json(m->prior, &prior));
  PA_TRY(config_json(m->vqgan, &vqgan));
  PA_TRY(config_json(m->paella, &paella));
  PA_TRY(pa_t5_config_from_json(t5, &m->t5_cfg));
  PA_TRY(pa_clip_config_from_json(clip, false, &m->clip_text_cfg));
  PA_TRY(pa_clip_config_from_json(clip, true, &m->clip_vision_cfg));
  PA_TRY(pa_prior_config_from_json(prior, &m->prior_cfg));
  PA_TRY(pa_vqgan_config_from_json(vqgan, &m->vqgan_cfg));
  PA_TRY(pa_paella_config_from_json(paella, &m->paella_cfg));
fail:
  json_decref(t5);
  json_decref(clip);
  json_decref(prior);
  json_decref(vqgan);
  json_decref(paella);
  return rc;
}

/* Swaps every trained weight set for an empty one that creates random tensors on request. */
static int randomise(pa_default_model *m) {
  pa_weights **ws[] = {&m->t5, &m->clip, &m->prior, &m->vqgan, &m->paella};
  for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
    pa_weights_free(*ws[i]);
    if (!(*ws[i] = pa_weights_new("default model (random weights)"))) return PA_ERR_NOMEM;
    pa_weights_set_autocreate(*ws[i], RANDOM_SEED + i, ws[i] == &m->vqgan ? RANDOM_SCALE_VQGAN : RANDOM_SCALE);
  }
  return PA_OK;
}

int pa_default_model_open(bool random_weights, pa_default_model *out) {
  pa_default_model m = {0};
  int rc = PA_OK;
  PA_TRY(open_blob(pa_default_t5, pa_default_t5_end, "t5", &m.t5));
  PA_TRY(open_blob(pa_default_clip, pa_default_clip_end, "clip", &m.clip));
  PA_TRY(open_blob(pa_default_prior, pa_default_prior_end, "prior", &m.prior));
  PA_TRY(open_blob(pa_default_vqgan, pa_default_vqgan_end, "vqgan", &m.vqgan));
  PA_TRY(open_blob(pa_default_paella, pa_default_paella_end, "paella", &m.paella));
  PA_TRY(read_configs(&m));
  if (random_weights) PA_TRY(randomise(&m));
  *out = m;
  return PA_OK;
fail:
  pa_default_model_free(&m);
  return rc;
}

void pa_default_model_blobs(pa_default_blob out[5]) {
  out[0] = (pa_default_blob){pa_default_t5, pa_default_t5_end};
  out[1] = (pa_default_blob){pa_default_clip, pa_default_clip_end};
  out[2] = (pa_default_blob){pa_default_prior, pa_default_prior_end};
  out[3] = (pa_default_blob){pa_default_vqgan, pa_default_vqgan_end};
  out[4] = (pa_default_blob){pa_default_paella, pa_default_paella_end};
}

void pa_default_model_free(pa_default_model *m) {
  pa_weights *ws[] = {m->t5, m->clip, m->prior, m->vqgan, m->paella};
  for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) pa_weights_free(ws[i]);
  m->t5 = m->clip = m->prior = m->vqgan = m->paella = NULL;
}
