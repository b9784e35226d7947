#include "model/pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "model/clip.h"
#include "model/default_model.h"
#include "model/paella.h"
#include "model/prior.h"
#include "model/t5.h"
#include "model/tokenizer.h"
#include "model/vqgan.h"

#define BYT5_MAX_LEN 768

struct pa_pipeline {
  pa_backend *be;
  bool untrained;
  int max_side;
  pa_weights *w_paella, *w_prior, *w_vqgan, *w_t5, *w_clip;
  pa_paella *paella;
  pa_prior *prior;
  pa_vqgan *vqgan;
  pa_t5 *t5;
  pa_clip *clip_text, *clip_vision;
  const pa_clip_tokenizer *tok;
  const pa_embed_cache *cache;
  char t5_id[160], clip_id[160]; /* encoder identities for cache keys */
  long long forwards;            /* Paella forwards run (a batch counts once) */
};

/* ---- opening ----------------------------------------------------------------------------- */

/* The embedded default model (model/default_model.h), or its random-weight twin. */
static int open_embedded(pa_pipeline *p, bool random_weights) {
  pa_default_model d;
  int rc = pa_default_model_open(random_weights, &d);
  if (rc) return rc;
  p->w_t5 = d.t5, p->w_clip = d.clip, p->w_prior = d.prior, p->w_vqgan = d.vqgan, p->w_paella = d.paella;
  PA_TRY(pa_t5_load(p->be, p->w_t5, &d.t5_cfg, &p->t5));
  PA_TRY(pa_clip_load(p->be, p->w_clip, &d.clip_text_cfg, false, &p->clip_text));
  PA_TRY(pa_clip_load(p->be, p->w_clip, &d.clip_vision_cfg, true, &p->clip_vision));
  PA_TRY(pa_prior_load(p->be, p->w_prior, &d.prior_cfg, &p->prior));
  PA_TRY(pa_vqgan_load(p->be, p->w_vqgan, &d.vqgan_cfg, &p->vqgan));
  PA_TRY(pa_paella_load(p->be, p->w_paella, &d.paella_cfg, &p->paella));
  p->untrained = random_weights;
fail:
  return rc;
}

static bool file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* First existing candidate under dir; appends the expected name to `missing` otherwise. */
static const char *find_file(const char *dir, const char *const *names, char *buf, size_t cap,
                             char *missing, size_t mcap) {
  for (int i = 0; names[i]; i++) {
    snprintf(buf, cap, "%s/%s", dir, names[i]);
    if (file_exists(buf)) return buf;
  }
  size_t n = strlen(missing);
  snprintf(missing + n, mcap - n, "%s%s/%s", n ? ", " : "", dir, names[0]);
  return NULL;
}

static int open_weights(const char *path, pa_weights **w) {
  int rc = pa_weights_open(path, w);
  return rc;
}

static int open_dir(pa_pipeline *p, const char *dir) {
  static const char *const paella_names[] = {PA_FILE_PAELLA, "paella_v3.safetensors", NULL};
  static const char *const prior_names[] = {PA_FILE_PRIOR, "prior_v1.safetensors", NULL};
  static const char *const vqgan_names[] = {PA_FILE_VQGAN, "vqgan_f4.safetensors", NULL};
  static const char *const t5_names[] = {PA_DIR_BYT5 "/pytorch_model.bin", PA_DIR_BYT5 "/model.safetensors", NULL};
  static const char *const clip_names[] = {PA_DIR_CLIP "/model.safetensors", NULL};
  char missing[4096] = "", fp[1024], fr[1024], fv[1024], ft[1024], fc[1024];
  const char *pp = find_file(dir, paella_names, fp, sizeof fp, missing, sizeof missing);
  const char *pr = find_file(dir, prior_names, fr, sizeof fr, missing, sizeof missing);
  const char *pv = find_file(dir, vqgan_names, fv, sizeof fv, missing, sizeof missing);
  const char *pt = find_file(dir, t5_names, ft, sizeof ft, missing, sizeof missing);
  const char *pc = find_file(dir, clip_names, fc, sizeof fc, missing, sizeof missing);
  if (!pp || !pr || !pv || !pt || !pc)
    return pa_fail(PA_ERR_NOTFOUND, "missing model files: %s (see docs/models.md)", missing);
  int rc = PA_OK;
  pa_paella_config pcfg;
  pa_prior_config prcfg;
  pa_vqgan_config vcfg;
  pa_t5_config tcfg;
  pa_clip_config ctcfg, cvcfg;
  PA_TRY(open_weights(pp, &p->w_paella));
  PA_TRY(pa_paella_config_infer(p->w_paella, &pcfg));
  PA_TRY(pa_paella_load(p->be, p->w_paella, &pcfg, &p->paella));
  PA_TRY(open_weights(pr, &p->w_prior));
  PA_TRY(pa_prior_config_infer(p->w_prior, &prcfg));
  PA_TRY(pa_prior_load(p->be, p->w_prior, &prcfg, &p->prior));
  PA_TRY(open_weights(pv, &p->w_vqgan));
  PA_TRY(pa_vqgan_config_infer(p->w_vqgan, &vcfg));
  PA_TRY(pa_vqgan_load(p->be, p->w_vqgan, &vcfg, &p->vqgan));
  PA_TRY(open_weights(pt, &p->w_t5));
  PA_TRY(pa_t5_config_infer(p->w_t5, &tcfg));
  PA_TRY(pa_t5_load(p->be, p->w_t5, &tcfg, &p->t5));
  PA_TRY(open_weights(pc, &p->w_clip));
  PA_TRY(pa_clip_config_infer(p->w_clip, false, &ctcfg));
  PA_TRY(pa_clip_load(p->be, p->w_clip, &ctcfg, false, &p->clip_text));
  PA_TRY(pa_clip_config_infer(p->w_clip, true, &cvcfg));
  PA_TRY(pa_clip_load(p->be, p->w_clip, &cvcfg, true, &p->clip_vision));
fail:
  return rc;
}

/* The networks must agree on the widths they exchange. */
static int check_compatible(const pa_pipeline *p) {
  const pa_paella_config *pc = pa_paella_cfg(p->paella);
  if (pa_t5_cfg(p->t5)->d_model != pc->byt5_embd)
    return pa_fail(PA_ERR_SHAPE, "ByT5 width %d != Paella byt5_embd %d", pa_t5_cfg(p->t5)->d_model, pc->byt5_embd);
  if (pa_clip_cfg(p->clip_text)->projection_dim != pc->clip_embd || pa_prior_cfg(p->prior)->clip_r != pc->clip_embd ||
      pa_clip_cfg(p->clip_vision)->projection_dim != pc->clip_embd)
    return pa_fail(PA_ERR_SHAPE, "CLIP / prior widths do not match Paella clip_embd %d", pc->clip_embd);
  if (pa_vqgan_cfg(p->vqgan)->codebook_size != pc->num_labels)
    return pa_fail(PA_ERR_SHAPE, "VQGAN codebook %d != Paella num_labels %d", pa_vqgan_cfg(p->vqgan)->codebook_size,
                   pc->num_labels);
  return PA_OK;
}

