#include "model/prior.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"
#include "ops/rng.h"

#define LN_EPS 1e-5f /* PyTorch's default: the prior's LayerNorms are affine, eps 1e-5 */

typedef struct {
  pa_tensor *fc1_w, *ln1_w, *ln1_b, *fc2_w, *ln2_w, *ln2_b;
} prior_block;

struct pa_prior {
  pa_backend *be;
  pa_prior_config cfg;
  pa_tensor *in_w, *in_b, *out_w, *out_b;
  prior_block *blocks; /* num_blocks middle blocks: blocks.1 .. blocks.N */
  pa_prior_hook hook;
  void *hook_user;
};

pa_prior_config pa_prior_default_config(void) {
  return (pa_prior_config){.clip_r = 1024, .c_hidden = 1280, .c_r = 64, .num_blocks = 48};
}

static int check_config(const pa_prior_config *c) {
  if (c->clip_r < 1 || c->c_hidden < 1 || c->c_r < 4 || c->num_blocks < 0)
    return pa_fail(PA_ERR_INVALID, "prior config out of range");
  return PA_OK;
}

int pa_prior_config_from_json(json_t *cfg, pa_prior_config *out) {
  pa_prior_config c = *out;
  int rc = PA_OK;
  PA_TRY(pa_cfg_int(cfg, "clip_r", &c.clip_r));
  PA_TRY(pa_cfg_int(cfg, "c_hidden", &c.c_hidden));
  PA_TRY(pa_cfg_int(cfg, "c_r", &c.c_r));
  PA_TRY(pa_cfg_int(cfg, "num_blocks", &c.num_blocks));
  PA_TRY(check_config(&c));
  *out = c;
fail:
  return rc;
}

int pa_prior_config_infer(const pa_weights *w, pa_prior_config *out) {
  const pa_tensor *in = pa_weights_find(w, "blocks.0.weight"), *mid = pa_weights_find(w, "blocks.1.0.weight");
  if (!in || in->ndim != 2)
    return pa_fail(PA_ERR_FORMAT, "%s: not a prior checkpoint (no blocks.0.weight)", pa_weights_source(w));
  pa_prior_config c = {.clip_r = (int)in->shape[1], .c_hidden = (int)in->shape[0], .num_blocks = 0};
  while (pa_weights_has(w, "blocks.%d.0.weight", c.num_blocks + 1)) c.num_blocks++;
  c.c_r = mid && mid->ndim == 2 ? (int)mid->shape[1] - c.clip_r - c.c_hidden : 64;
  int rc = check_config(&c);
  if (rc == PA_OK) *out = c;
  return rc;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

int pa_prior_load(pa_backend *be, pa_weights *w, const pa_prior_config *cfg, pa_prior **out) {
  int rc = check_config(cfg);
  if (rc) return rc;
  pa_prior *m = calloc(1, sizeof *m);
  if (!m) return pa_fail(PA_ERR_NOMEM, "out of memory");
  m->be = be;
  m->cfg = *cfg;
  int R = cfg->clip_r, H = cfg->c_hidden, N = cfg->num_blocks, in = R + H + cfg->c_r;
  if (!(m->blocks = calloc((size_t)(N ? N : 1), sizeof *m->blocks))) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  PA_TRY(pa_param(be, w, &m->in_w, 2, SHAPE(H, R), "blocks.0.weight"));
  PA_TRY(pa_param(be, w, &m->in_b, 1, SHAPE(H), "blocks.0.bias"));
  for (int i = 0; i < N; i++) {
    prior_block *b = &m->blocks[i];
    PA_TRY(pa_param(be, w, &b->fc1_w, 2, SHAPE(4 * H, in), "blocks.%d.0.weight", i + 1));
    PA_TRY(pa_param(be, w, &b->ln1_w, 1, SHAPE(4 * H), "blocks.%d.1.weight", i + 1));
    PA_TRY(pa_param(be, w, &b->ln1_b, 1, SHAPE(4 * H), "blocks.%d.1.bias", i + 1));
    PA_TRY(pa_param(be, w, &b->fc2_w, 2, SHAPE(H, 4 * H), "blocks.%d.3.weight", i + 1));
    PA_TRY(pa_param(be, w, &b->ln2_w, 1, SHAPE(H), "blocks.%d.4.weight", i + 1));
    PA_TRY(pa_param(be, w, &b->ln2_b, 1, SHAPE(H), "blocks.%d.4.bias", i + 1));
  }
  PA_TRY(pa_param(be, w, &m->out_w, 2, SHAPE(R, H), "blocks.%d.weight", N + 1));
  PA_TRY(pa_param(be, w, &m->out_b, 1, SHAPE(R), "blocks.%d.bias", N + 1));
  const char *extra = pa_weights_first_unused(w, NULL);
  if (extra) {
    rc = pa_fail(PA_ERR_SHAPE, "%s: unexpected tensor '%s' for this prior configuration", pa_weights_source(w), extra);
    goto fail;
  }
  *out = m;
  return PA_OK;
fail:
  pa_prior_free(m);
  return rc;
}

void pa_prior_free(pa_prior *m) {
  if (!m) return;
  for (int i = 0; m->blocks && i < m->cfg.num_blocks; i++) {
    prior_block *b = &m->blocks[i];
    pa_tensor *ts[] = {b->fc1_w, b->ln1_w, b->ln1_b, b->fc2_w, b->ln2_w, b->ln2_b};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) pa_release(m->be, ts[k]);
  }
  free(m->blocks);
  pa_release(m->be, m->in_w);
  pa_release(m->be, m->in_b);
  pa_release(m->be, m->out_w);
  pa_release(m->be, m->out_b);
  free(m);
}

