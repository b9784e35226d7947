/* The CLIP-embedding prior (Arroz-Con-Cosas arroz/modules.py::PriorModel): an MLP of residual
 * blocks that predicts the noise of a diffused CLIP image embedding given the CLIP text
 * embedding, plus the cosine-schedule DDPM/DDIM samplers of arroz/diffusion.py (Diffuzz). */
#ifndef PAELLA_MODEL_PRIOR_H
#define PAELLA_MODEL_PRIOR_H

#include <jansson.h>

#include "ops/ops.h"

typedef struct {
  int clip_r, c_hidden, c_r, num_blocks;
} pa_prior_config;

pa_prior_config pa_prior_default_config(void); /* PriorModel() as published */
int pa_prior_config_from_json(json_t *cfg, pa_prior_config *out);
int pa_prior_config_infer(const pa_weights *w, pa_prior_config *out);

typedef struct pa_prior pa_prior;

int pa_prior_load(pa_backend *be, pa_weights *w, const pa_prior_config *cfg, pa_prior **out);
void pa_prior_free(pa_prior *m);
const pa_prior_config *pa_prior_cfg(const pa_prior *m);
pa_backend *pa_prior_backend(const pa_prior *m);

/* pred (B, clip_r) = model(x (B, clip_r), r (B) host, c (B, clip_r)); device tensors. */
int pa_prior_forward(pa_prior *m, const pa_tensor *x, const float *r, const pa_tensor *c,
                     pa_tensor *pred);
/* The same with the r embedding (B, c_r) already on the backend (a sampling loop uploads the
 * embeddings of all its steps once). */
int pa_prior_forward_embedded(pa_prior *m, const pa_tensor *x, const pa_tensor *r_embed, const pa_tensor *c,
                              pa_tensor *pred);

typedef void (*pa_prior_hook)(void *user, const char *name, const pa_tensor *t);
void pa_prior_set_hook(pa_prior *m, pa_prior_hook hook, void *user);

/* Diffuzz cosine schedule, s = 0.008: clamp(cos((t+s)/(1+s)*pi/2)^2 / cos(s/(1+s)*pi/2)^2,
 * 1e-4, 0.9999), in double. */
double pa_diffuzz_alpha_cumprod(double t);
/* The coefficients of one step from t to t_prev (ops/backend.h pa_diffuzz_params). */
pa_diffuzz_params pa_diffuzz_at(float t, float t_prev, bool ddim, float cfg);
/* One denoising step per row (host arrays of n = B*D, t/t_prev per row of D values). z is the
 * standard-normal draw of the DDPM step (ignored by DDIM, eta = 0). */
void pa_diffuzz_ddpm_step(float *x_prev, const float *x, const float *eps, const float *z,
                          const float *t, const float *t_prev, int B, int D);
void pa_diffuzz_ddim_step(float *x_prev, const float *x, const float *eps, const float *t,
                          const float *t_prev, int B, int D);
/* sqrt(a(t))*x + sqrt(1-a(t))*noise */
void pa_diffuzz_diffuse(float *out, const float *x, const float *noise, const float *t, int B, int D);

#endif