/* Cache keys must change when the weights do: the file names and sizes of the encoders. */
static void set_encoder_ids(pa_pipeline *p) {
  struct stat st;
  const char *t5 = pa_weights_source(p->w_t5), *clip = pa_weights_source(p->w_clip);
  long long t5_size = stat(t5, &st) == 0 ? (long long)st.st_size : 0;
  long long clip_size = stat(clip, &st) == 0 ? (long long)st.st_size : 0;
  const char *t5_base = strrchr(t5, '/') ? strrchr(t5, '/') + 1 : t5;
  const char *clip_base = strrchr(clip, '/') ? strrchr(clip, '/') + 1 : clip;
  snprintf(p->t5_id, sizeof p->t5_id, "byt5:%s:%lld:%d", t5_base, t5_size, pa_t5_cfg(p->t5)->d_model);
  snprintf(p->clip_id, sizeof p->clip_id, "clip-text:%s:%lld:%d", clip_base, clip_size,
           pa_clip_cfg(p->clip_text)->projection_dim);
}

void pa_pipeline_set_cache(pa_pipeline *p, const pa_embed_cache *cache) { p->cache = cache; }

int pa_pipeline_open(const pa_pipeline_options *o, pa_pipeline **out) {
  pa_pipeline *p = calloc(1, sizeof *p);
  if (!p) return pa_fail(PA_ERR_NOMEM, "out of memory");
  p->be = o->be ? o->be : pa_cpu_backend();
  p->max_side = o->max_side > 0 ? o->max_side : 1024;
  int rc = PA_OK;
  PA_TRY(pa_clip_tokenizer_get(&p->tok));
  if (o->models_dir && o->models_dir[0])
    PA_TRY(open_dir(p, o->models_dir));
  else
    PA_TRY(open_embedded(p, o->random_weights));
  PA_TRY(check_compatible(p));
  set_encoder_ids(p);
  *out = p;
  return PA_OK;
fail:
  pa_pipeline_free(p);
  return rc;
}

void pa_pipeline_free(pa_pipeline *p) {
  if (!p) return;
  pa_paella_free(p->paella);
  pa_prior_free(p->prior);
  pa_vqgan_free(p->vqgan);
  pa_t5_free(p->t5);
  pa_clip_free(p->clip_text);
  pa_clip_free(p->clip_vision);
  pa_weights *ws[] = {p->w_paella, p->w_prior, p->w_vqgan, p->w_t5, p->w_clip};
  for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) pa_weights_free(ws[i]);
  free(p);
}

bool pa_pipeline_untrained(const pa_pipeline *p) { return p->untrained; }

int pa_pipeline_size_multiple(const pa_pipeline *p) {
  const pa_paella_config *c = pa_paella_cfg(p->paella);
  return pa_vqgan_factor(p->vqgan) * (c->patch_size << (c->levels - 1));
}

int pa_pipeline_max_side(const pa_pipeline *p) { return p->max_side; }

long long pa_pipeline_forwards(const pa_pipeline *p) { return p->forwards; }

/* ---- requests ---------------------------------------------------------------------------- */

pa_gen_request pa_gen_request_default(void) {
  return (pa_gen_request){.mode = PA_GEN_TXT2IMG, .width = 256, .height = 256, .batch = 1,
                          .sampler = pa_sampler_default_config(), .prior_steps = 60, .prior_cfg = 3.0f,
                          .strength = 0.5f, .attn_weight = {1, 1, 1}};
}

static int check_size(const pa_pipeline *p, int w, int h, const char *what) {
  int m = pa_pipeline_size_multiple(p);
  if (w < m || h < m || w % m || h % m)
    return pa_fail(PA_ERR_INVALID, "%s %dx%d: width and height must be positive multiples of %d", what, w, h, m);
  if (w > p->max_side || h > p->max_side)
    return pa_fail(PA_ERR_INVALID, "%s %dx%d exceeds the limit of %d pixels per side", what, w, h, p->max_side);
  return PA_OK;
}

int pa_gen_request_check(const pa_pipeline *p, const pa_gen_request *r) {
  int rc = check_size(p, r->width, r->height, "size");
  if (rc) return rc;
  if (r->batch < 1 || r->batch > 64) return pa_fail(PA_ERR_INVALID, "batch must be in 1..64 (got %d)", r->batch);
  if (!r->prompt || (!r->prompt[0] && r->mode != PA_GEN_VARIATION))
    return pa_fail(PA_ERR_INVALID, "an empty prompt is only accepted for variations");
  if ((rc = pa_sampler_config_check(&r->sampler))) return rc;
  if (r->prior_steps < 0 || r->prior_steps > 1000) return pa_fail(PA_ERR_INVALID, "prior steps must be in 0..1000");
  if ((r->regions != PA_REGIONS_NONE || r->interpolate) && (!r->prompt2 || !r->prompt2[0]))
    return pa_fail(PA_ERR_INVALID, "a second prompt is required for regions or interpolation");
  if (r->regions != PA_REGIONS_NONE && r->interpolate)
    return pa_fail(PA_ERR_INVALID, "regions and interpolation cannot be combined");
  if (r->mode != PA_GEN_TXT2IMG && !r->image)
    return pa_fail(PA_ERR_INVALID, "this mode needs an input image");
  int f = pa_vqgan_factor(p->vqgan);
  switch (r->mode) {
    case PA_GEN_IMG2IMG:
    case PA_GEN_INPAINT:
      if (r->image->width != r->width || r->image->height != r->height)
        return pa_fail(PA_ERR_INVALID, "input image is %dx%d, expected %dx%d (fit it first)", r->image->width,
                       r->image->height, r->width, r->height);
      if (r->mode == PA_GEN_IMG2IMG && !(r->strength >= 0 && r->strength <= 1))
        return pa_fail(PA_ERR_INVALID, "strength must be in [0, 1]");
      if (r->mode == PA_GEN_INPAINT && !r->mask) return pa_fail(PA_ERR_INVALID, "inpainting needs a mask image");
      if (r->mode == PA_GEN_INPAINT && (r->mask->width != r->image->width || r->mask->height != r->image->height))
        return pa_fail(PA_ERR_INVALID, "mask is %dx%d but the image is %dx%d", r->mask->width, r->mask->height,
                       r->image->width, r->image->height);
      break;
    case PA_GEN_OUTPAINT:
      if (r->image->width % f || r->image->height % f || r->offset_x % f || r->offset_y % f)
        return pa_fail(PA_ERR_INVALID, "outpainting: image size and offset must be multiples of %d pixels", f);
      if (r->offset_x < 0 || r->offset_y < 0 || r->offset_x + r->image->width > r->width ||
          r->offset_y + r->image->height > r->height)
        return pa_fail(PA_ERR_INVALID, "outpainting: a %dx%d image at +%d+%d does not fit the %dx%d canvas",
                       r->image->width, r->image->height, r->offset_x, r->offset_y, r->width, r->height);
      break;
    default:
      break;
  }
  return PA_OK;
}