const pa_prior_config *pa_prior_cfg(const pa_prior *m) { return &m->cfg; }

pa_backend *pa_prior_backend(const pa_prior *m) { return m->be; }

void pa_prior_set_hook(pa_prior *m, pa_prior_hook hook, void *user) {
  m->hook = hook;
  m->hook_user = user;
}

static void hook(pa_prior *m, int i, const pa_tensor *t) {
  char name[32];
  if (!m->hook) return;
  snprintf(name, sizeof name, "blocks.%d", i);
  m->hook(m->hook_user, name, t);
}

/* h = LN2(fc2(GELU(LN1(fc1(cat[x, c, r]))))) */
static int middle_block(pa_prior *m, const prior_block *b, const pa_tensor *xcr, pa_tensor *u, pa_tensor *h) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  PA_TRY(pa_linear(be, u, xcr, b->fc1_w, NULL, PA_ACT_NONE));
  PA_TRY(pa_layernorm(be, u, u, b->ln1_w, b->ln1_b, LN_EPS));
  PA_TRY(pa_activation(be, u, u, PA_ACT_GELU));
  PA_TRY(pa_linear(be, h, u, b->fc2_w, NULL, PA_ACT_NONE));
  PA_TRY(pa_layernorm(be, h, h, b->ln2_w, b->ln2_b, LN_EPS));
fail:
  return rc;
}

int pa_prior_forward(pa_prior *m, const pa_tensor *x, const float *r, const pa_tensor *c, pa_tensor *pred) {
  pa_tensor *rh = x->ndim == 2 ? pa_r_embedding(r, (int)x->shape[0], m->cfg.c_r) : NULL;
  pa_tensor *re = rh ? pa_upload(m->be, rh) : NULL;
  int rc = x->ndim != 2 ? pa_fail(PA_ERR_SHAPE, "prior: x must be (B, %d)", m->cfg.clip_r)
           : re         ? pa_prior_forward_embedded(m, x, re, c, pred)
                        : PA_ERR_NOMEM;
  pa_tensor_free(rh);
  pa_release(m->be, re);
  return rc;
}

