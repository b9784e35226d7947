#include "model/paella.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"
#include "ops/arena.h"

#define LN_EPS 1e-6f

typedef struct {
  char type; /* 'C' ResBlock, 'T' TimestepBlock, 'A' AttnBlock, 'F' FeedForwardBlock */
  int c, c_skip, nhead, attn_slot;
  char name[48]; /* state_dict prefix, e.g. "down_blocks.1.3" */
  /* C / F */
  pa_tensor *dw_w, *dw_b, *fc1_w, *fc1_b, *grn_g, *grn_b, *fc2_w, *fc2_b;
  /* T */
  pa_tensor *map_w, *map_b;
  int64_t map_off; /* its [a | m] columns in the concatenated mapper output */
  /* A */
  pa_tensor *in_w, *in_b, *out_w, *out_b, *kv_w, *kv_b;
} block;

typedef struct {
  int n;
  block *blocks;
  pa_tensor *resample_w, *resample_b; /* down: 2x2 conv before the blocks; up: 2x2 convT after */
} level;

struct pa_paella {
  pa_backend *be;
  pa_paella_config cfg;
  pa_tensor *byt5_w, *byt5_b, *clip_w, *clip_b, *clipimg_w, *clipimg_b;
  pa_tensor *emb_table, *embed_w, *embed_b, *clf_w, *clf_b, *out_w;
  level down[PAELLA_MAX_LEVELS], up[PAELLA_MAX_LEVELS];
  int n_attn;
  /* every TimestepBlock's mapper as one (map_total, c_r) weight: all modulations of a noise
   * level in one GEMM (pa_paella_time_new) */
  pa_tensor *map_cat_w, *map_cat_b;
  int64_t map_total;
  pa_paella_hook hook;
  void *hook_user;
  pa_arena *arena; /* every forward intermediate, planned per input shape (ops/arena.h) */
};

/* A forward intermediate from the arena: pa_alloc_f32's arguments. */
#define ACT(m, ndim, ...) pa_arena_alloc((m)->arena, PA_F32, (ndim), (const int64_t[PA_MAX_DIMS]){__VA_ARGS__})

struct pa_paella_cond {
  pa_tensor *c_embed; /* (B, L_c, c_cond) */
  pa_tensor **kv;     /* per attention block: (B, L_c, 2c) its in_proj keys | values of the
                       * kv_mapper output: computed once, read by every forward */
  int n_kv;
  pa_tensor *key_pad; /* (B) I32: padded positions at the end of each row's sequence, or NULL */
  int32_t *pads;      /* the same on the host (stacking a stacked conditioning reads it) */
  bool is_view;       /* tensors borrowed from another cond (pa_paella_cond_rows) */
};

/* ---- configuration ----------------------------------------------------------------------- */

pa_paella_config pa_paella_default_config(void) {
  pa_paella_config c = {
      .c_in = 256, .c_out = 256, .num_labels = 8192, .c_r = 64, .patch_size = 2, .c_cond = 1024,
      .levels = 3, .c_hidden = {640, 1280, 1280}, .nhead = {-1, 16, 16}, .blocks = {6, 16, 6},
      .clip_embd = 1024, .byt5_embd = 2560, .clip_seq_len = 4, .kernel_size = 3, .self_attn = true,
  };
  strcpy(c.level_config[0], "CT");
  strcpy(c.level_config[1], "CTA");
  strcpy(c.level_config[2], "CTA");
  return c;
}

static int check_config(const pa_paella_config *c) {
  if (c->levels < 1 || c->levels > PAELLA_MAX_LEVELS)
    return pa_fail(PA_ERR_INVALID, "paella config: %d levels (1..%d)", c->levels, PAELLA_MAX_LEVELS);
  if (c->patch_size < 1 || c->c_r < 4 || c->kernel_size < 1 || c->kernel_size % 2 == 0)
    return pa_fail(PA_ERR_INVALID, "paella config: bad patch_size/c_r/kernel_size");
  for (int i = 0; i < c->levels; i++) {
    if (c->c_hidden[i] < 1 || c->blocks[i] < 0 || !c->level_config[i][0])
      return pa_fail(PA_ERR_INVALID, "paella config: bad level %d", i);
    if (strspn(c->level_config[i], "CTAF") != strlen(c->level_config[i]))
      return pa_fail(PA_ERR_INVALID, "paella config: level_config[%d]='%s' (block types C, T, A, F)",
                     i, c->level_config[i]);
    if (strchr(c->level_config[i], 'A') && (c->nhead[i] < 1 || c->c_hidden[i] % c->nhead[i]))
      return pa_fail(PA_ERR_INVALID, "paella config: level %d: nhead %d does not divide %d", i,
                     c->nhead[i], c->c_hidden[i]);
    if (i < c->levels - 1 && c->blocks[i] > 0 && c->level_config[i][0] != 'C')
      return pa_fail(PA_ERR_INVALID, "paella config: level %d must start with a C block (skip)", i);
  }
  return PA_OK;
}

int pa_paella_config_from_json(json_t *cfg, pa_paella_config *out) {
  pa_paella_config c = *out;
  int rc = PA_OK, n_hidden = c.levels, n_head = c.levels, n_blocks = c.levels;
  PA_TRY(pa_cfg_int(cfg, "c_in", &c.c_in));
  PA_TRY(pa_cfg_int(cfg, "c_out", &c.c_out));
  PA_TRY(pa_cfg_int(cfg, "num_labels", &c.num_labels));
  PA_TRY(pa_cfg_int(cfg, "c_r", &c.c_r));
  PA_TRY(pa_cfg_int(cfg, "patch_size", &c.patch_size));
  PA_TRY(pa_cfg_int(cfg, "c_cond", &c.c_cond));
  PA_TRY(pa_cfg_int(cfg, "clip_embd", &c.clip_embd));
  PA_TRY(pa_cfg_int(cfg, "byt5_embd", &c.byt5_embd));
  PA_TRY(pa_cfg_int(cfg, "clip_seq_len", &c.clip_seq_len));
  PA_TRY(pa_cfg_int(cfg, "kernel_size", &c.kernel_size));
  PA_TRY(pa_cfg_bool(cfg, "self_attn", &c.self_attn));
  PA_TRY(pa_cfg_int_array(cfg, "c_hidden", c.c_hidden, PAELLA_MAX_LEVELS, &n_hidden));
  PA_TRY(pa_cfg_int_array(cfg, "nhead", c.nhead, PAELLA_MAX_LEVELS, &n_head));
  PA_TRY(pa_cfg_int_array(cfg, "blocks", c.blocks, PAELLA_MAX_LEVELS, &n_blocks));
  json_t *lc = json_object_get(cfg, "level_config");
  if (lc) {
    if (!json_is_array(lc) || json_array_size(lc) != (size_t)n_hidden)
      return pa_fail(PA_ERR_INVALID, "config 'level_config' must have one string per level");
    for (int i = 0; i < n_hidden; i++) {
      const char *s = json_string_value(json_array_get(lc, i));
      if (!s || strlen(s) > PAELLA_MAX_PATTERN)
        return pa_fail(PA_ERR_INVALID, "config 'level_config'[%d] must be a short string", i);
      strcpy(c.level_config[i], s);
    }
  }
  if (n_head != n_hidden || n_blocks != n_hidden)
    return pa_fail(PA_ERR_INVALID, "config: c_hidden, nhead, blocks need the same length");
  c.levels = n_hidden;
  PA_TRY(check_config(&c));
  *out = c;
fail:
  return rc;
}

