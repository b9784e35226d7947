#include "model/vqgan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"

#define LN_EPS 1e-6f
#define BN_EPS 1e-5

typedef enum { L_RES, L_CONV_DOWN, L_CONVT_UP } layer_kind;

/* One entry of down_blocks / up_blocks. */
typedef struct {
  layer_kind kind;
  char name[32];
  int c;
  float g[6]; /* ResBlock gammas (host): LN1 scale/shift, dw gate, LN2 scale/shift, MLP gate */
  pa_tensor *dw_w, *dw_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b; /* ResBlock */
  pa_tensor *w, *b;                                         /* conv / convT */
} layer;

struct pa_vqgan {
  pa_backend *be;
  pa_vqgan_config cfg;
  int c_levels[8];
  pa_tensor *in_w, *in_b, *lat_w, *bn_scale, *bn_shift, *codebook, *post_w, *post_b, *out_w, *out_b;
  layer *down, *up;
  int n_down, n_up;
  pa_vqgan_hook hook;
  void *hook_user;
};

pa_vqgan_config pa_vqgan_default_config(void) {
  return (pa_vqgan_config){.levels = 2, .bottleneck_blocks = 12, .c_hidden = 384, .c_latent = 4,
                           .codebook_size = 8192, .scale_factor = 0.3764};
}

static int check_config(const pa_vqgan_config *c) {
  if (c->levels < 1 || c->levels > 8 || c->c_hidden >> (c->levels - 1) < 1 || c->c_latent < 1 ||
      c->codebook_size < 1 || c->bottleneck_blocks < 0 || !(c->scale_factor > 0))
    return pa_fail(PA_ERR_INVALID, "vqgan config out of range");
  return PA_OK;
}

int pa_vqgan_config_from_json(json_t *cfg, pa_vqgan_config *out) {
  pa_vqgan_config c = *out;
  int rc = PA_OK;
  PA_TRY(pa_cfg_int(cfg, "levels", &c.levels));
  PA_TRY(pa_cfg_int(cfg, "bottleneck_blocks", &c.bottleneck_blocks));
  PA_TRY(pa_cfg_int(cfg, "c_hidden", &c.c_hidden));
  PA_TRY(pa_cfg_int(cfg, "c_latent", &c.c_latent));
  PA_TRY(pa_cfg_int(cfg, "codebook_size", &c.codebook_size));
  PA_TRY(pa_cfg_float(cfg, "scale_factor", &c.scale_factor));
  PA_TRY(check_config(&c));
  *out = c;
fail:
  return rc;
}