int pa_prior_forward_embedded(pa_prior *m, const pa_tensor *x, const pa_tensor *re, const pa_tensor *c,
                              pa_tensor *pred) {
  pa_backend *be = m->be;
  const pa_prior_config *cfg = &m->cfg;
  int rc = PA_OK;
  if (x->ndim != 2 || x->shape[1] != cfg->clip_r || c->ndim != 2 || c->shape[1] != cfg->clip_r ||
      c->shape[0] != x->shape[0])
    return pa_fail(PA_ERR_SHAPE, "prior: x and c must be (B, %d)", cfg->clip_r);
  if (re->ndim != 2 || re->shape[0] != x->shape[0] || re->shape[1] != cfg->c_r)
    return pa_fail(PA_ERR_SHAPE, "prior: r embedding must be (B, %d)", cfg->c_r);
  int64_t B = x->shape[0], H = cfg->c_hidden;
  pa_tensor *cr = NULL, *xcr = NULL;
  pa_tensor *h = pa_alloc_f32(be, 2, B, H), *t = pa_alloc_f32(be, 2, B, H), *u = pa_alloc_f32(be, 2, B, 4 * H);
  if (!h || !t || !u) goto nomem;
  cr = pa_alloc_f32(be, 2, B, (int64_t)(cfg->clip_r + cfg->c_r));
  xcr = pa_alloc_f32(be, 2, B, H + cfg->clip_r + cfg->c_r);
  if (!cr || !xcr) goto nomem;
  PA_TRY(pa_concat(be, cr, c, re, 1)); /* [c | r] is the same for every block */
  PA_TRY(pa_linear(be, h, x, m->in_w, m->in_b, PA_ACT_NONE));
  hook(m, 0, h);
  for (int i = 0; i < cfg->num_blocks; i++) {
    PA_TRY(pa_concat(be, xcr, h, cr, 1));
    PA_TRY(middle_block(m, &m->blocks[i], xcr, u, t));
    hook(m, i + 1, t);
    PA_TRY(pa_add(be, h, t, h, 1.0f));
  }
  PA_TRY(pa_linear(be, pred, h, m->out_w, m->out_b, PA_ACT_NONE));
  hook(m, cfg->num_blocks + 1, pred);
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_release(be, cr);
  pa_release(be, xcr);
  pa_release(be, h);
  pa_release(be, t);
  pa_release(be, u);
  return rc;
}

/* ---- Diffuzz ----------------------------------------------------------------------------- */

double pa_diffuzz_alpha_cumprod(double t) {
  const double s = 0.008;
  double num = cos((t + s) / (1 + s) * M_PI * 0.5), den = cos(s / (1 + s) * M_PI * 0.5);
  double a = (num * num) / (den * den);
  return a < 1e-4 ? 1e-4 : (a > 0.9999 ? 0.9999 : a);
}

pa_diffuzz_params pa_diffuzz_at(float t, float t_prev, bool ddim, float cfg) {
  double ac = pa_diffuzz_alpha_cumprod(t), acp = pa_diffuzz_alpha_cumprod(t_prev), a = ac / acp;
  return (pa_diffuzz_params){.cfg = cfg, .ddim = ddim, .a = a, .ac = ac, .acp = acp,
                             .sd = sqrt((1 - a) * (1 - acp) / (1 - ac)) * (t_prev != 0.0f)};
}

void pa_diffuzz_ddpm_step(float *x_prev, const float *x, const float *eps, const float *z,
                          const float *t, const float *t_prev, int B, int D) {
  for (int b = 0; b < B; b++) {
    pa_diffuzz_params p = pa_diffuzz_at(t[b], t_prev[b], false, 1.0f);
    for (int d = 0; d < D; d++) x_prev[b * D + d] = pa_diffuzz_ddpm(x[b * D + d], eps[b * D + d], z[b * D + d], p.a, p.ac, p.sd);
  }
}

void pa_diffuzz_ddim_step(float *x_prev, const float *x, const float *eps, const float *t,
                          const float *t_prev, int B, int D) {
  for (int b = 0; b < B; b++) {
    pa_diffuzz_params p = pa_diffuzz_at(t[b], t_prev[b], true, 1.0f);
    for (int d = 0; d < D; d++) x_prev[b * D + d] = pa_diffuzz_ddim(x[b * D + d], eps[b * D + d], p.ac, p.acp);
  }
}

void pa_diffuzz_diffuse(float *out, const float *x, const float *noise, const float *t, int B, int D) {
  for (int b = 0; b < B; b++) {
    double a = pa_diffuzz_alpha_cumprod(t[b]);
    for (int d = 0; d < D; d++) out[b * D + d] = (float)(sqrt(a) * x[b * D + d] + sqrt(1 - a) * noise[b * D + d]);
  }
}