static char block_type_of(const pa_weights *w, const char *prefix) {
  if (pa_weights_has(w, "%s.depthwise.weight", prefix)) return 'C';
  if (pa_weights_has(w, "%s.mapper.weight", prefix)) return 'T';
  if (pa_weights_has(w, "%s.attention.attn.in_proj_weight", prefix)) return 'A';
  if (pa_weights_has(w, "%s.channelwise.0.weight", prefix)) return 'F';
  return 0;
}

/* Shortest period of a block-type string: "CTACTA" -> 3. */
static int shortest_period(const char *s, int n) {
  for (int p = 1; p <= n; p++) {
    if (n % p) continue;
    int ok = 1;
    for (int i = p; i < n && ok; i++) ok = s[i] == s[i - p];
    if (ok) return p;
  }
  return n;
}

static int dim_of(const pa_weights *w, const char *name, int d, int *out) {
  const pa_tensor *t = pa_weights_find(w, name);
  if (!t || t->ndim <= d) return pa_fail(PA_ERR_NOTFOUND, "%s: cannot infer the config: no tensor '%s'",
                                         pa_weights_source(w), name);
  *out = (int)t->shape[d];
  return PA_OK;
}

int pa_paella_config_infer(const pa_weights *w, pa_paella_config *out) {
  pa_paella_config c = pa_paella_default_config();
  int rc = PA_OK, in_ch = 0, clip_out = 0;
  PA_TRY(dim_of(w, "in_mapper.0.weight", 0, &c.num_labels));
  PA_TRY(dim_of(w, "in_mapper.0.weight", 1, &c.c_in));
  PA_TRY(dim_of(w, "embedding.1.weight", 0, &c.c_hidden[0]));
  PA_TRY(dim_of(w, "embedding.1.weight", 1, &in_ch));
  c.patch_size = (int)lround(sqrt((double)in_ch / c.c_in));
  PA_TRY(dim_of(w, "byt5_mapper.weight", 0, &c.c_cond));
  PA_TRY(dim_of(w, "byt5_mapper.weight", 1, &c.byt5_embd));
  PA_TRY(dim_of(w, "clip_mapper.weight", 0, &clip_out));
  PA_TRY(dim_of(w, "clip_mapper.weight", 1, &c.clip_embd));
  c.clip_seq_len = clip_out / c.c_cond;
  PA_TRY(dim_of(w, "out_mapper.1.weight", 1, &c.c_out));
  c.levels = 0;
  while (c.levels < PAELLA_MAX_LEVELS) {
    char prefix[64], types[256];
    int first = c.levels > 0 ? 1 : 0, n = 0;
    if (c.levels > 0 && !pa_weights_has(w, "down_blocks.%d.0.1.weight", c.levels)) break;
    if (c.levels > 0) {
      char nm[64];
      snprintf(nm, sizeof nm, "down_blocks.%d.0.1.weight", c.levels);
      PA_TRY(dim_of(w, nm, 0, &c.c_hidden[c.levels]));
    }
    for (int j = first; n < 255; j++, n++) {
      snprintf(prefix, sizeof prefix, "down_blocks.%d.%d", c.levels, j);
      char t = block_type_of(w, prefix);
      if (!t) break;
      types[n] = t;
      char nm[96];
      if (t == 'C') {
        snprintf(nm, sizeof nm, "%s.depthwise.weight", prefix);
        PA_TRY(dim_of(w, nm, 2, &c.kernel_size));
      }
      if (t == 'T') {
        snprintf(nm, sizeof nm, "%s.mapper.weight", prefix);
        PA_TRY(dim_of(w, nm, 1, &c.c_r));
      }
    }
    if (n == 0 && c.levels == 0) return pa_fail(PA_ERR_FORMAT, "%s: no down_blocks.0.*", pa_weights_source(w));
    types[n] = 0;
    int p = n ? shortest_period(types, n) : 0;
    if (p > PAELLA_MAX_PATTERN) return pa_fail(PA_ERR_FORMAT, "%s: level %d block pattern too long", pa_weights_source(w), c.levels);
    memcpy(c.level_config[c.levels], types, (size_t)p);
    c.level_config[c.levels][p] = 0;
    c.blocks[c.levels] = p ? n / p : 0;
    /* nhead is not in the shapes: the published model uses a head dim of 80 */
    c.nhead[c.levels] = c.c_hidden[c.levels] % 80 == 0 ? c.c_hidden[c.levels] / 80 : 1;
    if (!strchr(c.level_config[c.levels], 'A')) c.nhead[c.levels] = -1;
    c.levels++;
  }
  PA_TRY(check_config(&c));
  *out = c;
fail:
  return rc;
}

/* ---- loading ----------------------------------------------------------------------------- */

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define PARAM(dst, fmt, ...) pa_param(be, w, &(dst), NDIM_, SHAPE_, fmt, __VA_ARGS__)

static int load_res(pa_backend *be, pa_weights *w, block *b, int k, bool with_dw) {
  int rc = PA_OK, c = b->c, g = (c + b->c_skip) / c;
  if (with_dw) {
    PA_TRY(pa_param(be, w, &b->dw_w, 4, SHAPE(c, g, k, k), "%s.depthwise.weight", b->name));
    PA_TRY(pa_param(be, w, &b->dw_b, 1, SHAPE(c), "%s.depthwise.bias", b->name));
  }
  PA_TRY(pa_param(be, w, &b->fc1_w, 2, SHAPE(4 * c, c), "%s.channelwise.0.weight", b->name));
  PA_TRY(pa_param(be, w, &b->fc1_b, 1, SHAPE(4 * c), "%s.channelwise.0.bias", b->name));
  PA_TRY(pa_param(be, w, &b->grn_g, 4, SHAPE(1, 1, 1, 4 * c), "%s.channelwise.2.gamma", b->name));
  PA_TRY(pa_param(be, w, &b->grn_b, 4, SHAPE(1, 1, 1, 4 * c), "%s.channelwise.2.beta", b->name));
  PA_TRY(pa_param(be, w, &b->fc2_w, 2, SHAPE(c, 4 * c), "%s.channelwise.4.weight", b->name));
  PA_TRY(pa_param(be, w, &b->fc2_b, 1, SHAPE(c), "%s.channelwise.4.bias", b->name));
fail:
  return rc;
}

