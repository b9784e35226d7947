#include "model/clip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

typedef struct {
  pa_tensor *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
  pa_tensor *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} clip_layer;

struct pa_clip {
  pa_backend *be;
  pa_clip_config cfg;
  bool vision;
  pa_tensor *tok;            /* text: (V, C) token embedding */
  pa_tensor *patch, *cls;    /* vision: (C, 3, p, p) conv weight, (C) class embedding */
  pa_tensor *pos;            /* (positions, C) */
  pa_tensor *pre_w, *pre_b;  /* vision: pre_layrnorm */
  pa_tensor *norm_w, *norm_b; /* text: final_layer_norm; vision: post_layernorm */
  pa_tensor *proj;           /* (projection_dim, C), no bias */
  clip_layer *layers;
  pa_clip_hook hook;
  void *hook_user;
};

/* ---- configuration ----------------------------------------------------------------------- */

pa_clip_config pa_clip_text_default_config(void) {
  return (pa_clip_config){.hidden_size = 1024, .intermediate_size = 4096, .num_layers = 24,
                          .num_heads = 16, .projection_dim = 1024, .vocab_size = 49408,
                          .max_positions = 77, .eps = 1e-5, .act = PA_ACT_GELU};
}

pa_clip_config pa_clip_vision_default_config(void) {
  return (pa_clip_config){.hidden_size = 1280, .intermediate_size = 5120, .num_layers = 32,
                          .num_heads = 16, .projection_dim = 1024, .image_size = 224,
                          .patch_size = 14, .eps = 1e-5, .act = PA_ACT_GELU};
}

static int check_config(const pa_clip_config *c, bool vision) {
  bool ok = c->hidden_size > 0 && c->intermediate_size > 0 && c->num_layers > 0 &&
            c->num_heads > 0 && c->hidden_size % c->num_heads == 0 && c->projection_dim > 0 &&
            c->eps > 0;
  if (vision) ok = ok && c->patch_size > 0 && c->image_size >= c->patch_size;
  else ok = ok && c->vocab_size > 0 && c->max_positions > 0;
  return ok ? PA_OK : pa_fail(PA_ERR_INVALID, "clip %s config out of range", vision ? "vision" : "text");
}

/* transformers' ACT2FN names for the two GELUs the backend has; quick_gelu (OpenAI's
 * original CLIP) is not one of them. */