int pa_vqgan_config_infer(const pa_weights *w, pa_vqgan_config *out) {
  pa_vqgan_config c = pa_vqgan_default_config();
  const pa_tensor *cb = pa_weights_find(w, "vquantizer.codebook.weight");
  const pa_tensor *post = pa_weights_find(w, "up_blocks.0.0.weight");
  if (!cb || cb->ndim != 2 || !post || post->ndim != 4)
    return pa_fail(PA_ERR_FORMAT, "%s: not a VQGAN checkpoint (no vquantizer.codebook.weight / up_blocks.0.0.weight)",
                   pa_weights_source(w));
  c.codebook_size = (int)cb->shape[0];
  c.c_latent = (int)cb->shape[1];
  c.c_hidden = (int)post->shape[0];
  /* up_blocks: [post conv, bottleneck ResBlocks, (ConvT, ResBlock) per extra level] */
  int i = 1;
  c.bottleneck_blocks = 0;
  while (pa_weights_has(w, "up_blocks.%d.gammas", i)) c.bottleneck_blocks++, i++;
  c.levels = 1;
  while (pa_weights_has(w, "up_blocks.%d.weight", i) && pa_weights_has(w, "up_blocks.%d.gammas", i + 1))
    c.levels++, i += 2;
  int rc = check_config(&c);
  if (rc == PA_OK) *out = c;
  return rc;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static int load_res(pa_vqgan *m, pa_weights *w, layer *l) {
  pa_backend *be = m->be;
  int rc = PA_OK, c = l->c;
  const pa_tensor *g;
  l->kind = L_RES;
  PA_TRY(pa_weights_get(w, &g, 1, SHAPE(6), "%s.gammas", l->name));
  memcpy(l->g, g->data, sizeof l->g);
  PA_TRY(pa_param(be, w, &l->dw_w, 4, SHAPE(c, 1, 3, 3), "%s.depthwise.1.weight", l->name));
  PA_TRY(pa_param(be, w, &l->dw_b, 1, SHAPE(c), "%s.depthwise.1.bias", l->name));
  PA_TRY(pa_param(be, w, &l->fc1_w, 2, SHAPE(4 * c, c), "%s.channelwise.0.weight", l->name));
  PA_TRY(pa_param(be, w, &l->fc1_b, 1, SHAPE(4 * c), "%s.channelwise.0.bias", l->name));
  PA_TRY(pa_param(be, w, &l->fc2_w, 2, SHAPE(c, 4 * c), "%s.channelwise.2.weight", l->name));
  PA_TRY(pa_param(be, w, &l->fc2_b, 1, SHAPE(c), "%s.channelwise.2.bias", l->name));
fail:
  return rc;
}

static int load_conv(pa_vqgan *m, pa_weights *w, layer *l, layer_kind kind, int cin, int cout) {
  int rc = PA_OK;
  l->kind = kind;
  l->c = cout;
  if (kind == L_CONV_DOWN)
    PA_TRY(pa_param(m->be, w, &l->w, 4, SHAPE(cout, cin, 4, 4), "%s.weight", l->name));
  else
    PA_TRY(pa_param(m->be, w, &l->w, 4, SHAPE(cin, cout, 4, 4), "%s.weight", l->name));
  PA_TRY(pa_param(m->be, w, &l->b, 1, SHAPE(cout), "%s.bias", l->name));
fail:
  return rc;
}

/* BatchNorm (eval) folded into a per-channel affine on the host: scale = w / sqrt(var + eps),
 * shift = b - mean * scale, computed in double. */
static int load_batchnorm(pa_vqgan *m, pa_weights *w) {
  int rc = PA_OK, C = m->cfg.c_latent, idx = 2 * m->cfg.levels - 1;
  const pa_tensor *bw, *bb, *rm, *rv, *nbt;
  pa_tensor *scale = pa_tensor_new(PA_F32, 1, SHAPE(C)), *shift = pa_tensor_new(PA_F32, 1, SHAPE(C));
  if (!scale || !shift) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_weights_get(w, &bw, 1, SHAPE(C), "down_blocks.%d.1.weight", idx));
  PA_TRY(pa_weights_get(w, &bb, 1, SHAPE(C), "down_blocks.%d.1.bias", idx));
  PA_TRY(pa_weights_get(w, &rm, 1, SHAPE(C), "down_blocks.%d.1.running_mean", idx));
  PA_TRY(pa_weights_get(w, &rv, 1, SHAPE(C), "down_blocks.%d.1.running_var", idx));
  if (pa_weights_has(w, "down_blocks.%d.1.num_batches_tracked", idx))
    PA_TRY(pa_weights_get_raw(w, &nbt, "down_blocks.%d.1.num_batches_tracked", idx)); /* unused */
  for (int c = 0; c < C; c++) {
    double s = ((float *)bw->data)[c] / sqrt((double)((float *)rv->data)[c] + BN_EPS);
    ((float *)scale->data)[c] = (float)s;
    ((float *)shift->data)[c] = (float)(((float *)bb->data)[c] - ((float *)rm->data)[c] * s);
  }
  if (!(m->bn_scale = pa_upload(m->be, scale)) || !(m->bn_shift = pa_upload(m->be, shift))) rc = PA_ERR_NOMEM;
fail:
  pa_tensor_free(scale);
  pa_tensor_free(shift);
  return rc;
}

static int load_encoder(pa_vqgan *m, pa_weights *w) {
  const pa_vqgan_config *c = &m->cfg;
  pa_backend *be = m->be;
  int rc = PA_OK, L = c->levels, n = 0;
  PA_TRY(pa_param(be, w, &m->in_w, 4, SHAPE(m->c_levels[0], 12, 1, 1), "in_block.1.weight"));
  PA_TRY(pa_param(be, w, &m->in_b, 1, SHAPE(m->c_levels[0]), "in_block.1.bias"));
  m->n_down = 2 * L - 1;
  if (!(m->down = calloc((size_t)m->n_down, sizeof *m->down))) return pa_fail(PA_ERR_NOMEM, "out of memory");
  for (int i = 0; i < L; i++) {
    if (i > 0) {
      snprintf(m->down[n].name, sizeof m->down[n].name, "down_blocks.%d", n);
      PA_TRY(load_conv(m, w, &m->down[n], L_CONV_DOWN, m->c_levels[i - 1], m->c_levels[i]));
      n++;
    }
    snprintf(m->down[n].name, sizeof m->down[n].name, "down_blocks.%d", n);
    m->down[n].c = m->c_levels[i];
    PA_TRY(load_res(m, w, &m->down[n]));
    n++;
  }
  PA_TRY(pa_param(be, w, &m->lat_w, 4, SHAPE(c->c_latent, m->c_levels[L - 1], 1, 1), "down_blocks.%d.0.weight", n));
  PA_TRY(load_batchnorm(m, w));
  PA_TRY(pa_param(be, w, &m->codebook, 2, SHAPE(c->codebook_size, c->c_latent), "vquantizer.codebook.weight"));
fail:
  return rc;
}