static int load_block(pa_paella *m, pa_weights *w, block *b) {
  pa_backend *be = m->be;
  int rc = PA_OK, c = b->c;
  switch (b->type) {
    case 'C': return load_res(be, w, b, m->cfg.kernel_size, true);
    case 'F': return load_res(be, w, b, m->cfg.kernel_size, false);
    case 'T':
      PA_TRY(pa_param(be, w, &b->map_w, 2, SHAPE(2 * c, m->cfg.c_r), "%s.mapper.weight", b->name));
      PA_TRY(pa_param(be, w, &b->map_b, 1, SHAPE(2 * c), "%s.mapper.bias", b->name));
      break;
    case 'A':
      PA_TRY(pa_param(be, w, &b->in_w, 2, SHAPE(3 * c, c), "%s.attention.attn.in_proj_weight", b->name));
      PA_TRY(pa_param(be, w, &b->in_b, 1, SHAPE(3 * c), "%s.attention.attn.in_proj_bias", b->name));
      PA_TRY(pa_param(be, w, &b->out_w, 2, SHAPE(c, c), "%s.attention.attn.out_proj.weight", b->name));
      PA_TRY(pa_param(be, w, &b->out_b, 1, SHAPE(c), "%s.attention.attn.out_proj.bias", b->name));
      PA_TRY(pa_param(be, w, &b->kv_w, 2, SHAPE(c, m->cfg.c_cond), "%s.kv_mapper.1.weight", b->name));
      PA_TRY(pa_param(be, w, &b->kv_b, 1, SHAPE(c), "%s.kv_mapper.1.bias", b->name));
      b->attn_slot = m->n_attn++;
      break;
  }
fail:
  return rc;
}

/* Builds the block list of one level. `up` levels give their first C block the skip input
 * (except the deepest level) and end with the upsampler. */
static int load_level(pa_paella *m, pa_weights *w, int li, bool up) {
  const pa_paella_config *cfg = &m->cfg;
  pa_backend *be = m->be;
  int rc = PA_OK, c = cfg->c_hidden[li], plen = (int)strlen(cfg->level_config[li]);
  int ui = cfg->levels - 1 - li; /* index in up_blocks */
  level *L = up ? &m->up[ui] : &m->down[li];
  L->n = cfg->blocks[li] * plen;
  L->blocks = calloc((size_t)(L->n ? L->n : 1), sizeof *L->blocks);
  if (!L->blocks) return pa_fail(PA_ERR_NOMEM, "out of memory");
  int offset = (!up && li > 0) ? 1 : 0;
  for (int j = 0; j < L->n; j++) {
    block *b = &L->blocks[j];
    b->type = cfg->level_config[li][j % plen];
    b->c = c;
    b->nhead = cfg->nhead[li];
    b->c_skip = (up && li < cfg->levels - 1 && j == 0) ? c : 0;
    snprintf(b->name, sizeof b->name, "%s.%d.%d", up ? "up_blocks" : "down_blocks", up ? ui : li, j + offset);
    PA_TRY(load_block(m, w, b));
  }
  if (!up && li > 0) {
    int cp = cfg->c_hidden[li - 1];
    PA_TRY(pa_param(be, w, &L->resample_w, 4, SHAPE(c, cp, 2, 2), "down_blocks.%d.0.1.weight", li));
    PA_TRY(pa_param(be, w, &L->resample_b, 1, SHAPE(c), "down_blocks.%d.0.1.bias", li));
  }
  if (up && li > 0) {
    int cp = cfg->c_hidden[li - 1];
    PA_TRY(pa_param(be, w, &L->resample_w, 4, SHAPE(c, cp, 2, 2), "up_blocks.%d.%d.1.weight", ui, L->n));
    PA_TRY(pa_param(be, w, &L->resample_b, 1, SHAPE(cp), "up_blocks.%d.%d.1.bias", ui, L->n));
  }
fail:
  return rc;
}

static int load_io(pa_paella *m, pa_weights *w) {
  const pa_paella_config *c = &m->cfg;
  pa_backend *be = m->be;
  int rc = PA_OK, p2 = c->patch_size * c->patch_size, cs = c->c_cond * c->clip_seq_len;
  PA_TRY(pa_param(be, w, &m->byt5_w, 2, SHAPE(c->c_cond, c->byt5_embd), "byt5_mapper.weight"));
  PA_TRY(pa_param(be, w, &m->byt5_b, 1, SHAPE(c->c_cond), "byt5_mapper.bias"));
  PA_TRY(pa_param(be, w, &m->clip_w, 2, SHAPE(cs, c->clip_embd), "clip_mapper.weight"));
  PA_TRY(pa_param(be, w, &m->clip_b, 1, SHAPE(cs), "clip_mapper.bias"));
  PA_TRY(pa_param(be, w, &m->clipimg_w, 2, SHAPE(cs, c->clip_embd), "clip_image_mapper.weight"));
  PA_TRY(pa_param(be, w, &m->clipimg_b, 1, SHAPE(cs), "clip_image_mapper.bias"));
  PA_TRY(pa_param(be, w, &m->emb_table, 2, SHAPE(c->num_labels, c->c_in), "in_mapper.0.weight"));
  PA_TRY(pa_param(be, w, &m->embed_w, 4, SHAPE(c->c_hidden[0], c->c_in * p2, 1, 1), "embedding.1.weight"));
  PA_TRY(pa_param(be, w, &m->embed_b, 1, SHAPE(c->c_hidden[0]), "embedding.1.bias"));
  PA_TRY(pa_param(be, w, &m->clf_w, 4, SHAPE(c->c_out * p2, c->c_hidden[0], 1, 1), "clf.1.weight"));
  PA_TRY(pa_param(be, w, &m->clf_b, 1, SHAPE(c->c_out * p2), "clf.1.bias"));
  PA_TRY(pa_param(be, w, &m->out_w, 4, SHAPE(c->num_labels, c->c_out, 1, 1), "out_mapper.1.weight"));
fail:
  return rc;
}

/* Visits every block of the network (down levels, then up levels), as `block *b`. */
#define FOR_EACH_BLOCK(m, b)                                                         \
  for (int pass_ = 0; pass_ < 2; pass_++)                                            \
    for (int li_ = 0; li_ < (m)->cfg.levels; li_++)                                  \
      for (int j_ = 0; j_ < (pass_ ? &(m)->up[li_] : &(m)->down[li_])->n; j_++)      \
        for (block *b = &(pass_ ? &(m)->up[li_] : &(m)->down[li_])->blocks[j_]; b; b = NULL)

