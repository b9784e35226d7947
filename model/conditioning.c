/* Prompts and images -> Paella conditioning: tokenizers and text encoders (through the
 * embedding cache), the prior (or the CLIP image embedding for variations), interpolation
 * of two prompts' embeddings, and the conditioning rows of one or several requests. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/pipeline_internal.h"

void pl_text_embed_free(text_embed *e) {
  pa_tensor_free(e->byt5);
  pa_tensor_free(e->clip);
  e->byt5 = e->clip = NULL;
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

/* Texts embedded together: their ByT5 ids tokenized once, padded with 0 to the longest as a
 * training batch would be (interpolation mixes two prompts' states position by position). */
int pl_embed_texts(pa_pipeline *p, const char *const *texts, int n, text_embed *out) {
  int rc = PA_OK, L = 0;
  int64_t *ids = NULL;
  PA_TRY(pa_byt5_tokenize_batch(texts, NULL, n, BYT5_MAX_LEN, 0, &ids, &L));
  for (int i = 0; i < n; i++) {
    PA_TRY(encode_byt5(p, ids + (size_t)i * L, L, &out[i].byt5));
    PA_TRY(encode_clip(p, texts[i], &out[i].clip));
  }
fail:
  for (int i = 0; rc && i < n; i++) pl_text_embed_free(&out[i]);
  free(ids);
  return rc;
}

int pl_embed_text(pa_pipeline *p, const char *text, text_embed *out) { return pl_embed_texts(p, &text, 1, out); }

/* out = (1-t)*a + t*b, or the spherical interpolation of the flattened vectors; both forms
 * return a exactly at t = 0 and b exactly at t = 1. */
void pl_mix(float *out, const float *a, const float *b, int64_t n, float t, bool slerp) {
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

/* The prior's sample for each image of the request (model/denoise.c): host (B, Dc). */
static int run_prior(pa_pipeline *p, const pa_gen_request *r, const pa_tensor *clip_text, pa_tensor **out) {
  int rc = PA_OK, B = r->batch, D = pa_prior_cfg(p->prior)->clip_r;
  uint64_t *seeds = malloc((size_t)B * sizeof *seeds);
  pa_tensor *x = pa_tensor_new_2d(PA_F32, B, D);
  if (!seeds || !x) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  for (int b = 0; b < B; b++) seeds[b] = r->seed + (uint64_t)b;
  pa_prior_job j = {.B = B, .steps = r->prior_steps, .cfg = r->prior_cfg, .ddim = r->prior_ddim, .seeds = seeds,
                    .clip_text = clip_text->data, .progress = r->progress, .progress_user = r->progress_user};
  PA_TRY(pa_prior_sample(p->prior, &j, x->data));
  *out = x;
  x = NULL;
fail:
  free(seeds);
  pa_tensor_free(x);
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
int pl_make_cond(pa_pipeline *p, const text_embed *te, const pa_tensor *const *ci, const int *reps, int n,
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
int pl_image_condition(pa_pipeline *p, const pa_gen_request *r, const pa_tensor *clip_text, pa_tensor **out) {
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