static int parse_act(json_t *cfg, pa_act *act) {
  json_t *v = json_object_get(cfg, "hidden_act");
  if (!v) return PA_OK;
  const char *s = json_string_value(v);
  if (s && !strcmp(s, "gelu")) *act = PA_ACT_GELU;
  else if (s && (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh"))) *act = PA_ACT_GELU_TANH;
  else return pa_fail(PA_ERR_UNSUPPORTED, "clip: hidden_act %s is not supported (gelu, gelu_new)", s ? s : "?");
  return PA_OK;
}

int pa_clip_config_from_json(json_t *cfg, bool vision, pa_clip_config *out) {
  pa_clip_config c = *out;
  json_t *sub = json_object_get(cfg, vision ? "vision_config" : "text_config");
  json_t *t = json_is_object(sub) ? sub : cfg; /* the tower's own keys */
  int rc = PA_OK, channels = 3;
  PA_TRY(pa_cfg_int(t, "hidden_size", &c.hidden_size));
  PA_TRY(pa_cfg_int(t, "intermediate_size", &c.intermediate_size));
  PA_TRY(pa_cfg_int(t, "num_hidden_layers", &c.num_layers));
  PA_TRY(pa_cfg_int(t, "num_attention_heads", &c.num_heads));
  PA_TRY(pa_cfg_int(t, "projection_dim", &c.projection_dim));
  PA_TRY(pa_cfg_int(cfg, "projection_dim", &c.projection_dim)); /* CLIPConfig keeps it on top */
  PA_TRY(pa_cfg_int(t, "vocab_size", &c.vocab_size));
  PA_TRY(pa_cfg_int(t, "max_position_embeddings", &c.max_positions));
  PA_TRY(pa_cfg_int(t, "image_size", &c.image_size));
  PA_TRY(pa_cfg_int(t, "patch_size", &c.patch_size));
  PA_TRY(pa_cfg_int(t, "num_channels", &channels));
  PA_TRY(pa_cfg_float(t, "layer_norm_eps", &c.eps));
  PA_TRY(parse_act(t, &c.act));
  if (channels != 3) return pa_fail(PA_ERR_UNSUPPORTED, "clip vision: num_channels must be 3");
  PA_TRY(check_config(&c, vision));
  *out = c;
fail:
  return rc;
}

static int dim(const pa_weights *w, const char *name, int ndim, int axis, int *out) {
  const pa_tensor *t = pa_weights_find(w, name);
  if (!t || t->ndim != ndim)
    return pa_fail(PA_ERR_FORMAT, "%s: not a CLIP checkpoint (no %d-d '%s')", pa_weights_source(w), ndim, name);
  *out = (int)t->shape[axis];
  return PA_OK;
}

int pa_clip_config_infer(const pa_weights *w, bool vision, pa_clip_config *out) {
  pa_clip_config c = vision ? pa_clip_vision_default_config() : pa_clip_text_default_config();
  const char *pre = vision ? "vision_model." : "text_model.";
  char name[128];
  int rc = PA_OK, positions = 0;
  snprintf(name, sizeof name, "%sencoder.layers.0.mlp.fc1.weight", pre);
  PA_TRY(dim(w, name, 2, 0, &c.intermediate_size));
  PA_TRY(dim(w, vision ? "visual_projection.weight" : "text_projection.weight", 2, 0, &c.projection_dim));
  snprintf(name, sizeof name, "%sembeddings.position_embedding.weight", pre);
  PA_TRY(dim(w, name, 2, 0, &positions));
  PA_TRY(dim(w, name, 2, 1, &c.hidden_size));
  if (vision) {
    int grid = (int)lround(sqrt((double)(positions - 1)));
    PA_TRY(dim(w, "vision_model.embeddings.patch_embedding.weight", 4, 2, &c.patch_size));
    c.image_size = grid * c.patch_size;
  } else {
    PA_TRY(dim(w, "text_model.embeddings.token_embedding.weight", 2, 0, &c.vocab_size));
    c.max_positions = positions;
  }
  c.num_layers = 0;
  while (pa_weights_has(w, "%sencoder.layers.%d.layer_norm1.weight", pre, c.num_layers)) c.num_layers++;
  PA_TRY(check_config(&c, vision));
  *out = c;
fail:
  return rc;
}

/* ---- loading ----------------------------------------------------------------------------- */

static int load_layer(pa_clip *m, pa_weights *w, const char *tower, int i) {
  pa_backend *be = m->be;
  clip_layer *l = &m->layers[i];
  int64_t C = m->cfg.hidden_size, I = m->cfg.intermediate_size;
  char p[96];
  snprintf(p, sizeof p, "%sencoder.layers.%d.", tower, i);
  int rc = PA_OK;
  PA_TRY(pa_param(be, w, &l->ln1_w, 1, SHAPE(C), "%slayer_norm1.weight", p));
  PA_TRY(pa_param(be, w, &l->ln1_b, 1, SHAPE(C), "%slayer_norm1.bias", p));
  PA_TRY(pa_param(be, w, &l->q_w, 2, SHAPE(C, C), "%sself_attn.q_proj.weight", p));
  PA_TRY(pa_param(be, w, &l->q_b, 1, SHAPE(C), "%sself_attn.q_proj.bias", p));
  PA_TRY(pa_param(be, w, &l->k_w, 2, SHAPE(C, C), "%sself_attn.k_proj.weight", p));
  PA_TRY(pa_param(be, w, &l->k_b, 1, SHAPE(C), "%sself_attn.k_proj.bias", p));
  PA_TRY(pa_param(be, w, &l->v_w, 2, SHAPE(C, C), "%sself_attn.v_proj.weight", p));
  PA_TRY(pa_param(be, w, &l->v_b, 1, SHAPE(C), "%sself_attn.v_proj.bias", p));
  PA_TRY(pa_param(be, w, &l->o_w, 2, SHAPE(C, C), "%sself_attn.out_proj.weight", p));
  PA_TRY(pa_param(be, w, &l->o_b, 1, SHAPE(C), "%sself_attn.out_proj.bias", p));
  PA_TRY(pa_param(be, w, &l->ln2_w, 1, SHAPE(C), "%slayer_norm2.weight", p));
  PA_TRY(pa_param(be, w, &l->ln2_b, 1, SHAPE(C), "%slayer_norm2.bias", p));
  PA_TRY(pa_param(be, w, &l->fc1_w, 2, SHAPE(I, C), "%smlp.fc1.weight", p));
  PA_TRY(pa_param(be, w, &l->fc1_b, 1, SHAPE(I), "%smlp.fc1.bias", p));
  PA_TRY(pa_param(be, w, &l->fc2_w, 2, SHAPE(C, I), "%smlp.fc2.weight", p));
  PA_TRY(pa_param(be, w, &l->fc2_b, 1, SHAPE(C), "%smlp.fc2.bias", p));
fail:
  return rc;
}

static int load_text_embeddings(pa_clip *m, pa_weights *w) {
  const pa_clip_config *c = &m->cfg;
  int64_t C = c->hidden_size;
  int rc = PA_OK;
  PA_TRY(pa_param(m->be, w, &m->tok, 2, SHAPE(c->vocab_size, C), "text_model.embeddings.token_embedding.weight"));
  PA_TRY(pa_param(m->be, w, &m->pos, 2, SHAPE(c->max_positions, C), "text_model.embeddings.position_embedding.weight"));
  PA_TRY(pa_param(m->be, w, &m->norm_w, 1, SHAPE(C), "text_model.final_layer_norm.weight"));
  PA_TRY(pa_param(m->be, w, &m->norm_b, 1, SHAPE(C), "text_model.final_layer_norm.bias"));
  PA_TRY(pa_param(m->be, w, &m->proj, 2, SHAPE(c->projection_dim, C), "text_projection.weight"));
fail:
  return rc;
}

static int load_vision_embeddings(pa_clip *m, pa_weights *w) {
  const pa_clip_config *c = &m->cfg;
  int64_t C = c->hidden_size, p = c->patch_size, grid = c->image_size / c->patch_size;
  int rc = PA_OK;
  PA_TRY(pa_param(m->be, w, &m->patch, 4, SHAPE(C, 3, p, p), "vision_model.embeddings.patch_embedding.weight"));
  PA_TRY(pa_param(m->be, w, &m->cls, 1, SHAPE(C), "vision_model.embeddings.class_embedding"));
  PA_TRY(pa_param(m->be, w, &m->pos, 2, SHAPE(grid * grid + 1, C), "vision_model.embeddings.position_embedding.weight"));
  PA_TRY(pa_param(m->be, w, &m->pre_w, 1, SHAPE(C), "vision_model.pre_layrnorm.weight"));
  PA_TRY(pa_param(m->be, w, &m->pre_b, 1, SHAPE(C), "vision_model.pre_layrnorm.bias"));
  PA_TRY(pa_param(m->be, w, &m->norm_w, 1, SHAPE(C), "vision_model.post_layernorm.weight"));
  PA_TRY(pa_param(m->be, w, &m->norm_b, 1, SHAPE(C), "vision_model.post_layernorm.bias"));
  PA_TRY(pa_param(m->be, w, &m->proj, 2, SHAPE(c->projection_dim, C), "visual_projection.weight"));
fail:
  return rc;
}

/* A full CLIPModel file holds both towers: this tower ignores the other one, the shared
 * logit_scale and the position_ids buffers older transformers saved. */
static void ignore_other_tower(pa_weights *w, bool vision) {
  const char *other[] = {vision ? "text_model." : "vision_model.",
                         vision ? "text_projection." : "visual_projection."};
  for (int i = 0; i < pa_weights_count(w); i++) {
    const char *n = pa_weights_name(w, i);
    size_t len = strlen(n), tail = strlen("embeddings.position_ids");
    bool skip = !strcmp(n, "logit_scale") || !strncmp(n, other[0], strlen(other[0])) ||
                !strncmp(n, other[1], strlen(other[1])) ||
                (len >= tail && !strcmp(n + len - tail, "embeddings.position_ids"));
    if (skip) pa_weights_mark_used(w, n);
  }
}

int pa_clip_load(pa_backend *be, pa_weights *w, const pa_clip_config *cfg, bool vision, pa_clip **out) {
  int rc = check_config(cfg, vision);
  if (rc) return rc;
  pa_clip *m = calloc(1, sizeof *m);
  if (!m) return pa_fail(PA_ERR_NOMEM, "out of memory");
  m->be = be;
  m->cfg = *cfg;
  m->vision = vision;
  if (!(m->layers = calloc((size_t)cfg->num_layers, sizeof *m->layers))) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  PA_TRY(vision ? load_vision_embeddings(m, w) : load_text_embeddings(m, w));
  for (int i = 0; i < cfg->num_layers; i++)
    PA_TRY(load_layer(m, w, vision ? "vision_model." : "text_model.", i));
  ignore_other_tower(w, vision);
  const char *extra = pa_weights_first_unused(w, NULL);
  if (extra) {
    rc = pa_fail(PA_ERR_SHAPE, "%s: unexpected tensor '%s' for a CLIP %s tower", pa_weights_source(w),
                 extra, vision ? "vision" : "text");
    goto fail;
  }
  *out = m;
  return PA_OK;
fail:
  pa_clip_free(m);
  return rc;
}

void pa_clip_free(pa_clip *m) {
  if (!m) return;
  for (int i = 0; m->layers && i < m->cfg.num_layers; i++) {
    clip_layer *l = &m->layers[i];
    pa_tensor *ts[] = {l->ln1_w, l->ln1_b, l->q_w, l->q_b, l->k_w, l->k_b, l->v_w, l->v_b,
                       l->o_w, l->o_b, l->ln2_w, l->ln2_b, l->fc1_w, l->fc1_b, l->fc2_w, l->fc2_b};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) pa_release(m->be, ts[k]);
  }
  free(m->layers);
  pa_tensor *ts[] = {m->tok, m->patch, m->cls, m->pos, m->pre_w, m->pre_b, m->norm_w, m->norm_b, m->proj};
  for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) pa_release(m->be, ts[k]);
  free(m);
}