/* Where each TimestepBlock's [a | m] lies in the concatenated mapper output. */
static void place_mappers(pa_paella *m) {
  int64_t total = 0;
  FOR_EACH_BLOCK(m, b) if (b->type == 'T') b->map_off = total, total += 2 * (int64_t)b->c;
  m->map_total = total;
}

/* The mappers of all TimestepBlocks stacked row-wise into one weight (map_total, c_r) and
 * bias on the backend, so that one GEMM gives every block's [a | m] for a noise level. Built
 * at the first use, from the loaded parameters (loading reads no weight data). */
static int concat_mappers(pa_paella *m) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  m->map_cat_w = pa_alloc_f32(be, 2, m->map_total, (int64_t)m->cfg.c_r);
  m->map_cat_b = pa_alloc_f32(be, 1, m->map_total);
  if (!m->map_cat_w || !m->map_cat_b) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  FOR_EACH_BLOCK(m, b) {
    if (b->type != 'T') continue;
    pa_tensor w = pa_view_rows(m->map_cat_w, b->map_off, b->map_off + 2 * b->c);
    pa_tensor bias = pa_view_rows(m->map_cat_b, b->map_off, b->map_off + 2 * b->c);
    PA_TRY(pa_copy(be, &w, b->map_w));
    PA_TRY(pa_copy(be, &bias, b->map_b));
  }
  return PA_OK;
fail: /* built again at the next use */
  pa_release(be, m->map_cat_w);
  pa_release(be, m->map_cat_b);
  m->map_cat_w = m->map_cat_b = NULL;
  return rc;
}

int pa_paella_load(pa_backend *be, pa_weights *w, const pa_paella_config *cfg, pa_paella **out) {
  int rc = check_config(cfg);
  if (rc) return rc;
  pa_paella *m = calloc(1, sizeof *m);
  if (!m) return pa_fail(PA_ERR_NOMEM, "out of memory");
  m->be = be;
  m->cfg = *cfg;
  if (!(m->arena = pa_arena_new(be))) {
    free(m);
    return PA_ERR_NOMEM;
  }
  PA_TRY(load_io(m, w));
  for (int li = 0; li < cfg->levels; li++) PA_TRY(load_level(m, w, li, false));
  for (int li = cfg->levels - 1; li >= 0; li--) PA_TRY(load_level(m, w, li, true));
  place_mappers(m);
  const char *extra = pa_weights_first_unused(w, NULL);
  if (extra) {
    rc = pa_fail(PA_ERR_SHAPE, "%s: unexpected tensor '%s' for this Paella configuration",
                 pa_weights_source(w), extra);
    goto fail;
  }
  *out = m;
  return PA_OK;
fail:
  pa_paella_free(m);
  return rc;
}

static void free_block(pa_backend *be, block *b) {
  pa_tensor *ts[] = {b->dw_w, b->dw_b, b->fc1_w, b->fc1_b, b->grn_g, b->grn_b, b->fc2_w, b->fc2_b,
                     b->map_w, b->map_b, b->in_w, b->in_b, b->out_w, b->out_b, b->kv_w, b->kv_b};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_release(be, ts[i]);
}

static void free_level(pa_backend *be, level *L) {
  for (int j = 0; L->blocks && j < L->n; j++) free_block(be, &L->blocks[j]);
  free(L->blocks);
  pa_release(be, L->resample_w);
  pa_release(be, L->resample_b);
}

void pa_paella_free(pa_paella *m) {
  if (!m) return;
  pa_backend *be = m->be;
  pa_tensor *ts[] = {m->byt5_w, m->byt5_b, m->clip_w, m->clip_b, m->clipimg_w, m->clipimg_b,
                     m->emb_table, m->embed_w, m->embed_b, m->clf_w, m->clf_b, m->out_w,
                     m->map_cat_w, m->map_cat_b};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_release(be, ts[i]);
  for (int i = 0; i < PAELLA_MAX_LEVELS; i++) {
    free_level(be, &m->down[i]);
    free_level(be, &m->up[i]);
  }
  pa_arena_free(m->arena);
  free(m);
}

const pa_paella_config *pa_paella_cfg(const pa_paella *m) { return &m->cfg; }

pa_backend *pa_paella_backend(const pa_paella *m) { return m->be; }

void pa_paella_set_hook(pa_paella *m, pa_paella_hook hook, void *user) {
  m->hook = hook;
  m->hook_user = user;
}

static void hook(pa_paella *m, const char *name, const pa_tensor *t) {
  if (m->hook) m->hook(m->hook_user, name, t);
}

/* ---- conditioning ------------------------------------------------------------------------ */

/* Appends mapper(vec) viewed as (B, clip_seq_len, c_cond) to seq along the token axis. */
static int append_clip_tokens(pa_paella *m, pa_tensor **seq, const pa_tensor *vec,
                              const pa_tensor *wt, const pa_tensor *bias) {
  pa_backend *be = m->be;
  const pa_paella_config *c = &m->cfg;
  int rc = PA_OK;
  int64_t B = (*seq)->shape[0], L = (*seq)->shape[1];
  pa_tensor *tok = pa_alloc_f32(be, 3, B, (int64_t)c->clip_seq_len, (int64_t)c->c_cond);
  pa_tensor *cat = pa_alloc_f32(be, 3, B, L + c->clip_seq_len, (int64_t)c->c_cond);
  if (!tok || !cat) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  if (vec->ndim != 2 || vec->shape[0] != B) {
    rc = pa_fail(PA_ERR_SHAPE, "paella: clip embedding must be (B=%lld, %d)", (long long)B, c->clip_embd);
    goto fail;
  }
  pa_tensor rows = pa_view(tok, 2, (const int64_t[]){B, (int64_t)c->clip_seq_len * c->c_cond});
  PA_TRY(pa_linear(be, &rows, vec, wt, bias, PA_ACT_NONE)); /* token j = features [j*c, (j+1)*c) */
  PA_TRY(pa_concat(be, cat, *seq, tok, 1));
  pa_release(be, *seq);
  *seq = cat;
  cat = NULL;
fail:
  pa_release(be, tok);
  pa_release(be, cat);
  return rc;
}

/* Keys | values (B, Lc, 2c) of one attention block over the conditioning: kv_mapper, then
 * rows [c, 3c) of in_proj (the key and value projections) in one GEMM. */
static int cond_keys(pa_paella *m, block *b, const pa_tensor *act, pa_tensor **out) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  int64_t B = act->shape[0], Lc = act->shape[1];
  pa_tensor *mapped = pa_alloc_f32(be, 3, B, Lc, (int64_t)b->c);
  pa_tensor *kv = pa_alloc_f32(be, 3, B, Lc, (int64_t)2 * b->c);
  if (!mapped || !kv) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_linear(be, mapped, act, b->kv_w, b->kv_b, PA_ACT_NONE));
  pa_tensor w_kv = pa_view_rows(b->in_w, b->c, 3 * (int64_t)b->c), b_kv = pa_view_rows(b->in_b, b->c, 3 * (int64_t)b->c);
  PA_TRY(pa_linear(be, kv, mapped, &w_kv, &b_kv, PA_ACT_NONE));
  *out = kv;
  kv = NULL;