static int load_decoder(pa_vqgan *m, pa_weights *w) {
  const pa_vqgan_config *c = &m->cfg;
  pa_backend *be = m->be;
  int rc = PA_OK, L = c->levels, n = 0;
  PA_TRY(pa_param(be, w, &m->post_w, 4, SHAPE(m->c_levels[L - 1], c->c_latent, 1, 1), "up_blocks.0.0.weight"));
  PA_TRY(pa_param(be, w, &m->post_b, 1, SHAPE(m->c_levels[L - 1]), "up_blocks.0.0.bias"));
  m->n_up = c->bottleneck_blocks + 2 * (L - 1);
  if (!(m->up = calloc((size_t)(m->n_up ? m->n_up : 1), sizeof *m->up))) return pa_fail(PA_ERR_NOMEM, "out of memory");
  for (int i = 0; i < L; i++) {
    int ch = m->c_levels[L - 1 - i];
    for (int j = 0; j < (i == 0 ? c->bottleneck_blocks : 1); j++, n++) {
      snprintf(m->up[n].name, sizeof m->up[n].name, "up_blocks.%d", n + 1);
      m->up[n].c = ch;
      PA_TRY(load_res(m, w, &m->up[n]));
    }
    if (i < L - 1) {
      snprintf(m->up[n].name, sizeof m->up[n].name, "up_blocks.%d", n + 1);
      PA_TRY(load_conv(m, w, &m->up[n], L_CONVT_UP, ch, m->c_levels[L - 2 - i]));
      n++;
    }
  }
  PA_TRY(pa_param(be, w, &m->out_w, 4, SHAPE(12, m->c_levels[0], 1, 1), "out_block.0.weight"));
  PA_TRY(pa_param(be, w, &m->out_b, 1, SHAPE(12), "out_block.0.bias"));
fail:
  return rc;
}

int pa_vqgan_load(pa_backend *be, pa_weights *w, const pa_vqgan_config *cfg, pa_vqgan **out) {
  int rc = check_config(cfg);
  if (rc) return rc;
  pa_vqgan *m = calloc(1, sizeof *m);
  if (!m) return pa_fail(PA_ERR_NOMEM, "out of memory");
  m->be = be;
  m->cfg = *cfg;
  for (int i = 0; i < cfg->levels; i++) m->c_levels[i] = cfg->c_hidden >> (cfg->levels - 1 - i);
  PA_TRY(load_encoder(m, w));
  PA_TRY(load_decoder(m, w));
  const char *extra = pa_weights_first_unused(w, NULL);
  if (extra) {
    rc = pa_fail(PA_ERR_SHAPE, "%s: unexpected tensor '%s' for this VQGAN configuration", pa_weights_source(w), extra);
    goto fail;
  }
  *out = m;
  return PA_OK;
fail:
  pa_vqgan_free(m);
  return rc;
}

static void free_layers(pa_backend *be, layer *ls, int n) {
  for (int i = 0; ls && i < n; i++) {
    pa_tensor *ts[] = {ls[i].dw_w, ls[i].dw_b, ls[i].fc1_w, ls[i].fc1_b, ls[i].fc2_w, ls[i].fc2_b, ls[i].w, ls[i].b};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) pa_release(be, ts[k]);
  }
  free(ls);
}

void pa_vqgan_free(pa_vqgan *m) {
  if (!m) return;
  pa_tensor *ts[] = {m->in_w, m->in_b, m->lat_w, m->bn_scale, m->bn_shift, m->codebook,
                     m->post_w, m->post_b, m->out_w, m->out_b};
  for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) pa_release(m->be, ts[k]);
  free_layers(m->be, m->down, m->n_down);
  free_layers(m->be, m->up, m->n_up);
  free(m);
}