const pa_clip_config *pa_clip_cfg(const pa_clip *m) { return &m->cfg; }

void pa_clip_set_hook(pa_clip *m, pa_clip_hook hook, void *user) {
  m->hook = hook;
  m->hook_user = user;
}

/* ---- forward ----------------------------------------------------------------------------- */

typedef struct {
  pa_tensor *x, *n, *q, *k, *v, *a; /* (B, L, C): residual stream, branch input/output, q/k/v */
  pa_tensor *f;                     /* (B, L, I) MLP hidden */
  pa_tensor *pooled;                /* (B, C) the pooled token */
} clip_scratch;

static void scratch_free(pa_backend *be, clip_scratch *s) {
  pa_tensor *ts[] = {s->x, s->n, s->q, s->k, s->v, s->a, s->f, s->pooled};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_release(be, ts[i]);
  memset(s, 0, sizeof *s);
}

static int scratch_alloc(pa_backend *be, const pa_clip_config *c, int64_t B, int64_t L, clip_scratch *s) {
  int64_t C = c->hidden_size;
  pa_tensor **bl[] = {&s->x, &s->n, &s->q, &s->k, &s->v, &s->a};
  for (int i = 0; i < 6; i++) *bl[i] = pa_alloc_f32(be, 3, B, L, C);
  s->f = pa_alloc_f32(be, 3, B, L, (int64_t)c->intermediate_size);
  s->pooled = pa_alloc_f32(be, 2, B, C);
  if (s->x && s->n && s->q && s->k && s->v && s->a && s->f && s->pooled) return PA_OK;
  scratch_free(be, s);
  return PA_ERR_NOMEM;
}