fail:
  pa_release(be, mapped);
  pa_release(be, kv);
  return rc;
}

int pa_paella_cond_new(pa_paella *m, const pa_tensor *byt5, const pa_tensor *clip,
                       const pa_tensor *clip_image, pa_paella_cond **out) {
  pa_backend *be = m->be;
  const pa_paella_config *c = &m->cfg;
  int rc = PA_OK;
  pa_tensor *seq = NULL, *act = NULL;
  pa_paella_cond *cond = calloc(1, sizeof *cond);
  if (!cond) return pa_fail(PA_ERR_NOMEM, "out of memory");
  if (byt5->ndim != 3 || byt5->shape[2] != c->byt5_embd) {
    rc = pa_fail(PA_ERR_SHAPE, "paella: byt5 states must be (B, L, %d)", c->byt5_embd);
    goto fail;
  }
  int64_t B = byt5->shape[0];
  seq = pa_alloc_f32(be, 3, B, byt5->shape[1], (int64_t)c->c_cond);
  if (!seq) goto nomem;
  PA_TRY(pa_linear(be, seq, byt5, m->byt5_w, m->byt5_b, PA_ACT_NONE));
  if (clip) PA_TRY(append_clip_tokens(m, &seq, clip, m->clip_w, m->clip_b));
  if (clip_image) PA_TRY(append_clip_tokens(m, &seq, clip_image, m->clipimg_w, m->clipimg_b));
  PA_TRY(pa_layernorm(be, seq, seq, NULL, NULL, LN_EPS)); /* seq_norm */
  int64_t Lc = seq->shape[1];
  act = pa_alloc_f32(be, 3, B, Lc, (int64_t)c->c_cond);
  cond->kv = calloc((size_t)(m->n_attn ? m->n_attn : 1), sizeof *cond->kv);
  if (!act || !cond->kv) goto nomem;
  cond->n_kv = m->n_attn;
  PA_TRY(pa_activation(be, act, seq, PA_ACT_SILU)); /* kv_mapper = Linear(SiLU(c)) */
  FOR_EACH_BLOCK(m, b) if (b->type == 'A') PA_TRY(cond_keys(m, b, act, &cond->kv[b->attn_slot]));
  cond->c_embed = seq;
  seq = NULL;
  pa_release(be, act);
  *out = cond;
  return PA_OK;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_release(be, seq);
  pa_release(be, act);
  pa_paella_cond_free(m, cond);
  return rc;
}

void pa_paella_cond_free(pa_paella *m, pa_paella_cond *c) {
  if (!c) return;
  if (c->is_view) {
    for (int i = 0; c->kv && i < c->n_kv; i++) free(c->kv[i]);
    free(c->kv);
    free(c->c_embed);
    free(c->key_pad);
    free(c);
    return;
  }
  free(c->pads);
  for (int i = 0; c->kv && i < c->n_kv; i++) pa_release(m->be, c->kv[i]);
  free(c->kv);
  pa_release(m->be, c->c_embed);
  pa_release(m->be, c->key_pad);
  free(c);
}

/* Row j of part (1 row or more) copied into row `row` of dst (R, Lmax, C), first L positions. */
static int copy_rows_padded(pa_backend *be, pa_tensor *dst, int64_t row, const pa_tensor *src) {
  int64_t L = src->shape[1], C = src->shape[2], Lmax = dst->shape[1];
  for (int64_t r = 0; r < src->shape[0]; r++) {
    pa_tensor s = pa_view_rows(src, r, r + 1), d = pa_view_rows(dst, row + r, row + r + 1);
    pa_tensor d2 = pa_view(&d, 2, (const int64_t[]){Lmax, C});
    pa_tensor dl = pa_view_rows(&d2, 0, L);
    int rc = pa_copy(be, &dl, &s);
    if (rc) return rc;
  }
  return PA_OK;
}

/* (sum rows, Lmax, C) of the parts' tensors `get(part)`, each row padded at the end. */
static pa_tensor *stack_padded(pa_backend *be, pa_paella_cond *const *parts, int n, int kv_slot, int64_t rows,
                               int64_t Lmax) {
  const pa_tensor *first = kv_slot < 0 ? parts[0]->c_embed : parts[0]->kv[kv_slot];
  pa_tensor *t = pa_alloc_f32(be, 3, rows, Lmax, first->shape[2]);
  for (int i = 0, row = 0; t && i < n; row += (int)parts[i]->c_embed->shape[0], i++)
    if (copy_rows_padded(be, t, row, kv_slot < 0 ? parts[i]->c_embed : parts[i]->kv[kv_slot])) {
      pa_release(be, t);
      return NULL;
    }
  return t;
}

int pa_paella_cond_stack(pa_paella *m, pa_paella_cond *const *parts, int n, pa_paella_cond **out) {
  pa_backend *be = m->be;
  int64_t rows = 0, Lmax = 0;
  for (int i = 0; i < n; i++) {
    if (parts[i]->is_view) return pa_fail(PA_ERR_INVALID, "paella: a conditioning view cannot be stacked");
    rows += parts[i]->c_embed->shape[0];
    if (parts[i]->c_embed->shape[1] > Lmax) Lmax = parts[i]->c_embed->shape[1];
  }
  int rc = PA_OK;
  pa_tensor *pad_h = pa_tensor_new(PA_I32, 1, (const int64_t[]){rows});
  pa_paella_cond *c = calloc(1, sizeof *c);
  if (!pad_h || !c || !(c->kv = calloc((size_t)(m->n_attn ? m->n_attn : 1), sizeof *c->kv))) goto nomem;
  if (!(c->pads = malloc((size_t)rows * sizeof *c->pads))) goto nomem;
  for (int i = 0, row = 0; i < n; i++)
    for (int64_t r = 0; r < parts[i]->c_embed->shape[0]; r++, row++) {
      /* a part's own padding stays padding: the valid keys of the row keep their count */
      int64_t valid = parts[i]->c_embed->shape[1] - (parts[i]->pads ? parts[i]->pads[r] : 0);
      c->pads[row] = ((int32_t *)pad_h->data)[row] = (int32_t)(Lmax - valid);
    }
  c->n_kv = m->n_attn;
  if (!(c->c_embed = stack_padded(be, parts, n, -1, rows, Lmax))) goto nomem;
  for (int k = 0; k < m->n_attn; k++)
    if (!(c->kv[k] = stack_padded(be, parts, n, k, rows, Lmax))) goto nomem;
  if (!(c->key_pad = pa_upload(be, pad_h))) goto nomem;
  pa_tensor_free(pad_h);
  *out = c;
  return PA_OK;
nomem:
  rc = PA_ERR_NOMEM;
  pa_tensor_free(pad_h);
  pa_paella_cond_free(m, c);
  return rc;
}

