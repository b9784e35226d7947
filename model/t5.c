#include "model/t5.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

typedef struct {
  pa_tensor *ln1, *q, *k, *v, *o; /* layer.0: RMS norm + self-attention */
  pa_tensor *ln2, *wi0, *wi1, *wo; /* layer.1: RMS norm + gated-GELU FFN */
} t5_block;

struct pa_t5 {
  pa_backend *be;
  pa_t5_config cfg;
  pa_tensor *embed;     /* (V, D) shared.weight */
  pa_tensor *final_ln;  /* (D) */
  pa_tensor *rel_table; /* (buckets, H) host copy: the bias is built on the host */
  t5_block *blocks;
  pa_tensor *bias;      /* (H, L, L) device, cached for the last sequence length */
  int64_t bias_len;
  pa_t5_hook hook;
  void *hook_user;
};

pa_t5_config pa_t5_default_config(void) {
  return (pa_t5_config){.vocab_size = 384, .d_model = 2560, .d_kv = 64, .d_ff = 6720,
                        .num_layers = 36, .num_heads = 32, .num_buckets = 32,
                        .max_distance = 128, .eps = 1e-6};
}

static int check_config(const pa_t5_config *c) {
  if (c->vocab_size < 1 || c->d_model < 1 || c->d_kv < 1 || c->d_ff < 1 || c->num_layers < 1 ||
      c->num_heads < 1 || c->num_buckets < 4 || c->max_distance < c->num_buckets / 4 || c->eps <= 0)
    return pa_fail(PA_ERR_INVALID, "t5 config out of range");
  return PA_OK;
}

int pa_t5_config_from_json(json_t *cfg, pa_t5_config *out) {
  pa_t5_config c = *out;
  int rc = PA_OK;
  json_t *ff = json_object_get(cfg, "feed_forward_proj");
  if (ff && (!json_is_string(ff) || strcmp(json_string_value(ff), "gated-gelu")))
    return pa_fail(PA_ERR_UNSUPPORTED, "t5: feed_forward_proj must be \"gated-gelu\" (ByT5, T5 v1.1)");
  PA_TRY(pa_cfg_int(cfg, "vocab_size", &c.vocab_size));
  PA_TRY(pa_cfg_int(cfg, "d_model", &c.d_model));
  PA_TRY(pa_cfg_int(cfg, "d_kv", &c.d_kv));
  PA_TRY(pa_cfg_int(cfg, "d_ff", &c.d_ff));
  PA_TRY(pa_cfg_int(cfg, "num_layers", &c.num_layers));
  PA_TRY(pa_cfg_int(cfg, "num_heads", &c.num_heads));
  PA_TRY(pa_cfg_int(cfg, "relative_attention_num_buckets", &c.num_buckets));
  PA_TRY(pa_cfg_int(cfg, "relative_attention_max_distance", &c.max_distance));
  PA_TRY(pa_cfg_float(cfg, "layer_norm_epsilon", &c.eps));
  PA_TRY(check_config(&c));
  *out = c;
fail:
  return rc;
}

static const pa_tensor *find_2d(const pa_weights *w, const char *name) {
  const pa_tensor *t = pa_weights_find(w, name);
  return t && t->ndim == 2 ? t : NULL;
}

