#include "model/nn.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Upstream evaluates exp() with PyTorch's vectorised float32 kernel, which differs from libm's
 * expf by one ulp on a few entries (c_r=64: k = 1, 22, 29). One ulp of a frequency moves
 * sin(r*1e4*f) by ~1e-4, as much as the whole error budget, so the tables of the published
 * models (prior and Paella: c_r=64) and of the golden tiny configs are the upstream values
 * bit for bit; any other c_r uses libm. */
static const float freqs_c_r8[4] = {
    0x1p+0, 0x1.7c3d2cp-5, 0x1.1a62d6p-9, 0x1.a36e2cp-14};
static const float freqs_c_r16[8] = {
    0x1p+0, 0x1.12b544p-2, 0x1.26c884p-4, 0x1.3c535ap-6, 0x1.53712cp-8, 0x1.6c3f78p-10,
    0x1.86ddep-12, 0x1.a36e2cp-14};
static const float freqs_c_r64[32] = {
    0x1p+0, 0x1.7c65c4p-1, 0x1.1a9f26p-1, 0x1.a3f496p-2, 0x1.3803p-2, 0x1.cfa08p-3,
    0x1.587546p-3, 0x1.ffd702p-4, 0x1.7c4752p-4, 0x1.1a8886p-4, 0x1.a3d2fap-5, 0x1.37ea06p-5,
    0x1.cf7b62p-6, 0x1.5859b4p-6, 0x1.ffae06p-7, 0x1.7c28ep-7, 0x1.1a71e8p-7, 0x1.a3b15ep-8,
    0x1.37d11p-8, 0x1.cf564cp-9, 0x1.583e28p-9, 0x1.ff850ep-10, 0x1.7c0a7p-10, 0x1.1a5b4ap-10,
    0x1.a38fc4p-11, 0x1.37b81ap-11, 0x1.cf3134p-12, 0x1.58228cp-12, 0x1.ff5c1ap-13,
    0x1.7becp-13, 0x1.1a44aep-13, 0x1.a36e2cp-14};

void pa_r_freqs(int c_r, float *freqs) {
  int half = c_r / 2;
  const float *exact = c_r == 8 ? freqs_c_r8 : c_r == 16 ? freqs_c_r16 : c_r == 64 ? freqs_c_r64 : NULL;
  if (exact) {
    memcpy(freqs, exact, (size_t)half * sizeof *freqs);
    return;
  }
  /* upstream: math.log(1e4)/(half-1) in double, then arange(half).float().mul(-emb).exp() in
   * float32: the multiplier is rounded to float32 first */
  float step = (float)(-log(10000.0) / (half - 1));
  for (int k = 0; k < half; k++) freqs[k] = expf((float)k * step);
}

pa_tensor *pa_r_embedding(const float *r, int B, int c_r) {
  pa_tensor *t = pa_tensor_new_2d(PA_F32, B, c_r);
  if (!t) return NULL;
  int half = c_r / 2;
  float freqs[4096];
  if (half > 4096 || half < 2) {
    pa_tensor_free(t);
    pa_fail(PA_ERR_INVALID, "c_r=%d out of range", c_r);
    return NULL;
  }
  pa_r_freqs(c_r, freqs);
  float *e = t->data;
  for (int b = 0; b < B; b++)
    for (int k = 0; k < half; k++) {
      double arg = (double)r[b] * 10000.0 * (double)freqs[k];
      e[b * c_r + k] = (float)sin(arg);
      e[b * c_r + half + k] = (float)cos(arg);
    }
  return t;
}

int pa_cfg_int(json_t *cfg, const char *key, int *out) {
  json_t *v = cfg ? json_object_get(cfg, key) : NULL;
  if (!v) return PA_OK;
  if (!json_is_integer(v)) return pa_fail(PA_ERR_INVALID, "config '%s' must be an integer", key);
  *out = (int)json_integer_value(v);
  return PA_OK;
}

int pa_cfg_float(json_t *cfg, const char *key, double *out) {
  json_t *v = cfg ? json_object_get(cfg, key) : NULL;
  if (!v) return PA_OK;
  if (!json_is_number(v)) return pa_fail(PA_ERR_INVALID, "config '%s' must be a number", key);
  *out = json_number_value(v);
  return PA_OK;
}

int pa_cfg_bool(json_t *cfg, const char *key, bool *out) {
  json_t *v = cfg ? json_object_get(cfg, key) : NULL;
  if (!v) return PA_OK;
  if (!json_is_boolean(v)) return pa_fail(PA_ERR_INVALID, "config '%s' must be a boolean", key);
  *out = json_is_true(v);
  return PA_OK;
}

int pa_cfg_int_array(json_t *cfg, const char *key, int *out, int max, int *n) {
  json_t *v = cfg ? json_object_get(cfg, key) : NULL;
  if (!v) return PA_OK;
  if (!json_is_array(v) || json_array_size(v) > (size_t)max || json_array_size(v) == 0)
    return pa_fail(PA_ERR_INVALID, "config '%s' must be an array of 1..%d integers", key, max);
  for (size_t i = 0; i < json_array_size(v); i++) {
    json_t *e = json_array_get(v, i);
    if (!json_is_integer(e)) return pa_fail(PA_ERR_INVALID, "config '%s'[%zu] must be an integer", key, i);
    out[i] = (int)json_integer_value(e);
  }
  *n = (int)json_array_size(v);
  return PA_OK;
}

json_t *pa_cfg_from_weights(const pa_weights *w, int *rc) {
  *rc = PA_OK;
  const char *s = pa_weights_metadata(w, "config");
  if (!s) return NULL;
  json_error_t err;
  json_t *cfg = json_loads(s, 0, &err);
  if (!cfg || !json_is_object(cfg)) {
    json_decref(cfg);
    *rc = pa_fail(PA_ERR_FORMAT, "%s: metadata 'config' is not a JSON object (%s)",
                  pa_weights_source(w), err.text);
    return NULL;
  }
  return cfg;
}