/* A borrowed header over rows [r0, r1) of t, or NULL when t is NULL. */
static pa_tensor *row_view(const pa_tensor *t, int64_t r0, int64_t r1, bool *nomem) {
  if (!t) return NULL;
  pa_tensor *v = malloc(sizeof *v);
  if (!v) *nomem = true;
  else *v = pa_view_rows(t, r0, r1);
  return v;
}

int pa_paella_cond_rows(const pa_paella_cond *c, int64_t r0, int64_t r1, pa_paella_cond **out) {
  bool nomem = false;
  pa_paella_cond *v = calloc(1, sizeof *v);
  if (!v) return pa_fail(PA_ERR_NOMEM, "out of memory");
  v->is_view = true;
  v->n_kv = c->n_kv;
  v->kv = calloc((size_t)(c->n_kv ? c->n_kv : 1), sizeof *v->kv);
  nomem = !v->kv;
  v->c_embed = row_view(c->c_embed, r0, r1, &nomem);
  v->key_pad = row_view(c->key_pad, r0, r1, &nomem);
  for (int i = 0; !nomem && i < c->n_kv; i++) v->kv[i] = row_view(c->kv[i], r0, r1, &nomem);
  if (nomem) {
    pa_paella_cond_free(NULL, v);
    return pa_fail(PA_ERR_NOMEM, "out of memory");
  }
  *out = v;
  return PA_OK;
}

const pa_tensor *pa_paella_cond_embed(const pa_paella_cond *c) { return c->c_embed; }

/* ---- blocks ------------------------------------------------------------------------------ */

/* Channelwise MLP of ResBlock/FeedForwardBlock on t (B, h, w, c), added into x. */
static int channel_mlp(pa_paella *m, block *b, const pa_tensor *t, pa_tensor *x) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  int64_t B = t->shape[0], H = t->shape[1], W = t->shape[2];
  pa_tensor *u = ACT(m, 4, B, H, W, (int64_t)4 * b->c), *v = ACT(m, 4, B, H, W, (int64_t)b->c);
  if (!u || !v) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_linear(be, u, t, b->fc1_w, b->fc1_b, PA_ACT_GELU));
  PA_TRY(pa_grn(be, u, u, b->grn_g, b->grn_b));
  PA_TRY(pa_linear(be, v, u, b->fc2_w, b->fc2_b, PA_ACT_NONE));
  PA_TRY(pa_add(be, x, x, v, 1.0f));
fail:
  pa_arena_release(m->arena, u);
  pa_arena_release(m->arena, v);
  return rc;
}

/* x += MLP(LN(grouped_conv(cat[x, skip]))) */
static int res_block(pa_paella *m, block *b, pa_tensor *x, const pa_tensor *skip) {
  pa_backend *be = m->be;
  int rc = PA_OK, k = m->cfg.kernel_size;
  int64_t B = x->shape[0], H = x->shape[1], W = x->shape[2];
  pa_tensor *cat = NULL, *t = ACT(m, 4, B, H, W, (int64_t)b->c);
  if (!t) return PA_ERR_NOMEM;
  const pa_tensor *in = x;
  if (b->c_skip) {
    if (!skip) {
      rc = pa_fail(PA_ERR_INVALID, "paella: %s needs a skip input", b->name);
      goto fail;
    }
    if (!(cat = ACT(m, 4, B, H, W, (int64_t)(b->c + b->c_skip)))) goto nomem;
    PA_TRY(pa_concat(be, cat, x, skip, 3));
    in = cat;
  }
  pa_conv_params cp = {.stride = 1, .pad = k / 2, .groups = b->c, .pad_mode = PA_PAD_ZERO};
  PA_TRY(pa_conv2d(be, t, in, b->dw_w, b->dw_b, cp));
  PA_TRY(pa_layernorm(be, t, t, NULL, NULL, LN_EPS));
  PA_TRY(channel_mlp(m, b, t, x));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_arena_release(m->arena, cat);
  pa_arena_release(m->arena, t);
  return rc;
}

static int ff_block(pa_paella *m, block *b, pa_tensor *x) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  pa_tensor *t = pa_arena_alloc(m->arena, PA_F32, x->ndim, x->shape);
  if (!t) return PA_ERR_NOMEM;
  PA_TRY(pa_layernorm(be, t, x, NULL, NULL, LN_EPS));
  PA_TRY(channel_mlp(m, b, t, x));
fail:
  pa_arena_release(m->arena, t);
  return rc;
}

/* Modulations of noise levels: row i = every TimestepBlock's [a | m] at r[i]. */
struct pa_paella_time {
  pa_tensor *am; /* (n, map_total) */
};

int pa_paella_time_new(pa_paella *m, const float *r, int n, pa_paella_time **out) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  pa_tensor *host = pa_r_embedding(r, n, m->cfg.c_r), *emb = host ? pa_upload(be, host) : NULL;
  pa_paella_time *t = calloc(1, sizeof *t);
  if (m->map_total && !m->map_cat_w) PA_TRY(concat_mappers(m));
  if (!emb || !t || !(t->am = pa_alloc_f32(be, 2, (int64_t)n, m->map_total ? m->map_total : 1))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  if (m->map_total) PA_TRY(pa_linear(be, t->am, emb, m->map_cat_w, m->map_cat_b, PA_ACT_NONE));
  *out = t;
  t = NULL;
fail:
  pa_paella_time_free(m, t);
  pa_tensor_free(host);
  pa_release(be, emb);
  return rc;
}

void pa_paella_time_free(pa_paella *m, pa_paella_time *t) {
  if (!t) return;
  pa_release(m->be, t->am);
  free(t);
}

/* Where a forward reads its noise level: per-row r embeddings (B, c_r), or row `index` of a
 * precomputed pa_paella_time shared by every row. */
typedef struct {
  const pa_tensor *r_embed;
  const pa_paella_time *time;
  int index;
} noise_level;

/* x = x * (1 + a) + b with [a | b] = mapper(r_embed) */
static int time_block(pa_paella *m, block *b, pa_tensor *x, const noise_level *nl) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  if (nl->time) { /* precomputed: one (1, 2c) row for all of the batch */
    pa_tensor am = pa_view_rows(nl->time->am, nl->index, nl->index + 1);
    am.shape[1] = 2 * (int64_t)b->c;
    am.data = (float *)am.data + b->map_off;
    return pa_modulate(be, x, x, &am);
  }
  const pa_tensor *r_embed = nl->r_embed;
  pa_tensor *am = ACT(m, 2, x->shape[0], (int64_t)2 * b->c);
  if (!am) return PA_ERR_NOMEM;
  PA_TRY(pa_linear(be, am, r_embed, b->map_w, b->map_b, PA_ACT_NONE));
  PA_TRY(pa_modulate(be, x, x, am));