/* ---- conditioning ------------------------------------------------------------------------ */

/* One text's embeddings on the host: ByT5 states (1, L, D) and the CLIP text embedding (1, Dc). */
typedef struct {
  pa_tensor *byt5, *clip;
} text_embed;

static void text_embed_free(text_embed *e) {
  pa_tensor_free(e->byt5);
  pa_tensor_free(e->clip);
  e->byt5 = e->clip = NULL;
}

static int byt5_length(const char *text) {
  int64_t ids[BYT5_MAX_LEN];
  int n = 0;
  return pa_byt5_tokenize(text, strlen(text), BYT5_MAX_LEN, ids, &n) ? -1 : n;
}

static bool cache_get(pa_pipeline *p, const char *enc, const int64_t *ids, int n, pa_tensor **out) {
  return p->cache && p->cache->lookup && p->cache->lookup(p->cache->user, enc, ids, n, out);
}

static void cache_put(pa_pipeline *p, const char *enc, const int64_t *ids, int n, const pa_tensor *v) {
  if (p->cache && p->cache->store) p->cache->store(p->cache->user, enc, ids, n, v);
}

/* ByT5 states (1, L, D) of ids (1, L), through the cache. */
static int encode_byt5(pa_pipeline *p, int64_t *ids, int L, pa_tensor **out) {
  pa_backend *be = p->be;
  int rc = PA_OK, D = pa_t5_cfg(p->t5)->d_model;
  if (cache_get(p, p->t5_id, ids, L, out) && (*out)->ndim == 3 && (*out)->shape[1] == L && (*out)->shape[2] == D)
    return PA_OK;
  pa_tensor_free(*out);
  *out = NULL;
  pa_tensor *t_ids = pa_tensor_wrap(PA_I64, 2, (const int64_t[]){1, L}, ids);
  pa_tensor *hid = pa_alloc_f32(be, 3, (int64_t)1, (int64_t)L, (int64_t)D);
  if (!t_ids || !hid) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_t5_encode(p->t5, t_ids, hid));
  if (!(*out = pa_download(be, hid))) rc = PA_ERR_NOMEM;
  if (*out) cache_put(p, p->t5_id, ids, L, *out);
fail:
  pa_tensor_free(t_ids);
  pa_release(be, hid);
  return rc;
}

/* CLIP text embedding (1, Dc) of a text, through the cache. */
static int encode_clip(pa_pipeline *p, const char *text, pa_tensor **out) {
  pa_backend *be = p->be;
  int64_t ids[PA_CLIP_CONTEXT];
  int rc = pa_clip_tokenize(p->tok, text, strlen(text), ids), Dc = pa_clip_cfg(p->clip_text)->projection_dim;
  if (rc) return rc;
  if (cache_get(p, p->clip_id, ids, PA_CLIP_CONTEXT, out) && pa_numel(*out) == Dc) return PA_OK;
  pa_tensor_free(*out);
  *out = NULL;
  int C = pa_clip_cfg(p->clip_text)->hidden_size;
  pa_tensor *c_ids = pa_tensor_wrap(PA_I64, 2, (const int64_t[]){1, PA_CLIP_CONTEXT}, ids);
  pa_tensor *hid = pa_alloc_f32(be, 3, (int64_t)1, (int64_t)PA_CLIP_CONTEXT, (int64_t)C);
  pa_tensor *emb = pa_alloc_f32(be, 2, (int64_t)1, (int64_t)Dc);
  if (!c_ids || !hid || !emb) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_clip_text_forward(p->clip_text, c_ids, hid, emb));
  if (!(*out = pa_download(be, emb))) rc = PA_ERR_NOMEM;
  if (*out) cache_put(p, p->clip_id, ids, PA_CLIP_CONTEXT, *out);
fail:
  pa_tensor_free(c_ids);
  pa_release(be, hid);
  pa_release(be, emb);
  return rc;
}

/* pad_to > 0 pads the ByT5 ids with 0 as a training batch would (interpolation). */
static int embed_text(pa_pipeline *p, const char *text, int pad_to, text_embed *out) {
  int rc = PA_OK, L = 0;
  int64_t *ids = NULL;
  PA_TRY(pa_byt5_tokenize_batch(&text, NULL, 1, BYT5_MAX_LEN, pad_to, &ids, &L));
  PA_TRY(encode_byt5(p, ids, L, &out->byt5));
  PA_TRY(encode_clip(p, text, &out->clip));
fail:
  if (rc) text_embed_free(out);
  free(ids);
  return rc;
}

/* out = (1-t)*a + t*b, or the spherical interpolation of the flattened vectors; both forms
 * return a exactly at t = 0 and b exactly at t = 1. */
static void mix(float *out, const float *a, const float *b, int64_t n, float t, bool slerp) {
  double dot = 0, na = 0, nb = 0;
  if (slerp)
    for (int64_t i = 0; i < n; i++) dot += (double)a[i] * b[i], na += (double)a[i] * a[i], nb += (double)b[i] * b[i];
  double cosv = slerp && na > 0 && nb > 0 ? dot / sqrt(na * nb) : 1.0;
  double theta = acos(fmin(1.0, fmax(-1.0, cosv)));
  double wa = 1.0 - t, wb = t;
  if (slerp && theta > 1e-6) {
    wa = sin((1.0 - t) * theta) / sin(theta);
    wb = sin(t * theta) / sin(theta);
  }
  for (int64_t i = 0; i < n; i++) out[i] = (float)(wa * a[i] + wb * b[i]);
}

/* Host rows of several requests stacked along dim 0: parts[i] is (1, ...) (repeated reps[i]
 * times) or (reps[i], ...) (copied); all parts agree on the other dims. */
static pa_tensor *stack_rows(const pa_tensor *const *parts, const int *reps, int n) {
  int64_t shape[PA_MAX_DIMS], rows = 0;
  memcpy(shape, parts[0]->shape, sizeof shape);
  for (int i = 0; i < n; i++) rows += reps[i];
  shape[0] = rows;
  pa_tensor *out = pa_tensor_new(PA_F32, parts[0]->ndim, shape);
  if (!out) return NULL;
  size_t row = pa_nbytes(parts[0]) / (size_t)parts[0]->shape[0], off = 0;
  for (int i = 0; i < n; i++)
    for (int b = 0; b < reps[i]; b++, off += row)
      memcpy((char *)out->data + off, (const char *)parts[i]->data + (parts[i]->shape[0] == 1 ? 0 : b * row), row);
  return out;
}

/* Repeats a host (1, ...) tensor B times along dim 0 on the device. */
static pa_tensor *upload_repeat(pa_backend *be, const pa_tensor *h, int B) {
  pa_tensor *rep = stack_rows(&h, &B, 1);
  pa_tensor *d = rep ? pa_upload(be, rep) : NULL;
  pa_tensor_free(rep);
  return d;
}