const pa_vqgan_config *pa_vqgan_cfg(const pa_vqgan *m) { return &m->cfg; }
int pa_vqgan_factor(const pa_vqgan *m) { return 2 << (m->cfg.levels - 1); }

void pa_vqgan_set_hook(pa_vqgan *m, pa_vqgan_hook hook, void *user) {
  m->hook = hook;
  m->hook_user = user;
}

static void hook(pa_vqgan *m, const char *name, const pa_tensor *t) {
  if (m->hook) m->hook(m->hook_user, name, t);
}

/* ---- forward ----------------------------------------------------------------------------- */

/* x += g2 * DW(LN(x)*(1+g0)+g1); x += g5 * MLP(LN(x)*(1+g3)+g4) */
static int res_block(pa_vqgan *m, const layer *l, pa_tensor *x) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  int64_t B = x->shape[0], H = x->shape[1], W = x->shape[2], C = l->c;
  pa_tensor *t = pa_alloc_f32(be, 4, B, H, W, C), *d = pa_alloc_f32(be, 4, B, H, W, C);
  pa_tensor *u = pa_alloc_f32(be, 4, B, H, W, 4 * C);
  if (!t || !d || !u) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  pa_conv_params rep = {.stride = 1, .pad = 1, .groups = (int)C, .pad_mode = PA_PAD_REPLICATE};
  PA_TRY(pa_layernorm(be, t, x, NULL, NULL, LN_EPS));
  PA_TRY(pa_affine(be, t, t, 1.0f + l->g[0], l->g[1]));
  PA_TRY(pa_conv2d(be, d, t, l->dw_w, l->dw_b, rep));
  PA_TRY(pa_add(be, x, x, d, l->g[2]));
  PA_TRY(pa_layernorm(be, t, x, NULL, NULL, LN_EPS));
  PA_TRY(pa_affine(be, t, t, 1.0f + l->g[3], l->g[4]));
  PA_TRY(pa_linear(be, u, t, l->fc1_w, l->fc1_b, PA_ACT_GELU));
  PA_TRY(pa_linear(be, d, u, l->fc2_w, l->fc2_b, PA_ACT_NONE));
  PA_TRY(pa_add(be, x, x, d, l->g[5]));
fail:
  pa_release(be, t);
  pa_release(be, d);
  pa_release(be, u);
  return rc;
}

/* 4x4 stride-2 pad-1 conv (down) or transposed conv (up); replaces *x. */
static int resample(pa_vqgan *m, const layer *l, pa_tensor **x) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  int64_t B = (*x)->shape[0], H = (*x)->shape[1], W = (*x)->shape[2];
  bool up = l->kind == L_CONVT_UP;
  pa_tensor *y = up ? pa_alloc_f32(be, 4, B, H * 2, W * 2, (int64_t)l->c)
                    : pa_alloc_f32(be, 4, B, H / 2, W / 2, (int64_t)l->c);
  if (!y) return PA_ERR_NOMEM;
  pa_conv_params p = {.stride = 2, .pad = 1, .groups = 1, .pad_mode = PA_PAD_ZERO};
  rc = up ? pa_conv_transpose2d(be, y, *x, l->w, l->b, p) : pa_conv2d(be, y, *x, l->w, l->b, p);
  if (rc) {
    pa_release(be, y);
    return rc;
  }
  pa_release(be, *x);
  *x = y;
  return PA_OK;
}

static int run_layers(pa_vqgan *m, const layer *ls, int n, pa_tensor **x) {
  for (int i = 0; i < n; i++) {
    int rc = ls[i].kind == L_RES ? res_block(m, &ls[i], *x) : resample(m, &ls[i], x);
    if (rc) return rc;
    hook(m, ls[i].name, *x);
  }
  return PA_OK;
}

static pa_tensor view2d(const pa_tensor *w4) {
  return pa_view(w4, 2, (const int64_t[]){w4->shape[0], w4->shape[1]});
}