fail:
  pa_arena_release(m->arena, am);
  return rc;
}

/* A (B, L, C) header over columns [col, col + C) of rows of width ld: a slice of a fused
 * projection, read with a row stride by attention. */
static pa_tensor cols(const pa_tensor *t, int64_t col, int64_t C) {
  pa_tensor v = pa_view(t, 3, (const int64_t[]){t->shape[0], t->shape[1], C});
  v.data = (float *)t->data + col;
  return v;
}

/* x += out_proj(MHA(q = LN(x), kv = [LN(x) | kv_mapper(c)])). The image tokens' q | k | v is
 * one GEMM; the conditioning's keys and values were projected once (cond_keys). */
static int attn_block(pa_paella *m, block *b, pa_tensor *x, const pa_tensor *kv,
                      const pa_tensor *key_pad, const pa_tensor *attn_weights) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  bool self = m->cfg.self_attn;
  int64_t B = x->shape[0], N = x->shape[1] * x->shape[2], C = b->c;
  pa_tensor *n = ACT(m, 3, B, N, C), *qkv = ACT(m, 3, B, N, (self ? 3 : 1) * C);
  pa_tensor *o = ACT(m, 3, B, N, C), *proj = ACT(m, 3, B, N, C);
  if (!n || !qkv || !o || !proj) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  pa_tensor xs = pa_view(x, 3, (const int64_t[]){B, N, C});
  PA_TRY(pa_layernorm(be, n, &xs, NULL, NULL, LN_EPS));
  pa_tensor w = self ? *b->in_w : pa_view_rows(b->in_w, 0, C), bias = self ? *b->in_b : pa_view_rows(b->in_b, 0, C);
  PA_TRY(pa_linear(be, qkv, n, &w, &bias, PA_ACT_NONE));
  pa_tensor q = cols(qkv, 0, C), k = cols(qkv, C, C), v = cols(qkv, 2 * C, C);
  pa_tensor kc = cols(kv, 0, C), vc = cols(kv, C, C);
  pa_attn_params ap = {.nhead = b->nhead, .scale = 1.0f / sqrtf((float)(C / b->nhead)),
                       .key_weight = attn_weights, .key_pad = key_pad, .q_ld = qkv->shape[2]};
  if (self) /* keys: the image tokens', then the conditioning's */
    ap.k2 = &kc, ap.v2 = &vc, ap.kv_ld = 3 * C, ap.kv2_ld = 2 * C;
  else
    ap.kv_ld = 2 * C;
  PA_TRY(pa_attention(be, o, &q, self ? &k : &kc, self ? &v : &vc, &ap));
  PA_TRY(pa_linear(be, proj, o, b->out_w, b->out_b, PA_ACT_NONE));
  PA_TRY(pa_add(be, &xs, &xs, proj, 1.0f));
fail:
  pa_arena_release(m->arena, n);
  pa_arena_release(m->arena, qkv);
  pa_arena_release(m->arena, o);
  pa_arena_release(m->arena, proj);
  return rc;
}

static int run_block(pa_paella *m, block *b, pa_tensor *x, const pa_tensor *skip,
                     const noise_level *nl, const pa_paella_cond *c, const pa_tensor *aw) {
  int rc;
  switch (b->type) {
    case 'C': rc = res_block(m, b, x, skip); break;
    case 'F': rc = ff_block(m, b, x); break;
    case 'T': rc = time_block(m, b, x, nl); break;
    default: rc = attn_block(m, b, x, c->kv[b->attn_slot], c->key_pad, aw); break;
  }
  if (rc == PA_OK) hook(m, b->name, x);
  return rc;
}

/* x (B, h, w, c_in) -> LN -> 2x2 (transposed) conv -> new tensor. */
static int resample(pa_paella *m, level *L, pa_tensor **x, bool up, int c_out) {
  pa_backend *be = m->be;
  int rc = PA_OK;
  int64_t B = (*x)->shape[0], H = (*x)->shape[1], W = (*x)->shape[2];
  pa_tensor *y = up ? ACT(m, 4, B, H * 2, W * 2, (int64_t)c_out)
                    : ACT(m, 4, B, H / 2, W / 2, (int64_t)c_out);
  if (!y) return PA_ERR_NOMEM;
  pa_conv_params cp = {.stride = 2, .pad = 0, .groups = 1};
  PA_TRY(pa_layernorm(be, *x, *x, NULL, NULL, LN_EPS));
  if (up)
    PA_TRY(pa_conv_transpose2d(be, y, *x, L->resample_w, L->resample_b, cp));
  else
    PA_TRY(pa_conv2d(be, y, *x, L->resample_w, L->resample_b, cp));
  pa_arena_release(m->arena, *x);
  *x = y;
  return PA_OK;
fail:
  pa_arena_release(m->arena, y);
  return rc;
}

/* ---- forward ----------------------------------------------------------------------------- */

/* tokens (B, H, W) -> in_mapper -> PixelUnshuffle -> 1x1 conv -> LN : (B, H/p, W/p, c0) */
static int embed_tokens(pa_paella *m, const pa_tensor *x, pa_tensor **out) {
  pa_backend *be = m->be;
  const pa_paella_config *c = &m->cfg;
  int rc = PA_OK, p = c->patch_size;
  int64_t B = x->shape[0], H = x->shape[1], W = x->shape[2];
  pa_tensor *e = ACT(m, 4, B, H, W, (int64_t)c->c_in);
  pa_tensor *u = ACT(m, 4, B, H / p, W / p, (int64_t)c->c_in * p * p);
  pa_tensor *y = ACT(m, 4, B, H / p, W / p, (int64_t)c->c_hidden[0]);
  if (!e || !u || !y) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_embedding(be, e, x, m->emb_table));
  PA_TRY(pa_layernorm(be, e, e, NULL, NULL, LN_EPS));
  hook(m, "in_mapper", e);
  PA_TRY(pa_pixel_unshuffle(be, u, e, p));
  pa_tensor w2 = pa_view(m->embed_w, 2, (const int64_t[]){m->embed_w->shape[0], m->embed_w->shape[1]});
  PA_TRY(pa_linear(be, y, u, &w2, m->embed_b, PA_ACT_NONE));
  PA_TRY(pa_layernorm(be, y, y, NULL, NULL, LN_EPS));
  hook(m, "embedding", y);
  *out = y;
  y = NULL;
fail:
  pa_arena_release(m->arena, e);
  pa_arena_release(m->arena, u);
  pa_arena_release(m->arena, y);
  return rc;
}

