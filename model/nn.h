/* Small pieces shared by the networks: the sinusoidal r-embedding, config JSON access. */
#ifndef PAELLA_MODEL_NN_H
#define PAELLA_MODEL_NN_H

#include <jansson.h>
#include <stdbool.h>

#include "ops/ops.h"

/* r-embedding (Paella and prior): emb[b] = [sin(r*1e4*f_k) | cos(r*1e4*f_k)], k < c_r/2,
 * f_k = exp(k * float32(-ln(1e4)/(c_r/2-1))) in float32 exactly as upstream; the argument and
 * sin/cos are evaluated in double (the argument reaches 1e4, where float32 loses ~1e-4).
 * A zero column is appended when c_r is odd. Returns a host (B, c_r) F32 tensor. */
pa_tensor *pa_r_embedding(const float *r, int B, int c_r);
/* The float32 frequency table f_k (c_r/2 values) into freqs. */
void pa_r_freqs(int c_r, float *freqs);

/* Reading constructor kwargs: each returns PA_OK and leaves *out untouched when the key is
 * absent; a present key of the wrong type is an error naming it. */
int pa_cfg_int(json_t *cfg, const char *key, int *out);
int pa_cfg_float(json_t *cfg, const char *key, double *out);
int pa_cfg_bool(json_t *cfg, const char *key, bool *out);
/* Int array into out[max]; *n = its length. */
int pa_cfg_int_array(json_t *cfg, const char *key, int *out, int max, int *n);
/* Parses the safetensors "config" metadata of w, or returns NULL (no config). */
json_t *pa_cfg_from_weights(const pa_weights *w, int *rc);

#endif