/* Prior sampling (Diffuzz.sample): x ~ N(0, I) from each image's seed; r runs over
 * linspace(1, 0, steps + 2)[1:]; CFG is lerp(uncond, cond, cfg) with a zero condition as the
 * unconditional input; DDPM (or DDIM) steps. Returns host (B, Dc). */
static int run_prior(pa_pipeline *p, const pa_gen_request *r, const pa_tensor *clip_text, pa_tensor **out) {
  pa_backend *be = p->be;
  int rc = PA_OK, B = r->batch, D = pa_prior_cfg(p->prior)->clip_r, T = r->prior_steps;
  float *rr = malloc((size_t)(T + 2) * sizeof *rr), *tb = malloc((size_t)B * 2 * sizeof *tb);
  pa_tensor *x = pa_tensor_new_2d(PA_F32, B, D), *eps = pa_tensor_new_2d(PA_F32, B, D);
  pa_tensor *eps_u = pa_tensor_new_2d(PA_F32, B, D), *z = pa_tensor_new_2d(PA_F32, B, D);
  pa_tensor *zeros = pa_tensor_new_2d(PA_F32, B, D), *c = NULL, *c0 = NULL, *xd = NULL, *pd = NULL;
  if (!rr || !tb || !x || !eps || !eps_u || !z || !zeros) goto nomem;
  if (!(c = upload_repeat(be, clip_text, B)) || !(c0 = pa_upload(be, zeros))) goto nomem;
  if (!(xd = pa_alloc_f32(be, 2, (int64_t)B, (int64_t)D)) || !(pd = pa_alloc_f32(be, 2, (int64_t)B, (int64_t)D))) goto nomem;
  pa_linspace_f32(1.0f, 0.0f, T + 2, rr);
  float *xh = x->data;
  for (int b = 0; b < B; b++)
    for (int d = 0; d < D; d++) xh[b * D + d] = pa_rng_normal(r->seed + b, PA_RNG_PRIOR, 0, (uint32_t)d);
  for (int i = 0; i < T; i++) {
    float *t = tb, *tp = tb + B;
    for (int b = 0; b < B; b++) t[b] = rr[i + 1], tp[b] = rr[i + 2];
    PA_TRY(be->from_host(be, xd, x));
    PA_TRY(pa_prior_forward(p->prior, xd, t, c, pd));
    PA_TRY(be->to_host(be, eps, pd));
    PA_TRY(pa_prior_forward(p->prior, xd, t, c0, pd));
    PA_TRY(be->to_host(be, eps_u, pd));
    float *e = eps->data, *u = eps_u->data, *zz = z->data;
    for (int64_t k = 0; k < (int64_t)B * D; k++) e[k] = u[k] + r->prior_cfg * (e[k] - u[k]); /* torch.lerp */
    if (r->prior_ddim) {
      pa_diffuzz_ddim_step(xh, xh, e, t, tp, B, D);
    } else {
      for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) zz[b * D + d] = pa_rng_normal(r->seed + b, PA_RNG_PRIOR, (uint32_t)(i + 1), (uint32_t)d);
      pa_diffuzz_ddpm_step(xh, xh, e, zz, t, tp, B, D);
    }
    if (r->progress && !r->progress(r->progress_user, "prior", i + 1, T)) {
      rc = pa_fail(PA_ERR_CANCELED, "canceled during the prior (step %d of %d)", i + 1, T);
      goto fail;
    }
  }
  *out = x;
  x = NULL;
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  free(rr);
  free(tb);
  pa_tensor *hs[] = {x, eps, eps_u, z, zeros};
  for (size_t k = 0; k < sizeof hs / sizeof hs[0]; k++) pa_tensor_free(hs[k]);
  pa_release(be, c);
  pa_release(be, c0);
  pa_release(be, xd);
  pa_release(be, pd);
  return rc;
}

/* CLIP image embedding of an input image (variations), host (1, Dc). */
static int embed_image(pa_pipeline *p, const pa_image *img, pa_tensor **out) {
  pa_backend *be = p->be;
  const pa_clip_config *cv = pa_clip_cfg(p->clip_vision);
  int rc = PA_OK, S = cv->image_size, P = (S / cv->patch_size) * (S / cv->patch_size) + 1;
  pa_tensor *px = NULL, *pxd = NULL, *hid = NULL, *emb = NULL;
  PA_TRY(pa_clip_preprocess_f32(img->rgb, img->height, img->width, S, &px));
  if (!(pxd = pa_upload(be, px))) goto nomem;
  hid = pa_alloc_f32(be, 3, (int64_t)1, (int64_t)P, (int64_t)cv->hidden_size);
  emb = pa_alloc_f32(be, 2, (int64_t)1, (int64_t)cv->projection_dim);
  if (!hid || !emb) goto nomem;
  PA_TRY(pa_clip_vision_forward(p->clip_vision, pxd, hid, emb));
  if (!(*out = pa_download(be, emb))) goto nomem;
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_tensor_free(px);
  pa_release(be, pxd);
  pa_release(be, hid);
  pa_release(be, emb);
  return rc;
}

/* ---- token sampling ---------------------------------------------------------------------- */

/* Everything the sampling loop needs, prepared once per request. */
typedef struct {
  int B, h, w, K;
  pa_paella_cond *cond, *cond2, *uncond; /* cond2: second region's prompt, or NULL */
  pa_tensor *attn_w;                     /* (L_c) re-weighting of the conditional pass, or NULL */
  int64_t *init_noise;                   /* (B, h*w) */
  int64_t *pinned;                       /* (B, h*w) tokens kept where keep[p], or NULL */
  uint8_t *keep;                         /* (h*w) */
  double seconds_prior;                  /* spent in the prior (or the CLIP image encoder) */
  uint64_t *seeds;                       /* (B) the seed of each image */
  pa_progress_fn progress;               /* per denoising step; false cancels */
  void *progress_user;
} sample_ctx;

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One Paella forward into host logits (B, h, w, K). */
static int forward(pa_pipeline *p, const pa_paella_cond *c, const pa_tensor *tok_dev, const float *r,
                   const pa_tensor *aw, pa_tensor *logits_dev, pa_tensor *logits_host) {
  p->forwards++;
  int rc = pa_paella_forward(p->paella, c, tok_dev, r, aw, logits_dev);
  return rc ? rc : p->be->to_host(p->be, logits_host, logits_dev);
}

/* Left/right (top/bottom) regions: positions in the second half take the second prompt's
 * logits. */
static void combine_regions(float *a, const float *b, const sample_ctx *s, pa_regions mode) {
  for (int bi = 0; bi < s->B; bi++)
    for (int y = 0; y < s->h; y++)
      for (int x = 0; x < s->w; x++) {
        bool second = mode == PA_REGIONS_LEFT_RIGHT ? x >= s->w / 2 : y >= s->h / 2;
        if (!second) continue;
        size_t off = (((size_t)bi * s->h + y) * s->w + x) * s->K;
        memcpy(a + off, b + off, (size_t)s->K * sizeof *a);
      }
}