/* x += out_proj(MHA(LN1(x))); x += fc2(act(fc1(LN2(x)))) */
static int encoder_layer(pa_clip *m, const clip_layer *l, clip_scratch *s, bool causal) {
  pa_backend *be = m->be;
  const pa_clip_config *c = &m->cfg;
  pa_attn_params p = {.nhead = c->num_heads, .causal = causal,
                      .scale = (float)(1.0 / sqrt((double)(c->hidden_size / c->num_heads)))};
  float eps = (float)c->eps;
  int rc = PA_OK;
  PA_TRY(pa_layernorm(be, s->n, s->x, l->ln1_w, l->ln1_b, eps));
  PA_TRY(pa_linear(be, s->q, s->n, l->q_w, l->q_b, PA_ACT_NONE));
  PA_TRY(pa_linear(be, s->k, s->n, l->k_w, l->k_b, PA_ACT_NONE));
  PA_TRY(pa_linear(be, s->v, s->n, l->v_w, l->v_b, PA_ACT_NONE));
  PA_TRY(pa_attention(be, s->a, s->q, s->k, s->v, &p));
  PA_TRY(pa_linear(be, s->n, s->a, l->o_w, l->o_b, PA_ACT_NONE));
  PA_TRY(pa_add(be, s->x, s->x, s->n, 1.0f));
  PA_TRY(pa_layernorm(be, s->n, s->x, l->ln2_w, l->ln2_b, eps));
  PA_TRY(pa_linear(be, s->f, s->n, l->fc1_w, l->fc1_b, c->act));
  PA_TRY(pa_linear(be, s->n, s->f, l->fc2_w, l->fc2_b, PA_ACT_NONE));
  PA_TRY(pa_add(be, s->x, s->x, s->n, 1.0f));
fail:
  return rc;
}