/* (B, h, w, c0) -> clf (LN, 1x1, PixelShuffle) -> out_mapper (LN, 1x1) -> logits */
static int classify(pa_paella *m, pa_tensor *x, pa_tensor *logits) {
  pa_backend *be = m->be;
  const pa_paella_config *c = &m->cfg;
  int rc = PA_OK, p = c->patch_size;
  int64_t B = x->shape[0], h = x->shape[1], w = x->shape[2];
  pa_tensor *t = ACT(m, 4, B, h, w, (int64_t)c->c_out * p * p);
  pa_tensor *s = ACT(m, 4, B, h * p, w * p, (int64_t)c->c_out);
  if (!t || !s) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_layernorm(be, x, x, NULL, NULL, LN_EPS));
  pa_tensor cw = pa_view(m->clf_w, 2, (const int64_t[]){m->clf_w->shape[0], m->clf_w->shape[1]});
  PA_TRY(pa_linear(be, t, x, &cw, m->clf_b, PA_ACT_NONE));
  PA_TRY(pa_pixel_shuffle(be, s, t, p));
  hook(m, "clf", s);
  PA_TRY(pa_layernorm(be, s, s, NULL, NULL, LN_EPS));
  pa_tensor ow = pa_view(m->out_w, 2, (const int64_t[]){m->out_w->shape[0], m->out_w->shape[1]});
  PA_TRY(pa_linear(be, logits, s, &ow, NULL, PA_ACT_NONE));
fail:
  pa_arena_release(m->arena, t);
  pa_arena_release(m->arena, s);
  return rc;
}

static int check_forward_args(const pa_paella *m, const pa_tensor *x, const pa_paella_cond *c,
                              const pa_tensor *logits) {
  const pa_paella_config *cfg = &m->cfg;
  int mult = cfg->patch_size << (cfg->levels - 1);
  if (x->dtype != PA_I64 || x->ndim != 3)
    return pa_fail(PA_ERR_SHAPE, "paella: tokens must be int64 (B, H, W)");
  if (x->shape[1] % mult || x->shape[2] % mult || x->shape[1] == 0 || x->shape[2] == 0)
    return pa_fail(PA_ERR_SHAPE, "paella: token grid %lldx%lld is not a multiple of %d",
                   (long long)x->shape[1], (long long)x->shape[2], mult);
  if (c->c_embed->shape[0] != x->shape[0])
    return pa_fail(PA_ERR_SHAPE, "paella: conditioning batch %lld != tokens batch %lld",
                   (long long)c->c_embed->shape[0], (long long)x->shape[0]);
  if (logits->ndim != 4 || logits->shape[0] != x->shape[0] || logits->shape[1] != x->shape[1] ||
      logits->shape[2] != x->shape[2] || logits->shape[3] != cfg->num_labels)
    return pa_fail(PA_ERR_SHAPE, "paella: logits must be (B, H, W, %d)", cfg->num_labels);
  return PA_OK;
}

static int forward(pa_paella *m, const pa_paella_cond *c, const pa_tensor *x, const noise_level *nl,
                   const pa_tensor *attn_weights, pa_tensor *logits);

int pa_paella_forward(pa_paella *m, const pa_paella_cond *c, const pa_tensor *x, const float *r,
                      const pa_tensor *attn_weights, pa_tensor *logits) {
  int rc = check_forward_args(m, x, c, logits);
  if (rc) return rc;
  pa_tensor *r_host = pa_r_embedding(r, (int)x->shape[0], m->cfg.c_r), *r_embed = NULL;
  if (!r_host || !(r_embed = pa_upload(m->be, r_host)))
    rc = PA_ERR_NOMEM;
  else
    rc = forward(m, c, x, &(noise_level){.r_embed = r_embed}, attn_weights, logits);
  pa_release(m->be, r_embed);
  pa_tensor_free(r_host);
  return rc;
}

int pa_paella_forward_at(pa_paella *m, const pa_paella_cond *c, const pa_tensor *x, const pa_paella_time *t,
                         int index, const pa_tensor *attn_weights, pa_tensor *logits) {
  int rc = check_forward_args(m, x, c, logits);
  if (rc) return rc;
  if (index < 0 || index >= t->am->shape[0])
    return pa_fail(PA_ERR_INVALID, "paella: noise level %d of %lld", index, (long long)t->am->shape[0]);
  return forward(m, c, x, &(noise_level){.time = t, .index = index}, attn_weights, logits);
}

static int forward(pa_paella *m, const pa_paella_cond *c, const pa_tensor *x, const noise_level *nl,
                   const pa_tensor *attn_weights, pa_tensor *logits) {
  pa_backend *be = m->be;
  const pa_paella_config *cfg = &m->cfg;
  pa_tensor *h = NULL, *skips[PAELLA_MAX_LEVELS] = {0};
  /* intermediates depend only on the token grid and on how the noise level comes in */
  const int64_t key[] = {x->shape[0], x->shape[1], x->shape[2], nl->time != NULL};
  int rc = pa_arena_begin(m->arena, key, 4);
  if (rc) return rc;
  PA_TRY(embed_tokens(m, x, &h));
  for (int li = 0; li < cfg->levels; li++) {
    level *L = &m->down[li];
    if (li > 0) {
      PA_TRY(resample(m, L, &h, false, cfg->c_hidden[li]));
      char name[48];
      snprintf(name, sizeof name, "down_blocks.%d.0", li);
      hook(m, name, h);
    }
    for (int j = 0; j < L->n; j++) PA_TRY(run_block(m, &L->blocks[j], h, NULL, nl, c, attn_weights));
    if (li < cfg->levels - 1) {
      if (!(skips[li] = pa_arena_alloc(m->arena, PA_F32, h->ndim, h->shape))) goto nomem;
      PA_TRY(pa_copy(be, skips[li], h));
    }
  }
  for (int ui = 0; ui < cfg->levels; ui++) {
    int li = cfg->levels - 1 - ui;
    level *L = &m->up[ui];
    for (int j = 0; j < L->n; j++)
      PA_TRY(run_block(m, &L->blocks[j], h, j == 0 ? skips[li] : NULL, nl, c, attn_weights));
    if (li > 0) {
      PA_TRY(resample(m, L, &h, true, cfg->c_hidden[li - 1]));
      char name[48];
      snprintf(name, sizeof name, "up_blocks.%d.%d", ui, L->n);
      hook(m, name, h);
    }
  }
  PA_TRY(classify(m, h, logits));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  for (int i = 0; i < PAELLA_MAX_LEVELS; i++) pa_arena_release(m->arena, skips[i]);
  pa_arena_release(m->arena, h);
  if (rc == PA_OK) rc = pa_arena_end(m->arena); /* a failed pass is not planned */
  return rc;
}