static void pin_tokens(int64_t *tokens, const sample_ctx *s) {
  if (!s->pinned) return;
  int64_t n = (int64_t)s->h * s->w;
  for (int b = 0; b < s->B; b++)
    for (int64_t q = 0; q < n; q++)
      if (s->keep[q]) tokens[b * n + q] = s->pinned[b * n + q];
}

/* The v3 loop: forward (CFG), draw every position, re-noise toward the initial noise, pin. */
static int sample_tokens(pa_pipeline *p, const pa_gen_request *r, const pa_sampler_config *sc,
                         sample_ctx *s, int64_t *tokens) {
  pa_backend *be = p->be;
  int rc = PA_OK, steps = sc->steps, B = s->B;
  int64_t n = (int64_t)s->h * s->w;
  float *t_list = malloc((size_t)(steps + 1) * sizeof *t_list), *temps = malloc((size_t)steps * sizeof *temps);
  float *cfgs = malloc((size_t)steps * sizeof *cfgs), *rb = malloc((size_t)B * sizeof *rb);
  pa_tensor *tok_h = pa_tensor_wrap(PA_I64, 3, (const int64_t[]){B, s->h, s->w}, tokens), *tok_d = NULL;
  pa_tensor *lg_d = pa_alloc_f32(be, 4, (int64_t)B, (int64_t)s->h, (int64_t)s->w, (int64_t)s->K);
  pa_tensor *lg = pa_tensor_new(PA_F32, 4, lg_d ? lg_d->shape : (const int64_t[]){1, 1, 1, 1});
  pa_tensor *lg_u = pa_tensor_new_like(lg), *lg_2 = s->cond2 ? pa_tensor_new_like(lg) : NULL;
  if (!t_list || !temps || !cfgs || !rb || !tok_h || !lg_d || !lg || !lg_u || (s->cond2 && !lg_2)) goto nomem;
  if (!(tok_d = pa_alloc(be, PA_I64, 3, tok_h->shape))) goto nomem;
  pa_sampler_schedules(sc, t_list, temps, cfgs);
  for (int i = 0; i < steps; i++) {
    for (int b = 0; b < B; b++) rb[b] = t_list[i];
    PA_TRY(be->from_host(be, tok_d, tok_h));
    PA_TRY(forward(p, s->cond, tok_d, rb, s->attn_w, lg_d, lg));
    if (s->cond2) {
      PA_TRY(forward(p, s->cond2, tok_d, rb, s->attn_w, lg_d, lg_2));
      combine_regions(lg->data, lg_2->data, s, r->regions);
    }
    /* cfg == 1 makes the unconditional term vanish exactly: skip its forward */
    if (i < sc->cond_steps && cfgs[i] != 1.0f) {
      PA_TRY(forward(p, s->uncond, tok_d, rb, NULL, lg_d, lg_u));
      pa_sampler_cfg(lg->data, lg_u->data, pa_numel(lg), cfgs[i]);
    }
    if (sc->typical_mass > 0)
      for (int64_t q = 0; q < B * n; q++)
        PA_TRY(pa_typical_filter((float *)lg->data + q * s->K, s->K, sc->typical_mass, sc->typical_min_tokens, NULL));
    for (int b = 0; b < B; b++) {
      uint64_t seed = s->seeds[b];
      pa_sampler_draw((float *)lg->data + b * n * s->K, n, s->K, temps[i], sc->mode, seed, i, tokens + b * n);
      if (i < sc->renoise_steps)
        pa_sampler_renoise(tokens + b * n, s->init_noise + b * n, n, t_list[i + 1], seed, i);
    }
    pin_tokens(tokens, s);
    if (s->progress && !s->progress(s->progress_user, "denoise", i + 1, steps)) {
      rc = pa_fail(PA_ERR_CANCELED, "canceled at denoising step %d of %d", i + 1, steps);
      goto fail;
    }
  }
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  free(t_list);
  free(temps);
  free(cfgs);
  free(rb);
  pa_tensor_free(tok_h);
  pa_tensor_free(lg);
  pa_tensor_free(lg_u);
  pa_tensor_free(lg_2);
  pa_release(be, tok_d);
  pa_release(be, lg_d);
  return rc;
}

/* ---- the request ------------------------------------------------------------------------- */

int pa_pipeline_encode_image(pa_pipeline *p, const pa_image *img, int64_t *tokens) {
  pa_backend *be = p->be;
  int f = pa_vqgan_factor(p->vqgan), rc = PA_OK;
  pa_tensor *h = pa_tensor_wrap(PA_F32, 4, (const int64_t[]){1, img->height, img->width, 3}, img->rgb);
  pa_tensor *d = h ? pa_upload(be, h) : NULL;
  pa_tensor *idx = pa_alloc(be, PA_I64, 3, (const int64_t[]){1, img->height / f, img->width / f});
  pa_tensor *ih = pa_tensor_wrap(PA_I64, 3, (const int64_t[]){1, img->height / f, img->width / f}, tokens);
  if (!h || !d || !idx || !ih) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_vqgan_encode(p->vqgan, d, NULL, idx));
  PA_TRY(be->to_host(be, ih, idx));
fail:
  pa_tensor_free(h);
  pa_tensor_free(ih);
  pa_release(be, d);
  pa_release(be, idx);
  return rc;
}

/* Paella conditioning from host rows: byt5 (B, L, D), clip (B, Dc), clip_image (B, Dc) or NULL. */
static int make_cond_rows(pa_pipeline *p, const pa_tensor *byt5_h, const pa_tensor *clip_h,
                          const pa_tensor *ci_h, pa_paella_cond **out) {
  pa_backend *be = p->be;
  int rc = PA_OK;
  pa_tensor *byt5 = pa_upload(be, byt5_h), *clip = pa_upload(be, clip_h);
  pa_tensor *ci = ci_h ? pa_upload(be, ci_h) : NULL;
  if (!byt5 || !clip || (ci_h && !ci))
    rc = PA_ERR_NOMEM;
  else
    rc = pa_paella_cond_new(p->paella, byt5, clip, ci, out);
  pa_release(be, byt5);
  pa_release(be, clip);
  pa_release(be, ci);
  return rc;
}

/* Conditioning of n requests' texts (reps[i] images each) and their CLIP image rows (or NULL). */
static int make_cond(pa_pipeline *p, const text_embed *te, const pa_tensor *const *ci, const int *reps, int n,
                     pa_paella_cond **out) {
  const pa_tensor *b_parts[PA_GEN_MAX_GROUP], *c_parts[PA_GEN_MAX_GROUP];
  for (int i = 0; i < n; i++) b_parts[i] = te[i].byt5, c_parts[i] = te[i].clip;
  pa_tensor *byt5 = stack_rows(b_parts, reps, n), *clip = stack_rows(c_parts, reps, n);
  pa_tensor *cim = ci && ci[0] ? stack_rows(ci, reps, n) : NULL;
  int rc = !byt5 || !clip || (ci && ci[0] && !cim) ? PA_ERR_NOMEM : make_cond_rows(p, byt5, clip, cim, out);
  pa_tensor_free(byt5);
  pa_tensor_free(clip);
  pa_tensor_free(cim);
  return rc;
}