static int encoder(pa_clip *m, clip_scratch *s, bool causal) {
  int rc = PA_OK;
  for (int i = 0; i < m->cfg.num_layers; i++) {
    PA_TRY(encoder_layer(m, &m->layers[i], s, causal));
    if (m->hook) {
      char name[32];
      snprintf(name, sizeof name, "layers.%d", i);
      m->hook(m->hook_user, name, s->x);
    }
  }
fail:
  return rc;
}

/* x[b] += pos[:L] for every sequence of x (B, L, C) */
static int add_positions(pa_clip *m, pa_tensor *x) {
  pa_tensor pos = pa_view_rows(m->pos, 0, x->shape[1]); // (L, C)
  int rc = PA_OK;
  for (int64_t b = 0; b < x->shape[0]; b++) {
    pa_tensor xb = pa_view_rows(x, b, b + 1); // (1, L, C)
    PA_TRY(pa_add(m->be, &xb, &xb, &pos, 1.0f));
  }
fail:
  return rc;
}

/* pooled[b] = x[b, at[b]] for x (B, L, C) */
static int gather_rows(pa_backend *be, pa_tensor *pooled, const pa_tensor *x, const int64_t *at) {
  int64_t B = x->shape[0], L = x->shape[1];
  pa_tensor rows = pa_view(x, 2, SHAPE(B * L, x->shape[2])); // (B*L, C)
  int rc = PA_OK;
  for (int64_t b = 0; b < B; b++) {
    pa_tensor src = pa_view_rows(&rows, b * L + at[b], b * L + at[b] + 1), dst = pa_view_rows(pooled, b, b + 1);
    PA_TRY(pa_copy(be, &dst, &src));
  }
fail:
  return rc;
}

static bool is_shape3(const pa_tensor *t, int64_t a, int64_t b, int64_t c) {
  return t->dtype == PA_F32 && t->ndim == 3 && t->shape[0] == a && t->shape[1] == b && t->shape[2] == c;
}

static bool is_shape2(const pa_tensor *t, int64_t a, int64_t b) {
  return t->dtype == PA_F32 && t->ndim == 2 && t->shape[0] == a && t->shape[1] == b;
}

/* The EOT position of each row: the first index of its largest id (OpenCLIP's argmax). */
static void eot_positions(const pa_tensor *ids, int64_t *at) {
  const int64_t *id = ids->data;
  int64_t B = ids->shape[0], L = ids->shape[1];
  for (int64_t b = 0; b < B; b++) {
    at[b] = 0;
    for (int64_t i = 1; i < L; i++)
      if (id[b * L + i] > id[b * L + at[b]]) at[b] = i;
  }
}