int pa_vqgan_encode(pa_vqgan *m, const pa_tensor *image, pa_tensor *latent, pa_tensor *indices) {
  pa_backend *be = m->be;
  int rc = PA_OK, f = pa_vqgan_factor(m);
  if (image->ndim != 4 || image->shape[3] != 3 || image->shape[1] % f || image->shape[2] % f)
    return pa_fail(PA_ERR_SHAPE, "vqgan: image must be (B, H, W, 3) with H, W multiples of %d", f);
  int64_t B = image->shape[0], H = image->shape[1], W = image->shape[2];
  pa_tensor *u = pa_alloc_f32(be, 4, B, H / 2, W / 2, (int64_t)12);
  pa_tensor *x = pa_alloc_f32(be, 4, B, H / 2, W / 2, (int64_t)m->c_levels[0]);
  pa_tensor *z = pa_alloc_f32(be, 4, B, H / f, W / f, (int64_t)m->cfg.c_latent);
  if (!u || !x || !z) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_pixel_unshuffle(be, u, image, 2));
  pa_tensor in2 = view2d(m->in_w), lat2 = view2d(m->lat_w);
  PA_TRY(pa_linear(be, x, u, &in2, m->in_b, PA_ACT_NONE));
  hook(m, "in_block", x);
  PA_TRY(run_layers(m, m->down, m->n_down, &x));
  PA_TRY(pa_linear(be, z, x, &lat2, NULL, PA_ACT_NONE));
  PA_TRY(pa_channel_affine(be, z, z, m->bn_scale, m->bn_shift));
  if (latent) PA_TRY(pa_copy(be, latent, z));
  if (indices) PA_TRY(pa_vq_nearest(be, indices, z, m->codebook));
fail:
  pa_release(be, u);
  pa_release(be, x);
  pa_release(be, z);
  return rc;
}

int pa_vqgan_lookup(pa_vqgan *m, const pa_tensor *indices, pa_tensor *latent) {
  return pa_embedding(m->be, latent, indices, m->codebook);
}

int pa_vqgan_decode(pa_vqgan *m, const pa_tensor *latent, float scale, pa_tensor *image) {
  pa_backend *be = m->be;
  int rc = PA_OK, L = m->cfg.levels, f = pa_vqgan_factor(m);
  if (latent->ndim != 4 || latent->shape[3] != m->cfg.c_latent)
    return pa_fail(PA_ERR_SHAPE, "vqgan: latent must be (B, h, w, %d)", m->cfg.c_latent);
  int64_t B = latent->shape[0], h = latent->shape[1], w = latent->shape[2];
  if (image->ndim != 4 || image->shape[0] != B || image->shape[1] != h * f || image->shape[2] != w * f || image->shape[3] != 3)
    return pa_fail(PA_ERR_SHAPE, "vqgan: decoded image must be (B, %lld, %lld, 3)", (long long)(h * f), (long long)(w * f));
  pa_tensor *z = pa_alloc(be, PA_F32, 4, latent->shape), *x = pa_alloc_f32(be, 4, B, h, w, (int64_t)m->c_levels[L - 1]);
  pa_tensor *o = pa_alloc_f32(be, 4, B, h * f / 2, w * f / 2, (int64_t)12);
  if (!z || !x || !o) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_affine(be, z, latent, scale, 0.0f));
  pa_tensor post2 = view2d(m->post_w), out2 = view2d(m->out_w);
  PA_TRY(pa_linear(be, x, z, &post2, m->post_b, PA_ACT_NONE));
  hook(m, "up_blocks.0", x);
  PA_TRY(run_layers(m, m->up, m->n_up, &x));
  PA_TRY(pa_linear(be, o, x, &out2, m->out_b, PA_ACT_NONE));
  PA_TRY(pa_pixel_shuffle(be, image, o, 2));
fail:
  pa_release(be, z);
  pa_release(be, x);
  pa_release(be, o);
  return rc;
}

int pa_vqgan_decode_indices(pa_vqgan *m, const pa_tensor *indices, pa_tensor *image) {
  int rc = PA_OK;
  if (indices->ndim != 3) return pa_fail(PA_ERR_SHAPE, "vqgan: indices must be (B, h, w)");
  pa_tensor *z = pa_alloc_f32(m->be, 4, indices->shape[0], indices->shape[1], indices->shape[2],
                              (int64_t)m->cfg.c_latent);
  if (!z) return PA_ERR_NOMEM;
  PA_TRY(pa_vqgan_lookup(m, indices, z));
  PA_TRY(pa_vqgan_decode(m, z, 1.0f, image));
fail:
  pa_release(m->be, z);
  return rc;
}