/* CLIP image conditioning: the input image's embedding (variation) or the prior's sample. */
static int image_condition(pa_pipeline *p, const pa_gen_request *r, const pa_tensor *clip_text, pa_tensor **out) {
  *out = NULL;
  if (r->mode == PA_GEN_VARIATION) {
    pa_tensor *one = NULL;
    int rc = embed_image(p, r->image, &one);
    if (rc) return rc;
    int64_t D = one->shape[1];
    *out = pa_tensor_new_2d(PA_F32, r->batch, D);
    if (*out)
      for (int b = 0; b < r->batch; b++) memcpy((float *)(*out)->data + b * D, one->data, (size_t)D * 4);
    pa_tensor_free(one);
    return *out ? PA_OK : PA_ERR_NOMEM;
  }
  if (r->prior_steps == 0) return PA_OK;
  return run_prior(p, r, clip_text, out);
}

/* Weights per conditioning token: [byt5 x L | clip x seq | clip_image x seq]. */
static int attn_weights(pa_pipeline *p, const pa_gen_request *r, int L, bool with_image, pa_tensor **out) {
  *out = NULL;
  if (r->attn_weight[0] == 1 && r->attn_weight[1] == 1 && r->attn_weight[2] == 1) return PA_OK;
  int seq = pa_paella_cfg(p->paella)->clip_seq_len, n = L + seq + (with_image ? seq : 0);
  pa_tensor *h = pa_tensor_new(PA_F32, 1, (const int64_t[]){n});
  if (!h) return PA_ERR_NOMEM;
  float *w = h->data;
  for (int i = 0; i < n; i++) w[i] = r->attn_weight[i < L ? 0 : (i < L + seq ? 1 : 2)];
  *out = pa_upload(p->be, h);
  pa_tensor_free(h);
  return *out ? PA_OK : PA_ERR_NOMEM;
}

/* Conditions of the request: main (maybe interpolated), second region, unconditional. */
static int build_conditions(pa_pipeline *p, const pa_gen_request *r, sample_ctx *s) {
  int rc = PA_OK, pad = 0;
  text_embed a = {0}, b = {0}, u = {0};
  pa_tensor *ci_a = NULL, *ci_b = NULL;
  if (r->interpolate) {
    int la = byt5_length(r->prompt), lb = byt5_length(r->prompt2);
    pad = la > lb ? la : lb; /* both padded with ByT5's pad id, as in a training batch */
  }
  PA_TRY(embed_text(p, r->prompt, pad, &a));
  double t0 = now_seconds();
  PA_TRY(image_condition(p, r, a.clip, &ci_a));
  s->seconds_prior += now_seconds() - t0;
  if (r->prompt2 && (r->interpolate || r->regions != PA_REGIONS_NONE)) {
    PA_TRY(embed_text(p, r->prompt2, pad, &b));
    t0 = now_seconds();
    PA_TRY(image_condition(p, r, b.clip, &ci_b));
    s->seconds_prior += now_seconds() - t0;
  }
  if (r->interpolate) {
    mix(a.byt5->data, a.byt5->data, b.byt5->data, pa_numel(a.byt5), r->interp_t, r->slerp);
    mix(a.clip->data, a.clip->data, b.clip->data, pa_numel(a.clip), r->interp_t, r->slerp);
    if (ci_a) mix(ci_a->data, ci_a->data, ci_b->data, pa_numel(ci_a), r->interp_t, r->slerp);
  }
  const pa_tensor *cia = ci_a, *cib = ci_b;
  PA_TRY(make_cond(p, &a, &cia, &r->batch, 1, &s->cond));
  if (r->regions != PA_REGIONS_NONE) PA_TRY(make_cond(p, &b, &cib, &r->batch, 1, &s->cond2));
  PA_TRY(embed_text(p, r->negative_prompt ? r->negative_prompt : "", 0, &u));
  PA_TRY(make_cond(p, &u, NULL, &r->batch, 1, &s->uncond)); /* upstream: clip_image None */
  PA_TRY(attn_weights(p, r, (int)a.byt5->shape[1], ci_a != NULL, &s->attn_w));
fail:
  text_embed_free(&a);
  text_embed_free(&b);
  text_embed_free(&u);
  pa_tensor_free(ci_a);
  pa_tensor_free(ci_b);
  return rc;
}

/* Initial tokens and pinned regions for the mode. Returns the sampler config to run (img2img
 * runs round(steps * strength) steps from t_start = strength). */
static int prepare_tokens(pa_pipeline *p, const pa_gen_request *r, sample_ctx *s, int64_t *tokens,
                          pa_sampler_config *sc) {
  int rc = PA_OK, f = pa_vqgan_factor(p->vqgan);
  int64_t n = (int64_t)s->h * s->w;
  *sc = r->sampler;
  for (int b = 0; b < s->B; b++) pa_sampler_init_noise(s->seeds[b], n, s->K, s->init_noise + b * n);
  memcpy(tokens, s->init_noise, (size_t)(s->B * n) * sizeof *tokens);
  if (r->mode != PA_GEN_IMG2IMG && r->mode != PA_GEN_INPAINT && r->mode != PA_GEN_OUTPAINT) return PA_OK;
  int64_t *x0 = malloc((size_t)n * sizeof *x0);
  s->keep = calloc((size_t)n, 1);
  s->pinned = malloc((size_t)(s->B * n) * sizeof *s->pinned);
  if (!x0 || !s->keep || !s->pinned) {
    free(x0);
    return pa_fail(PA_ERR_NOMEM, "out of memory");
  }
  if (r->mode == PA_GEN_OUTPAINT) {
    int ih = r->image->height / f, iw = r->image->width / f, oy = r->offset_y / f, ox = r->offset_x / f;
    int64_t *inner = malloc((size_t)ih * iw * sizeof *inner);
    if (!inner || (rc = pa_pipeline_encode_image(p, r->image, inner))) {
      free(inner);
      free(x0);
      return inner ? rc : pa_fail(PA_ERR_NOMEM, "out of memory");
    }
    for (int64_t q = 0; q < n; q++) x0[q] = 0;
    for (int y = 0; y < ih; y++)
      for (int x = 0; x < iw; x++) {
        x0[(int64_t)(oy + y) * s->w + ox + x] = inner[(int64_t)y * iw + x];
        s->keep[(int64_t)(oy + y) * s->w + ox + x] = 1;
      }
    free(inner);
  } else if ((rc = pa_pipeline_encode_image(p, r->image, x0))) {
    free(x0);
    return rc;
  }
  if (r->mode == PA_GEN_INPAINT) /* a token is regenerated when its cell is mostly white */
    for (int y = 0; y < s->h; y++)
      for (int x = 0; x < s->w; x++) {
        double sum = 0;
        for (int dy = 0; dy < f; dy++)
          for (int dx = 0; dx < f; dx++) {
            const float *px = r->mask->rgb + ((size_t)(y * f + dy) * r->mask->width + x * f + dx) * 3;
            sum += (px[0] + px[1] + px[2]) / 3.0;
          }
        s->keep[(int64_t)y * s->w + x] = sum / (f * f) < 0.5;
      }
  for (int b = 0; b < s->B; b++) memcpy(s->pinned + b * n, x0, (size_t)n * sizeof *x0);
  if (r->mode == PA_GEN_IMG2IMG) {
    /* start from the image's tokens noised to t_start = strength; nothing is pinned */
    sc->t_start = r->strength;
    sc->steps = (int)lround(r->sampler.steps * r->strength);
    sc->renoise_steps = sc->steps > 0 ? sc->steps - 1 : 0;
    if (sc->cond_steps > sc->steps) sc->cond_steps = sc->steps;
    for (int b = 0; b < s->B; b++)
      for (int64_t q = 0; q < n; q++) {
        float u = pa_rng_uniform(s->seeds[b], PA_RNG_RENOISE, 0xffffffffu, (uint32_t)q, 0);
        tokens[b * n + q] = u <= r->strength && sc->steps > 0 ? s->init_noise[b * n + q] : x0[q];
      }
    free(s->keep);
    free(s->pinned);
    s->keep = NULL;
    s->pinned = NULL;
  } else {
    pin_tokens(tokens, s);
  }
  free(x0);
  return PA_OK;
}