int pa_clip_text_forward(pa_clip *m, const pa_tensor *ids, pa_tensor *hidden, pa_tensor *embeds) {
  const pa_clip_config *c = &m->cfg;
  pa_backend *be = m->be;
  if (m->vision || ids->dtype != PA_I64 || ids->ndim != 2 || ids->shape[1] < 1 || ids->shape[1] > c->max_positions)
    return pa_fail(PA_ERR_SHAPE, "clip text: ids must be a (B, L <= %d) I64 host tensor", c->max_positions);
  int64_t B = ids->shape[0], L = ids->shape[1];
  if (!is_shape3(hidden, B, L, c->hidden_size) || !is_shape2(embeds, B, c->projection_dim))
    return pa_fail(PA_ERR_SHAPE, "clip text: outputs must be (B, L, %d) and (B, %d)", c->hidden_size, c->projection_dim);
  clip_scratch s = {0};
  pa_tensor *dev_ids = NULL;
  int64_t *eot = calloc((size_t)B, sizeof *eot);
  int rc = eot ? scratch_alloc(be, c, B, L, &s) : pa_fail(PA_ERR_NOMEM, "out of memory");
  if (rc) goto fail;
  if (!(dev_ids = pa_upload(be, ids))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_embedding(be, s.x, dev_ids, m->tok)); // (B, L, C)
  PA_TRY(add_positions(m, s.x));
  PA_TRY(encoder(m, &s, true));
  PA_TRY(pa_layernorm(be, hidden, s.x, m->norm_w, m->norm_b, (float)c->eps));
  eot_positions(ids, eot);
  PA_TRY(gather_rows(be, s.pooled, hidden, eot)); // (B, C)
  PA_TRY(pa_linear(be, embeds, s.pooled, m->proj, NULL, PA_ACT_NONE));
fail:
  free(eot);
  pa_release(be, dev_ids);
  scratch_free(be, &s);
  return rc;
}

/* x (B, 1 + G*G, C) = [class_embedding, patch_conv(pixels)] per image */
static int vision_tokens(pa_clip *m, const pa_tensor *pixels, pa_tensor *x) {
  pa_backend *be = m->be;
  int64_t B = x->shape[0], C = m->cfg.hidden_size, G = m->cfg.image_size / m->cfg.patch_size, N = G * G;
  pa_conv_params cp = {.stride = m->cfg.patch_size, .groups = 1};
  pa_tensor *patches = pa_alloc_f32(be, 4, B, G, G, C); // (B, G, G, C)
  if (!patches) return PA_ERR_NOMEM;
  int rc = PA_OK;
  PA_TRY(pa_conv2d(be, patches, pixels, m->patch, NULL, cp));
  pa_tensor prow = pa_view(patches, 2, SHAPE(B * N, C)), xrow = pa_view(x, 2, SHAPE(B * (N + 1), C));
  for (int64_t b = 0; b < B; b++) {
    pa_tensor cls = pa_view_rows(&xrow, b * (N + 1), b * (N + 1) + 1);         // (1, C)
    pa_tensor dst = pa_view_rows(&xrow, b * (N + 1) + 1, (b + 1) * (N + 1));   // (N, C)
    pa_tensor src = pa_view_rows(&prow, b * N, (b + 1) * N);                   // (N, C)
    PA_TRY(pa_copy(be, &cls, m->cls));
    PA_TRY(pa_copy(be, &dst, &src));
  }
fail:
  pa_release(be, patches);
  return rc;
}

int pa_clip_vision_forward(pa_clip *m, const pa_tensor *pixels, pa_tensor *hidden, pa_tensor *embeds) {
  const pa_clip_config *c = &m->cfg;
  pa_backend *be = m->be;
  int64_t S = c->image_size, N = (S / c->patch_size) * (S / c->patch_size);
  if (!m->vision || pixels->dtype != PA_F32 || pixels->ndim != 4 || pixels->shape[1] != S ||
      pixels->shape[2] != S || pixels->shape[3] != 3)
    return pa_fail(PA_ERR_SHAPE, "clip vision: pixels must be (B, %lld, %lld, 3) F32", (long long)S, (long long)S);
  int64_t B = pixels->shape[0];
  if (!is_shape3(hidden, B, N + 1, c->hidden_size) || !is_shape2(embeds, B, c->projection_dim))
    return pa_fail(PA_ERR_SHAPE, "clip vision: outputs must be (B, %lld, %d) and (B, %d)", (long long)N + 1,
                   c->hidden_size, c->projection_dim);
  clip_scratch s = {0};
  int64_t *cls_at = calloc((size_t)B, sizeof *cls_at); /* all zero: the class token */
  int rc = cls_at ? scratch_alloc(be, c, B, N + 1, &s) : pa_fail(PA_ERR_NOMEM, "out of memory");
  if (rc) goto fail;
  PA_TRY(vision_tokens(m, pixels, s.x)); // (B, N+1, C)
  PA_TRY(add_positions(m, s.x));
  PA_TRY(pa_layernorm(be, s.x, s.x, m->pre_w, m->pre_b, (float)c->eps));
  PA_TRY(encoder(m, &s, false));
  PA_TRY(pa_copy(be, hidden, s.x));
  PA_TRY(gather_rows(be, s.pooled, s.x, cls_at)); // (B, C)
  PA_TRY(pa_layernorm(be, s.pooled, s.pooled, m->norm_w, m->norm_b, (float)c->eps));
  PA_TRY(pa_linear(be, embeds, s.pooled, m->proj, NULL, PA_ACT_NONE));
fail:
  free(cls_at);
  scratch_free(be, &s);
  return rc;
}

