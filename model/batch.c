/* Grouped requests (a worker's claimed batch): the one batching policy (pa_gen_batchable)
 * and pa_generate_many, which runs each run of batchable requests as one batch through the
 * same denoising loop as pa_generate. */
#include <stdlib.h>
#include <string.h>

#include "model/pipeline_internal.h"

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

/* Requests that can share every forward: the same token grid and schedules. Prompt lengths
 * may differ: shorter conditioning rows are padded and masked (pa_paella_cond_stack). */
bool pa_gen_batchable(const pa_gen_request *a, const pa_gen_request *b) {
  return plain_txt2img(a) && plain_txt2img(b) && !a->preview_every && !b->preview_every && a->width == b->width &&
         a->height == b->height &&
         same_sampler(&a->sampler, &b->sampler) && a->prior_steps == b->prior_steps &&
         a->prior_cfg == b->prior_cfg && a->prior_ddim == b->prior_ddim;
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

/* Conditions of a group: each request's texts and prior, stacked image by image (rows of
 * different prompt lengths are padded and masked, so each request sees only its own keys). */
static int group_conditions(pa_pipeline *p, const pa_gen_request *reqs, int n, sample_ctx *s) {
  int rc = PA_OK;
  text_embed te = {0}, un = {0};
  pa_tensor *ci = NULL;
  pa_paella_cond *conds[PA_GEN_MAX_GROUP] = {0}, *unconds[PA_GEN_MAX_GROUP] = {0};
  for (int i = 0; i < n; i++) {
    PA_TRY(pl_embed_text(p, reqs[i].prompt, &te));
    PA_TRY(pl_embed_text(p, negative_of(&reqs[i]), &un));
    double t0 = pl_now();
    PA_TRY(pl_image_condition(p, &reqs[i], te.clip, &ci));
    s->seconds_prior += pl_now() - t0;
    const pa_tensor *cip = ci;
    PA_TRY(pl_make_cond(p, &te, ci ? &cip : NULL, &reqs[i].batch, 1, &conds[i]));
    PA_TRY(pl_make_cond(p, &un, NULL, &reqs[i].batch, 1, &unconds[i]));
    pl_text_embed_free(&te);
    pl_text_embed_free(&un);
    pa_tensor_free(ci);
    ci = NULL;
  }
  PA_TRY(pa_paella_cond_stack(p->paella, conds, n, &s->cond));
  PA_TRY(pa_paella_cond_stack(p->paella, unconds, n, &s->uncond));
fail:
  pl_text_embed_free(&te);
  pl_text_embed_free(&un);
  pa_tensor_free(ci);
  for (int i = 0; i < n; i++) {
    pa_paella_cond_free(p->paella, conds[i]);
    pa_paella_cond_free(p->paella, unconds[i]);
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
  double t0 = pl_now();
  PA_TRY(group_conditions(p, reqs, n, &s));
  double t1 = pl_now();
  pa_sampler_config sc;
  PA_TRY(pl_prepare_tokens(p, &reqs[0], &s, tokens, &sc));
  if (sc.steps > 0) PA_TRY(pl_sample_tokens(p, &reqs[0], &sc, &s, tokens));
  double t2 = pl_now();
  PA_TRY(pl_decode_images(p, &s, tokens, &all));
  all.tokens = tokens;
  tokens = NULL;
  all.grid_h = s.h;
  all.grid_w = s.w;
  all.seconds_prior = s.seconds_prior;
  all.seconds_encode = t1 - t0 - s.seconds_prior;
  all.seconds_denoise = t2 - t1;
  all.seconds_decode = pl_now() - t2;
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
         pa_gen_request_check(p, &reqs[end]) == PA_OK && pa_gen_batchable(&reqs[start], &reqs[end]))
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