static int decode_images(pa_pipeline *p, const sample_ctx *s, int64_t *tokens, pa_gen_result *out) {
  pa_backend *be = p->be;
  int rc = PA_OK, f = pa_vqgan_factor(p->vqgan), H = s->h * f, W = s->w * f;
  pa_tensor *th = pa_tensor_wrap(PA_I64, 3, (const int64_t[]){s->B, s->h, s->w}, tokens), *td = NULL, *img = NULL, *ih = NULL;
  if (!th || !(td = pa_upload(be, th)) || !(img = pa_alloc_f32(be, 4, (int64_t)s->B, (int64_t)H, (int64_t)W, (int64_t)3))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_vqgan_decode_indices(p->vqgan, td, img));
  if (!(ih = pa_download(be, img)) || !(out->images = calloc((size_t)s->B, sizeof *out->images))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  for (int b = 0; b < s->B; b++) {
    PA_TRY(pa_image_new(W, H, &out->images[b]));
    out->n = b + 1;
    memcpy(out->images[b]->rgb, (float *)ih->data + (size_t)b * H * W * 3, (size_t)H * W * 3 * sizeof(float));
  }
fail:
  pa_tensor_free(th);
  pa_tensor_free(ih);
  pa_release(be, td);
  pa_release(be, img);
  return rc;
}

int pa_generate(pa_pipeline *p, const pa_gen_request *r, pa_gen_result *out) {
  memset(out, 0, sizeof *out);
  int rc = pa_gen_request_check(p, r);
  if (rc) return rc;
  int f = pa_vqgan_factor(p->vqgan);
  sample_ctx s = {.B = r->batch, .h = r->height / f, .w = r->width / f, .K = pa_paella_cfg(p->paella)->num_labels};
  int64_t n = (int64_t)s.h * s.w;
  int64_t *tokens = malloc((size_t)(s.B * n) * sizeof *tokens);
  s.init_noise = malloc((size_t)(s.B * n) * sizeof *s.init_noise);
  s.seeds = malloc((size_t)s.B * sizeof *s.seeds);
  if (!tokens || !s.init_noise || !s.seeds) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  for (int b = 0; b < s.B; b++) s.seeds[b] = r->seed + (uint64_t)b;
  s.progress = r->progress;
  s.progress_user = r->progress_user;
  double t0 = now_seconds();
  PA_TRY(build_conditions(p, r, &s));
  double t1 = now_seconds();
  pa_sampler_config sc;
  PA_TRY(prepare_tokens(p, r, &s, tokens, &sc));
  if (sc.steps > 0) PA_TRY(sample_tokens(p, r, &sc, &s, tokens));
  double t2 = now_seconds();
  PA_TRY(decode_images(p, &s, tokens, out));
  double t3 = now_seconds();
  out->seconds_prior = s.seconds_prior;
  out->seconds_encode = t1 - t0 - s.seconds_prior; /* tokenizers and text encoders */
  out->seconds_denoise = t2 - t1;
  out->seconds_decode = t3 - t2;
  out->tokens = tokens;
  out->grid_h = s.h;
  out->grid_w = s.w;
  tokens = NULL;
fail:
  if (rc) pa_gen_result_free(out);
  free(tokens);
  free(s.init_noise);
  free(s.seeds);
  free(s.pinned);
  free(s.keep);
  pa_paella_cond_free(p->paella, s.cond);
  pa_paella_cond_free(p->paella, s.cond2);
  pa_paella_cond_free(p->paella, s.uncond);
  pa_release(p->be, s.attn_w);
  return rc;
}

/* ---- batches of requests ----------------------------------------------------------------- */

static bool same_sampler(const pa_sampler_config *a, const pa_sampler_config *b) {
  return a->steps == b->steps && a->t_start == b->t_start && a->t_end == b->t_end && a->temp[0] == b->temp[0] &&
         a->temp[1] == b->temp[1] && a->cfg[0] == b->cfg[0] && a->cfg[1] == b->cfg[1] &&
         a->renoise_steps == b->renoise_steps && a->cond_steps == b->cond_steps && a->mode == b->mode &&
         a->typical_mass == b->typical_mass && a->typical_min_tokens == b->typical_min_tokens;
}

static bool plain_txt2img(const pa_gen_request *r) {
  return r->mode == PA_GEN_TXT2IMG && r->regions == PA_REGIONS_NONE && !r->interpolate && r->attn_weight[0] == 1 &&
         r->attn_weight[1] == 1 && r->attn_weight[2] == 1;
}

static const char *negative_of(const pa_gen_request *r) { return r->negative_prompt ? r->negative_prompt : ""; }

/* Requests that can share every forward: the same shapes everywhere (no padding, which would
 * change their images) and the same schedules. */
static bool batchable(const pa_gen_request *a, const pa_gen_request *b) {
  return plain_txt2img(a) && plain_txt2img(b) && a->width == b->width && a->height == b->height &&
         same_sampler(&a->sampler, &b->sampler) && a->prior_steps == b->prior_steps &&
         a->prior_cfg == b->prior_cfg && a->prior_ddim == b->prior_ddim &&
         byt5_length(a->prompt) == byt5_length(b->prompt) &&
         byt5_length(negative_of(a)) == byt5_length(negative_of(b));
}

/* Denoising progress of a group: every request hears each step; any of them can cancel. */
typedef struct {
  const pa_gen_request *reqs;
  int n;
} group_progress;

static bool group_step(void *user, const char *stage, int step, int total) {
  const group_progress *g = user;
  bool go_on = true;
  for (int i = 0; i < g->n; i++)
    if (g->reqs[i].progress && !g->reqs[i].progress(g->reqs[i].progress_user, stage, step, total)) go_on = false;
  return go_on;
}

/* Conditions of a group: each request's texts and prior, stacked image by image. */
static int group_conditions(pa_pipeline *p, const pa_gen_request *reqs, int n, sample_ctx *s) {
  int rc = PA_OK, reps[PA_GEN_MAX_GROUP] = {0};
  text_embed te[PA_GEN_MAX_GROUP] = {{0}}, un[PA_GEN_MAX_GROUP] = {{0}};
  pa_tensor *ci[PA_GEN_MAX_GROUP] = {0};
  for (int i = 0; i < n; i++) {
    reps[i] = reqs[i].batch;
    PA_TRY(embed_text(p, reqs[i].prompt, 0, &te[i]));
    PA_TRY(embed_text(p, negative_of(&reqs[i]), 0, &un[i]));
    double t0 = now_seconds();
    PA_TRY(image_condition(p, &reqs[i], te[i].clip, &ci[i]));
    s->seconds_prior += now_seconds() - t0;
  }
  PA_TRY(make_cond(p, te, ci[0] ? (const pa_tensor *const *)ci : NULL, reps, n, &s->cond));
  PA_TRY(make_cond(p, un, NULL, reps, n, &s->uncond));
fail:
  for (int i = 0; i < n; i++) {
    text_embed_free(&te[i]);
    text_embed_free(&un[i]);
    pa_tensor_free(ci[i]);
  }
  return rc;
}

/* Hands image rows [first, first + r->batch) of a finished batch to one request's result. */
static int split_result(pa_gen_result *all, int first, const pa_gen_request *r, double share, pa_gen_result *out) {
  int64_t n = (int64_t)all->grid_h * all->grid_w;
  memset(out, 0, sizeof *out);
  out->images = calloc((size_t)r->batch, sizeof *out->images);
  out->tokens = malloc((size_t)(r->batch * n) * sizeof *out->tokens);
  if (!out->images || !out->tokens) {
    pa_gen_result_free(out);
    return pa_fail(PA_ERR_NOMEM, "out of memory");
  }
  for (int b = 0; b < r->batch; b++) {
    out->images[b] = all->images[first + b];
    all->images[first + b] = NULL;
  }
  out->n = r->batch;
  memcpy(out->tokens, all->tokens + first * n, (size_t)(r->batch * n) * sizeof *out->tokens);
  out->grid_h = all->grid_h;
  out->grid_w = all->grid_w;
  out->seconds_encode = all->seconds_encode * share;
  out->seconds_prior = all->seconds_prior * share;
  out->seconds_denoise = all->seconds_denoise * share;
  out->seconds_decode = all->seconds_decode * share;
  return PA_OK;
}

/* n >= 2 batchable, valid requests as one batch; out[i] all filled, or none on failure. */
static int generate_group(pa_pipeline *p, const pa_gen_request *reqs, int n, pa_gen_result *out) {
  int f = pa_vqgan_factor(p->vqgan), rc = PA_OK, B = 0;
  for (int i = 0; i < n; i++) B += reqs[i].batch;
  group_progress gp = {reqs, n};
  sample_ctx s = {.B = B, .h = reqs[0].height / f, .w = reqs[0].width / f,
                  .K = pa_paella_cfg(p->paella)->num_labels, .progress = group_step, .progress_user = &gp};
  int64_t np = (int64_t)s.h * s.w;
  pa_gen_result all = {0};
  int64_t *tokens = malloc((size_t)(B * np) * sizeof *tokens);
  s.init_noise = malloc((size_t)(B * np) * sizeof *s.init_noise);
  s.seeds = malloc((size_t)B * sizeof *s.seeds);
  if (!tokens || !s.init_noise || !s.seeds) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  for (int i = 0, k = 0; i < n; i++)
    for (int b = 0; b < reqs[i].batch; b++) s.seeds[k++] = reqs[i].seed + (uint64_t)b;
  double t0 = now_seconds();
  PA_TRY(group_conditions(p, reqs, n, &s));
  double t1 = now_seconds();
  pa_sampler_config sc;
  PA_TRY(prepare_tokens(p, &reqs[0], &s, tokens, &sc));
  if (sc.steps > 0) PA_TRY(sample_tokens(p, &reqs[0], &sc, &s, tokens));
  double t2 = now_seconds();
  PA_TRY(decode_images(p, &s, tokens, &all));
  all.tokens = tokens;
  tokens = NULL;
  all.grid_h = s.h;
  all.grid_w = s.w;
  all.seconds_prior = s.seconds_prior;
  all.seconds_encode = t1 - t0 - s.seconds_prior;
  all.seconds_denoise = t2 - t1;
  all.seconds_decode = now_seconds() - t2;
  for (int i = 0, first = 0; i < n; first += reqs[i].batch, i++) {
    if ((rc = split_result(&all, first, &reqs[i], (double)reqs[i].batch / B, &out[i]))) {
      for (int k = 0; k < i; k++) pa_gen_result_free(&out[k]);
      goto fail;
    }
  }
fail:
  pa_gen_result_free(&all);
  free(tokens);
  free(s.init_noise);
  free(s.seeds);
  pa_paella_cond_free(p->paella, s.cond);
  pa_paella_cond_free(p->paella, s.uncond);
  return rc;
}

/* The end of the run of batchable requests starting at `start`. */
static int group_end(const pa_pipeline *p, const pa_gen_request *reqs, int n, int start) {
  int end = start + 1, images = reqs[start].batch;
  if (pa_gen_request_check(p, &reqs[start])) return end;
  while (end < n && end - start < PA_GEN_MAX_GROUP && images + reqs[end].batch <= 64 &&
         pa_gen_request_check(p, &reqs[end]) == PA_OK && batchable(&reqs[start], &reqs[end]))
    images += reqs[end++].batch;
  return end;
}

int pa_generate_many(pa_pipeline *p, const pa_gen_request *reqs, int n, pa_gen_result *out, int *failed) {
  *failed = -1;
  for (int i = 0; i < n;) {
    int end = group_end(p, reqs, n, i);
    /* a group that fails (one of its requests was canceled, say) runs again one by one, so
     * that the failure is charged to the right request and the others still finish */
    if (end - i >= 2 && generate_group(p, reqs + i, end - i, out + i) == PA_OK) {
      i = end;
      continue;
    }
    for (; i < end; i++) {
      int rc = pa_generate(p, &reqs[i], &out[i]);
      if (rc) {
        *failed = i;
        return rc;
      }
    }
  }
  return PA_OK;
}

void pa_gen_result_free(pa_gen_result *r) {
  for (int i = 0; r->images && i < r->n; i++) pa_image_free(r->images[i]);
  free(r->images);
  free(r->tokens);
  memset(r, 0, sizeof *r);
}