/* ---- image preprocessing ----------------------------------------------------------------- */

const float pa_clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float pa_clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* PIL's bicubic kernel (Keys, a = -0.5), support 2. */
static double bicubic(double x) {
  const double a = -0.5;
  x = fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

/* The weights of one resampling axis, as PIL's precompute_coeffs: output pixel i reads
 * inputs [lo[i], lo[i] + n[i]) with weights k[i * ksize ...], normalised to sum 1. When
 * downscaling the kernel is stretched by the scale factor (antialiasing). */
typedef struct {
  int out_size, ksize;
  int *lo, *n;
  double *k;
} resample_plan;

static void plan_free(resample_plan *p) {
  free(p->lo);
  free(p->n);
  free(p->k);
}

static int plan_new(int in_size, int out_size, resample_plan *p) {
  double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 2.0 * filterscale;
  p->out_size = out_size;
  p->ksize = (int)ceil(support) * 2 + 1;
  p->lo = calloc((size_t)out_size, sizeof *p->lo);
  p->n = calloc((size_t)out_size, sizeof *p->n);
  p->k = calloc((size_t)out_size * p->ksize, sizeof *p->k);
  if (!p->lo || !p->n || !p->k) {
    plan_free(p);
    return pa_fail(PA_ERR_NOMEM, "clip preprocess: out of memory");
  }
  for (int i = 0; i < out_size; i++) {
    double center = (i + 0.5) * scale, sum = 0.0, *k = p->k + (size_t)i * p->ksize;
    double inv = 1.0 / filterscale; /* PIL multiplies by the reciprocal: same last bits */
    int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
    lo = lo < 0 ? 0 : lo;
    hi = hi > in_size ? in_size : hi;
    for (int j = 0; j < hi - lo; j++) sum += (k[j] = bicubic((j + lo - center + 0.5) * inv));
    for (int j = 0; j < hi - lo && sum != 0.0; j++) k[j] /= sum;
    p->lo[i] = lo;
    p->n[i] = hi - lo;
  }
  return PA_OK;
}

/* One axis in floating point. Pixel e of line l is at (l * line + e * elem) * 3 (RGB). */
static void resample_f64(const double *in, double *out, const resample_plan *p, int lines,
                         int in_line, int in_elem, int out_line, int out_elem) {
  for (int l = 0; l < lines; l++)
    for (int i = 0; i < p->out_size; i++)
      for (int ch = 0; ch < 3; ch++) {
        const double *k = p->k + (size_t)i * p->ksize;
        double acc = 0.0;
        for (int j = 0; j < p->n[i]; j++)
          acc += k[j] * in[((size_t)l * in_line + (size_t)(p->lo[i] + j) * in_elem) * 3 + ch];
        out[((size_t)l * out_line + (size_t)i * out_elem) * 3 + ch] = acc;
      }
}

/* One axis on 8-bit pixels, PIL's fixed point: weights rounded to 22 fractional bits, the
 * sum rounded half up, then clipped to 0..255. */
#define PIL_PRECISION_BITS 22
static void resample_u8(const uint8_t *in, uint8_t *out, const resample_plan *p, int lines,
                        int in_line, int in_elem, int out_line, int out_elem) {
  const double one = (double)(1 << PIL_PRECISION_BITS);
  for (int l = 0; l < lines; l++)
    for (int i = 0; i < p->out_size; i++)
      for (int ch = 0; ch < 3; ch++) {
        const double *k = p->k + (size_t)i * p->ksize;
        int64_t acc = 1 << (PIL_PRECISION_BITS - 1);
        for (int j = 0; j < p->n[i]; j++) {
          int64_t kk = (int64_t)(k[j] < 0 ? k[j] * one - 0.5 : k[j] * one + 0.5);
          acc += kk * in[((size_t)l * in_line + (size_t)(p->lo[i] + j) * in_elem) * 3 + ch];
        }
        int64_t v = acc >> PIL_PRECISION_BITS; /* arithmetic shift: floor, as PIL */
        out[((size_t)l * out_line + (size_t)i * out_elem) * 3 + ch] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
}

/* The resized size: shortest side -> size, the other floor(size * long / short). */
static void resized_size(int H, int W, int size, int *oh, int *ow) {
  bool tall = H >= W;
  int s = tall ? W : H, l = tall ? H : W;
  int nl = (int)((double)size * l / s);
  *oh = tall ? nl : size;
  *ow = tall ? size : nl;
}

/* Crops (size, size) at the floor-centred offset of img (h, w, 3) (values in [0, 1]) and
 * normalises: a (1, size, size, 3) host tensor. */
static int crop_normalise(const double *img, int h, int w, int size, pa_tensor **out) {
  pa_tensor *t = pa_tensor_new(PA_F32, 4, SHAPE(1, size, size, 3)); // (1, S, S, 3)
  if (!t) return PA_ERR_NOMEM;
  int top = (h - size) / 2, left = (w - size) / 2;
  float *o = t->data;
  for (int y = 0; y < size; y++)
    for (int x = 0; x < size; x++)
      for (int ch = 0; ch < 3; ch++) {
        double v = img[((size_t)(top + y) * w + (left + x)) * 3 + ch];
        o[((size_t)y * size + x) * 3 + ch] = (float)((v - pa_clip_mean[ch]) / pa_clip_std[ch]);
      }
  *out = t;
  return PA_OK;
}

static int check_image(const void *rgb, int H, int W, int size) {
  if (!rgb || H < 1 || W < 1 || size < 1)
    return pa_fail(PA_ERR_INVALID, "clip preprocess: empty image or size");
  return PA_OK;
}

int pa_clip_preprocess_f32(const float *rgb, int H, int W, int size, pa_tensor **out) {
  int rc = check_image(rgb, H, W, size), oh, ow;
  if (rc) return rc;
  resized_size(H, W, size, &oh, &ow);
  resample_plan px = {0}, py = {0};
  size_t n_in = (size_t)H * W * 3;
  double *src = malloc(n_in * sizeof *src), *mid = malloc((size_t)H * ow * 3 * sizeof *mid),
         *dst = malloc((size_t)oh * ow * 3 * sizeof *dst);
  if (!src || !mid || !dst) {
    rc = pa_fail(PA_ERR_NOMEM, "clip preprocess: out of memory");
    goto fail;
  }
  for (size_t i = 0; i < n_in; i++) src[i] = rgb[i];
  PA_TRY(plan_new(W, ow, &px));
  PA_TRY(plan_new(H, oh, &py));
  resample_f64(src, mid, &px, H, W, 1, ow, 1);  /* rows: (H, W) -> (H, ow) */
  resample_f64(mid, dst, &py, ow, 1, ow, 1, ow); /* columns: (H, ow) -> (oh, ow) */
  PA_TRY(crop_normalise(dst, oh, ow, size, out));
fail:
  plan_free(&px);
  plan_free(&py);
  free(src);
  free(mid);
  free(dst);
  return rc;
}

int pa_clip_preprocess_u8(const uint8_t *rgb, int H, int W, int size, pa_tensor **out) {
  int rc = check_image(rgb, H, W, size), oh, ow;
  if (rc) return rc;
  resized_size(H, W, size, &oh, &ow);
  resample_plan px = {0}, py = {0};
  size_t n_out = (size_t)oh * ow * 3;
  uint8_t *mid = malloc((size_t)H * ow * 3), *dst = malloc(n_out);
  double *img = malloc(n_out * sizeof *img);
  if (!mid || !dst || !img) {
    rc = pa_fail(PA_ERR_NOMEM, "clip preprocess: out of memory");
    goto fail;
  }
  PA_TRY(plan_new(W, ow, &px));
  PA_TRY(plan_new(H, oh, &py));
  resample_u8(rgb, mid, &px, H, W, 1, ow, 1);
  resample_u8(mid, dst, &py, ow, 1, ow, 1, ow);
  for (size_t i = 0; i < n_out; i++) img[i] = dst[i] / 255.0; /* do_rescale: 1/255 */
  PA_TRY(crop_normalise(img, oh, ow, size, out));
fail:
  plan_free(&px);
  plan_free(&py);
  free(mid);
  free(dst);
  free(img);
  return rc;
}