int pa_t5_config_infer(const pa_weights *w, pa_t5_config *out) {
  const pa_tensor *emb = find_2d(w, "shared.weight");
  if (!emb) emb = find_2d(w, "encoder.embed_tokens.weight");
  const pa_tensor *rel = find_2d(w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
  const pa_tensor *q = find_2d(w, "encoder.block.0.layer.0.SelfAttention.q.weight");
  const pa_tensor *wi = find_2d(w, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
  if (!emb || !rel || !q || !wi)
    return pa_fail(PA_ERR_FORMAT, "%s: not a gated-GELU T5 encoder checkpoint", pa_weights_source(w));
  pa_t5_config c = pa_t5_default_config();
  c.vocab_size = (int)emb->shape[0];
  c.d_model = (int)emb->shape[1];
  c.num_buckets = (int)rel->shape[0];
  c.num_heads = (int)rel->shape[1];
  if (q->shape[0] % c.num_heads)
    return pa_fail(PA_ERR_SHAPE, "%s: q projection width %lld is not a multiple of %d heads",
                   pa_weights_source(w), (long long)q->shape[0], c.num_heads);
  c.d_kv = (int)q->shape[0] / c.num_heads;
  c.d_ff = (int)wi->shape[0];
  c.num_layers = 0;
  while (pa_weights_has(w, "encoder.block.%d.layer.0.layer_norm.weight", c.num_layers)) c.num_layers++;
  int rc = check_config(&c);
  if (rc == PA_OK) *out = c;
  return rc;
}

int pa_t5_bucket(int rel, int num_buckets, int max_distance) {
  int half = num_buckets / 2, base = rel > 0 ? half : 0, n = abs(rel), max_exact = half / 2;
  if (n < max_exact) return base + n;
  /* log-spaced between max_exact and max_distance; truncation as T5's .to(long) */
  int large = max_exact + (int)(log((double)n / max_exact) / log((double)max_distance / max_exact) *
                                (half - max_exact));
  return base + (large < half - 1 ? large : half - 1);
}

/* Marks the tensors a full T5 checkpoint holds beside the encoder as used. */
static void ignore_decoder(pa_weights *w) {
  for (int i = 0; i < pa_weights_count(w); i++) {
    const char *n = pa_weights_name(w, i);
    if (!strncmp(n, "decoder.", 8) || !strncmp(n, "lm_head.", 8)) pa_weights_mark_used(w, n);
  }
}

/* The tied embedding: shared.weight and/or encoder.embed_tokens.weight, equal when both. */
static int load_embedding(pa_t5 *m, pa_weights *w) {
  const pa_t5_config *c = &m->cfg;
  const char *shared = "shared.weight", *enc = "encoder.embed_tokens.weight";
  bool has_shared = pa_weights_find(w, shared) != NULL, has_enc = pa_weights_find(w, enc) != NULL;
  int rc = pa_param(m->be, w, &m->embed, 2, SHAPE(c->vocab_size, c->d_model), "%s",
                    has_shared ? shared : enc);
  if (rc || !(has_shared && has_enc)) return rc;
  const pa_tensor *a, *b;
  if ((rc = pa_weights_get(w, &a, 2, SHAPE(c->vocab_size, c->d_model), "%s", shared)) ||
      (rc = pa_weights_get(w, &b, 2, SHAPE(c->vocab_size, c->d_model), "%s", enc)))
    return rc;
  if (memcmp(a->data, b->data, pa_nbytes(a)))
    return pa_fail(PA_ERR_FORMAT, "%s: %s and %s differ (they must be one tied tensor)",
                   pa_weights_source(w), shared, enc);
  return PA_OK;
}

static int load_block(pa_t5 *m, pa_weights *w, int i) {
  const pa_t5_config *c = &m->cfg;
  pa_backend *be = m->be;
  t5_block *b = &m->blocks[i];
  int64_t D = c->d_model, I = (int64_t)c->num_heads * c->d_kv, F = c->d_ff;
  int rc = PA_OK;
#define ATT "encoder.block.%d.layer.0.SelfAttention."
#define FFN "encoder.block.%d.layer.1.DenseReluDense."
  PA_TRY(pa_param(be, w, &b->ln1, 1, SHAPE(D), "encoder.block.%d.layer.0.layer_norm.weight", i));
  PA_TRY(pa_param(be, w, &b->q, 2, SHAPE(I, D), ATT "q.weight", i));
  PA_TRY(pa_param(be, w, &b->k, 2, SHAPE(I, D), ATT "k.weight", i));
  PA_TRY(pa_param(be, w, &b->v, 2, SHAPE(I, D), ATT "v.weight", i));
  PA_TRY(pa_param(be, w, &b->o, 2, SHAPE(D, I), ATT "o.weight", i));
  PA_TRY(pa_param(be, w, &b->ln2, 1, SHAPE(D), "encoder.block.%d.layer.1.layer_norm.weight", i));
  PA_TRY(pa_param(be, w, &b->wi0, 2, SHAPE(F, D), FFN "wi_0.weight", i));
  PA_TRY(pa_param(be, w, &b->wi1, 2, SHAPE(F, D), FFN "wi_1.weight", i));
  PA_TRY(pa_param(be, w, &b->wo, 2, SHAPE(D, F), FFN "wo.weight", i));
#undef ATT
#undef FFN
fail:
  return rc;
}

int pa_t5_load(pa_backend *be, pa_weights *w, const pa_t5_config *cfg, pa_t5 **out) {
  int rc = check_config(cfg);
  if (rc) return rc;
  pa_t5 *m = calloc(1, sizeof *m);
  if (!m) return pa_fail(PA_ERR_NOMEM, "out of memory");
  m->be = be;
  m->cfg = *cfg;
  if (!(m->blocks = calloc((size_t)cfg->num_layers, sizeof *m->blocks))) goto nomem;
  PA_TRY(load_embedding(m, w));
  for (int i = 0; i < cfg->num_layers; i++) PA_TRY(load_block(m, w, i));
  PA_TRY(pa_param(be, w, &m->final_ln, 1, SHAPE(cfg->d_model), "encoder.final_layer_norm.weight"));
  const pa_tensor *rel;
  PA_TRY(pa_weights_get(w, &rel, 2, SHAPE(cfg->num_buckets, cfg->num_heads),
                        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  if (!(m->rel_table = pa_tensor_clone(rel))) goto nomem;
  ignore_decoder(w);
  const char *extra = pa_weights_first_unused(w, NULL);
  if (extra) {
    rc = pa_fail(PA_ERR_SHAPE, "%s: unexpected tensor '%s' for a T5 encoder", pa_weights_source(w), extra);
    goto fail;
  }
  *out = m;
  return PA_OK;
nomem:
  rc = pa_fail(PA_ERR_NOMEM, "out of memory");
fail:
  pa_t5_free(m);
  return rc;
}

void pa_t5_free(pa_t5 *m) {
  if (!m) return;
  for (int i = 0; m->blocks && i < m->cfg.num_layers; i++) {
    t5_block *b = &m->blocks[i];
    pa_tensor *ts[] = {b->ln1, b->q, b->k, b->v, b->o, b->ln2, b->wi0, b->wi1, b->wo};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) pa_release(m->be, ts[k]);
  }
  free(m->blocks);
  pa_release(m->be, m->embed);
  pa_release(m->be, m->final_ln);
  pa_release(m->be, m->bias);
  pa_tensor_free(m->rel_table);
  free(m);
}

const pa_t5_config *pa_t5_cfg(const pa_t5 *m) { return &m->cfg; }

void pa_t5_set_hook(pa_t5 *m, pa_t5_hook hook, void *user) {
  m->hook = hook;
  m->hook_user = user;
}

/* The (H, L, L) position bias for sequence length L, built once per length on the host:
 * bias[h, i, j] = table[bucket(j - i), h]. */
static int position_bias(pa_t5 *m, int64_t L) {
  const pa_t5_config *c = &m->cfg;
  if (m->bias && m->bias_len == L) return PA_OK;
  pa_release(m->be, m->bias);
  m->bias = NULL;
  pa_tensor *host = pa_tensor_new(PA_F32, 3, SHAPE(c->num_heads, L, L)); // (H, L, L)
  if (!host) return PA_ERR_NOMEM;
  float *bias = host->data;
  const float *table = m->rel_table->data; /* (buckets, H) */
  for (int64_t i = 0; i < L; i++)
    for (int64_t j = 0; j < L; j++) {
      int bucket = pa_t5_bucket((int)(j - i), c->num_buckets, c->max_distance);
      for (int h = 0; h < c->num_heads; h++) bias[(h * L + i) * L + j] = table[bucket * c->num_heads + h];
    }
  m->bias = pa_upload(m->be, host);
  pa_tensor_free(host);
  if (!m->bias) return PA_ERR_NOMEM;
  m->bias_len = L;
  return PA_OK;
}

typedef struct {
  pa_tensor *x, *n;         /* (B, L, D): residual stream, normed input / branch output */
  pa_tensor *q, *k, *v, *a; /* (B, L, H*d_kv) */
  pa_tensor *g, *u;         /* (B, L, d_ff) */
} t5_scratch;

static void scratch_free(pa_backend *be, t5_scratch *s) {
  pa_tensor *ts[] = {s->x, s->n, s->q, s->k, s->v, s->a, s->g, s->u};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_release(be, ts[i]);
}

static int scratch_alloc(pa_backend *be, const pa_t5_config *c, int64_t B, int64_t L, t5_scratch *s) {
  int64_t D = c->d_model, I = (int64_t)c->num_heads * c->d_kv, F = c->d_ff;
  pa_tensor **inner[] = {&s->q, &s->k, &s->v, &s->a};
  s->x = pa_alloc_f32(be, 3, B, L, D);
  s->n = pa_alloc_f32(be, 3, B, L, D);
  for (int i = 0; i < 4; i++) *inner[i] = pa_alloc_f32(be, 3, B, L, I);
  s->g = pa_alloc_f32(be, 3, B, L, F);
  s->u = pa_alloc_f32(be, 3, B, L, F);
  if (s->x && s->n && s->q && s->k && s->v && s->a && s->g && s->u) return PA_OK;
  scratch_free(be, s);
  return PA_ERR_NOMEM;
}

/* x += o(attention(q, k, v of rms(x)) + position bias), scores unscaled */
static int attention_layer(pa_t5 *m, const t5_block *b, t5_scratch *s) {
  pa_backend *be = m->be;
  pa_attn_params p = {.nhead = m->cfg.num_heads, .scale = 1.0f, .pos_bias = m->bias};
  int rc = PA_OK;
  PA_TRY(pa_rmsnorm(be, s->n, s->x, b->ln1, (float)m->cfg.eps));
  PA_TRY(pa_linear(be, s->q, s->n, b->q, NULL, PA_ACT_NONE));
  PA_TRY(pa_linear(be, s->k, s->n, b->k, NULL, PA_ACT_NONE));
  PA_TRY(pa_linear(be, s->v, s->n, b->v, NULL, PA_ACT_NONE));
  PA_TRY(pa_attention(be, s->a, s->q, s->k, s->v, &p));
  PA_TRY(pa_linear(be, s->n, s->a, b->o, NULL, PA_ACT_NONE));
  PA_TRY(pa_add(be, s->x, s->x, s->n, 1.0f));
fail:
  return rc;
}

/* x += wo(gelu_tanh(wi_0 rms(x)) * wi_1 rms(x)) */
static int ffn_layer(pa_t5 *m, const t5_block *b, t5_scratch *s) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  PA_TRY(pa_rmsnorm(be, s->n, s->x, b->ln2, (float)m->cfg.eps));
  PA_TRY(pa_linear(be, s->g, s->n, b->wi0, NULL, PA_ACT_GELU_TANH));
  PA_TRY(pa_linear(be, s->u, s->n, b->wi1, NULL, PA_ACT_NONE));
  PA_TRY(pa_mul(be, s->g, s->g, s->u));
  PA_TRY(pa_linear(be, s->n, s->g, b->wo, NULL, PA_ACT_NONE));
  PA_TRY(pa_add(be, s->x, s->x, s->n, 1.0f));
fail:
  return rc;
}

int pa_t5_encode(pa_t5 *m, const pa_tensor *ids, pa_tensor *hidden) {
  const pa_t5_config *c = &m->cfg;
  pa_backend *be = m->be;
  if (ids->dtype != PA_I64 || ids->ndim != 2 || ids->shape[1] < 1)
    return pa_fail(PA_ERR_SHAPE, "t5: ids must be a (B, L) I64 host tensor");
  int64_t B = ids->shape[0], L = ids->shape[1];
  if (hidden->ndim != 3 || hidden->shape[0] != B || hidden->shape[1] != L || hidden->shape[2] != c->d_model)
    return pa_fail(PA_ERR_SHAPE, "t5: output must be (%lld, %lld, %d)", (long long)B, (long long)L, c->d_model);
  t5_scratch s = {0};
  pa_tensor *dev_ids = NULL;
  int rc = scratch_alloc(be, c, B, L, &s);
  if (rc) return rc;
  if (!(dev_ids = pa_upload(be, ids))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(position_bias(m, L));
  PA_TRY(pa_embedding(be, s.x, dev_ids, m->embed)); // (B, L, D)
  for (int i = 0; i < c->num_layers; i++) {
    PA_TRY(attention_layer(m, &m->blocks[i], &s));
    PA_TRY(ffn_layer(m, &m->blocks[i], &s));
    if (m->hook) {
      char name[32];
      snprintf(name, sizeof name, "block.%d", i);
      m->hook(m->hook_user, name, s.x);
    }
  }
  PA_TRY(pa_rmsnorm(be, hidden, s.x, m->final_ln, (float)c->eps));
fail:
  pa_release(be, dev_ids);
  scratch_free(be, &s);
  return rc;
}
