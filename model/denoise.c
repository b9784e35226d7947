/* The denoising loop (model/denoise.h). Everything the steps touch is prepared before the
 * first one: the stacked conditioning rows, the noise levels of all steps (r-embeddings and
 * timestep modulations, pa_paella_time), the tokens, noise, seeds, pins and key weights on the
 * backend. A step is one forward and one sampler
 * call over backend tensors (plus device copies of the tokens into the other row groups). */
#include "model/denoise.h"

#include <stdlib.h>
#include <string.h>

#include "model/nn.h"

/* State of one run: host schedules and the backend tensors the steps read and write. */
typedef struct {
  pa_backend *be;
  int B, R, groups; /* rows R = B * groups: [cond | cond2 | uncond] */
  int64_t n;
  float *t_list, *temps, *cfgs;
  pa_paella_cond *rows;   /* all R rows (owned when stacked) */
  pa_paella_cond *unguided; /* rows without the unconditional part (a view), or NULL */
  bool owns_rows;
  pa_paella_time *time; /* noise level of step i at index i */
  pa_tensor *x;       /* (R, h, w) I64: rows [0, B) are the tokens, the other groups copies */
  pa_tensor *logits;  /* (R, h, w, K) */
  pa_tensor *init, *pinned, *keep, *seeds, *attn_w;
  pa_paella_cond *uncond; /* the job's, or NULL when no step is guided */
} loop_state;

static void state_free(pa_paella *m, loop_state *s) {
  free(s->t_list);
  free(s->temps);
  free(s->cfgs);
  pa_paella_cond_free(m, s->unguided);
  pa_paella_time_free(m, s->time);
  if (s->owns_rows) pa_paella_cond_free(m, s->rows);
  pa_tensor *ts[] = {s->x, s->logits, s->init, s->pinned, s->keep, s->seeds, s->attn_w};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_release(s->be, ts[i]);
}

/* Uploads a host array as a new backend tensor (NULL data gives NULL, not an error). */
static int upload_array(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape, const void *data,
                        pa_tensor **out) {
  *out = NULL;
  if (!data) return PA_OK;
  pa_tensor *h = pa_tensor_wrap(dt, ndim, shape, (void *)data);
  *out = h ? pa_upload(be, h) : NULL;
  pa_tensor_free(h);
  return *out ? PA_OK : PA_ERR_NOMEM;
}

/* The conditioning rows: the parts stacked (padded, masked) into one batch. */
static int stack_rows(pa_paella *m, const pa_denoise_job *j, loop_state *s) {
  pa_paella_cond *parts[3];
  int n = 0;
  parts[n++] = j->cond;
  if (j->cond2) parts[n++] = j->cond2;
  if (s->uncond) parts[n++] = s->uncond;
  s->groups = n;
  s->R = j->B * n;
  if (n == 1) {
    s->rows = j->cond;
    return PA_OK;
  }
  int rc = pa_paella_cond_stack(m, parts, n, &s->rows);
  if (rc) return rc;
  s->owns_rows = true;
  return s->uncond ? pa_paella_cond_rows(s->rows, 0, s->R - j->B, &s->unguided) : PA_OK;
}

/* Key weights per row: the request's on the conditional and second-region rows, ones on the
 * unconditional rows (a weight of 1 changes nothing, as no weights at all). */
static int key_weights(const pa_denoise_job *j, loop_state *s) {
  if (!j->attn_weights) return PA_OK;
  int64_t shape[2] = {s->R, j->n_attn};
  float *w = malloc((size_t)(s->R * j->n_attn) * sizeof *w);
  if (!w) return pa_fail(PA_ERR_NOMEM, "out of memory");
  for (int r = 0; r < s->R; r++)
    for (int k = 0; k < j->n_attn; k++) w[r * j->n_attn + k] = s->uncond && r >= s->R - j->B ? 1.0f : j->attn_weights[k];
  int rc = upload_array(s->be, PA_F32, 2, shape, w, &s->attn_w);
  free(w);
  return rc;
}

static int prepare(pa_paella *m, const pa_denoise_job *j, loop_state *s) {
  int rc = PA_OK, steps = j->sampler.steps, K = pa_paella_cfg(m)->num_labels;
  s->be = pa_paella_backend(m);
  s->B = j->B;
  s->n = (int64_t)j->h * j->w;
  s->t_list = malloc((size_t)(steps + 1) * sizeof *s->t_list);
  s->temps = malloc((size_t)steps * sizeof *s->temps);
  s->cfgs = malloc((size_t)steps * sizeof *s->cfgs);
  if (!s->t_list || !s->temps || !s->cfgs) return pa_fail(PA_ERR_NOMEM, "out of memory");
  pa_sampler_schedules(&j->sampler, s->t_list, s->temps, s->cfgs);
  for (int i = 0; j->uncond && i < steps && i < j->sampler.cond_steps; i++)
    if (s->cfgs[i] != 1.0f) s->uncond = j->uncond; /* cfg 1 cancels the unconditional term exactly */
  PA_TRY(stack_rows(m, j, s));
  if (steps > 0) PA_TRY(pa_paella_time_new(m, s->t_list, steps, &s->time)); /* all steps' noise levels */
  PA_TRY(key_weights(j, s));
  int64_t B = j->B, n = s->n;
  PA_TRY(upload_array(s->be, PA_I64, 3, (const int64_t[]){B, j->h, j->w}, j->start, &s->x));
  PA_TRY(upload_array(s->be, PA_I64, 2, (const int64_t[]){B, n}, j->init, &s->init));
  PA_TRY(upload_array(s->be, PA_I64, 2, (const int64_t[]){B, n}, j->pinned, &s->pinned));
  PA_TRY(upload_array(s->be, PA_U8, 1, (const int64_t[]){n}, j->pinned ? j->keep : NULL, &s->keep));
  PA_TRY(upload_array(s->be, PA_I64, 1, (const int64_t[]){B}, j->seeds, &s->seeds));
  /* the token tensor grows to all R rows; rows [0, B) stay the state */
  pa_tensor *x_all = pa_alloc(s->be, PA_I64, 3, (const int64_t[]){s->R, j->h, j->w});
  if (!x_all) return PA_ERR_NOMEM;
  pa_tensor first = pa_view_rows(x_all, 0, B);
  rc = pa_copy(s->be, &first, s->x);
  pa_release(s->be, s->x);
  s->x = x_all;
  if (rc) return rc;
  if (!(s->logits = pa_alloc_f32(s->be, 4, (int64_t)s->R, (int64_t)j->h, (int64_t)j->w, (int64_t)K)))
    return PA_ERR_NOMEM;
fail:
  return rc;
}

/* Step i: the rows it runs (the unconditional ones only when guided), one forward, one
 * sampler call writing rows [0, B) of x. */
static int step(pa_paella *m, const pa_denoise_job *j, loop_state *s, int i) {
  pa_backend *be = s->be;
  int rc = PA_OK, B = s->B;
  bool guided = s->uncond && i < j->sampler.cond_steps && s->cfgs[i] != 1.0f;
  int rows = guided || !s->uncond ? s->R : s->R - B;
  pa_tensor tokens = pa_view_rows(s->x, 0, B);
  for (int g = 1; g * B < rows; g++) {
    pa_tensor copy = pa_view_rows(s->x, (int64_t)g * B, (int64_t)(g + 1) * B);
    PA_TRY(pa_copy(be, &copy, &tokens));
  }
  pa_tensor x = pa_view_rows(s->x, 0, rows), lg = pa_view_rows(s->logits, 0, rows);
  pa_tensor aw = s->attn_w ? pa_view_rows(s->attn_w, 0, rows) : (pa_tensor){0};
  if (j->forwards) (*j->forwards)++;
  PA_TRY(pa_paella_forward_at(m, rows == s->R ? s->rows : s->unguided, &x, s->time, i, s->attn_w ? &aw : NULL, &lg));
  pa_tensor cond = pa_view_rows(s->logits, 0, B), cond2 = pa_view_rows(s->logits, B, 2 * (int64_t)B);
  pa_tensor uncond = pa_view_rows(s->logits, (int64_t)s->R - B, s->R);
  const pa_sampler_config *sc = &j->sampler;
  pa_sample_params sp = {
      .cond = &cond, .uncond = guided ? &uncond : NULL, .cond2 = j->cond2 ? &cond2 : NULL,
      .regions = j->cond2 ? j->regions : PA_SAMPLE_REGIONS_NONE, .cfg = s->cfgs[i], .temp = s->temps[i],
      .argmax = sc->mode == PA_SAMPLE_ARGMAX, .typical_mass = sc->typical_mass,
      .typical_min_tokens = sc->typical_min_tokens, .seeds = s->seeds, .step = i,
      .renoise = i < sc->renoise_steps, .renoise_t = s->t_list[i + 1], .init = s->init,
      .pinned = s->pinned, .keep = s->keep, .tokens = &tokens};
  PA_TRY(pa_sampler_step(be, &sp));
fail:
  return rc;
}

/* The preview hook after step `done` (1-based): rows [0, B) of x are the current tokens. */
static int preview(const pa_denoise_job *j, const loop_state *s, int done, int steps) {
  const pa_preview_hook *h = &j->preview;
  if (h->every <= 0 || !h->show || done % h->every != 0 || done == steps) return PA_OK;
  if (h->due && !h->due(h->user, done, steps)) return PA_OK;
  pa_tensor tokens = pa_view_rows(s->x, 0, s->B);
  return h->show(h->user, done, steps, &tokens);
}

int pa_denoise(pa_paella *m, const pa_denoise_job *j, int64_t *tokens) {
  loop_state s = {0};
  int rc = PA_OK, steps = j->sampler.steps;
  if (j->B < 1 || !j->cond || !j->seeds || !j->start || !j->init || (j->pinned && !j->keep))
    return pa_fail(PA_ERR_INVALID, "denoise: a job needs B >= 1, conditioning, seeds, start tokens and noise");
  PA_TRY(prepare(m, j, &s));
  for (int i = 0; i < steps; i++) {
    PA_TRY(step(m, j, &s, i));
    PA_TRY(preview(j, &s, i + 1, steps));
    if (j->progress && !j->progress(j->progress_user, "denoise", i + 1, steps)) {
      rc = pa_fail(PA_ERR_CANCELED, "canceled at denoising step %d of %d", i + 1, steps);
      goto fail;
    }
  }
  pa_tensor out = pa_view_rows(s.x, 0, j->B), *host = pa_tensor_wrap(PA_I64, 3, out.shape, tokens);
  rc = host ? s.be->to_host(s.be, host, &out) : PA_ERR_NOMEM;
  pa_tensor_free(host);
fail:
  state_free(m, &s);
  return rc;
}

/* ---- the prior ------------------------------------------------------------------------------ */

typedef struct {
  pa_backend *be;
  float *r;              /* (steps + 2) noise levels */
  pa_tensor *x;          /* (2B, D): rows [0, B) the state, [B, 2B) its copy for the uncond rows */
  pa_tensor *c, *re, *z; /* (2B, D) [text | zeros]; (steps * 2B, c_r); (steps * B, D) or NULL */
  pa_tensor *pred;       /* (2B, D) */
} prior_state;

static void prior_state_free(prior_state *s) {
  free(s->r);
  pa_tensor *ts[] = {s->x, s->c, s->re, s->z, s->pred};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) pa_release(s->be, ts[i]);
}

/* Host arrays of the whole run, uploaded once: start noise, conditions, r-embeddings, z. */
static int prior_prepare(pa_prior *m, const pa_prior_job *j, prior_state *s) {
  int rc = PA_OK, B = j->B, T = j->steps, D = pa_prior_cfg(m)->clip_r;
  float *x = calloc((size_t)2 * B * D, sizeof *x), *c = calloc((size_t)2 * B * D, sizeof *c);
  float *rr = malloc((size_t)T * 2 * B * sizeof *rr), *z = j->ddim ? NULL : malloc((size_t)T * B * D * sizeof *z);
  pa_tensor *re = NULL;
  s->r = malloc((size_t)(T + 2) * sizeof *s->r);
  if (!x || !c || !rr || (!j->ddim && !z) || !s->r) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
    goto fail;
  }
  pa_linspace_f32(1.0f, 0.0f, T + 2, s->r);
  for (int b = 0; b < B; b++)
    for (int d = 0; d < D; d++) {
      x[b * D + d] = pa_rng_normal(j->seeds[b], PA_RNG_PRIOR, 0, (uint32_t)d);
      c[b * D + d] = j->clip_text[d];
      for (int i = 0; z && i < T; i++)
        z[((size_t)i * B + b) * D + d] = pa_rng_normal(j->seeds[b], PA_RNG_PRIOR, (uint32_t)(i + 1), (uint32_t)d);
    }
  for (int i = 0; i < T; i++)
    for (int k = 0; k < 2 * B; k++) rr[i * 2 * B + k] = s->r[i + 1];
  if (!(re = pa_r_embedding(rr, T * 2 * B, pa_prior_cfg(m)->c_r))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(upload_array(s->be, PA_F32, 2, (const int64_t[]){2 * B, D}, x, &s->x));
  PA_TRY(upload_array(s->be, PA_F32, 2, (const int64_t[]){2 * B, D}, c, &s->c));
  PA_TRY(upload_array(s->be, PA_F32, 2, re->shape, re->data, &s->re));
  PA_TRY(upload_array(s->be, PA_F32, 2, (const int64_t[]){(int64_t)T * B, D}, z, &s->z));
  if (!(s->pred = pa_alloc_f32(s->be, 2, (int64_t)2 * B, (int64_t)D))) rc = PA_ERR_NOMEM;
fail:
  free(x), free(c), free(rr), free(z);
  pa_tensor_free(re);
  return rc;
}

int pa_prior_sample(pa_prior *m, const pa_prior_job *j, float *out) {
  prior_state s = {.be = pa_prior_backend(m)};
  int rc = PA_OK, B = j->B, D = pa_prior_cfg(m)->clip_r;
  PA_TRY(prior_prepare(m, j, &s));
  pa_tensor x = pa_view_rows(s.x, 0, B), copy = pa_view_rows(s.x, B, 2 * (int64_t)B);
  pa_tensor ec = pa_view_rows(s.pred, 0, B), eu = pa_view_rows(s.pred, B, 2 * (int64_t)B);
  for (int i = 0; i < j->steps; i++) {
    pa_tensor re = pa_view_rows(s.re, (int64_t)i * 2 * B, (int64_t)(i + 1) * 2 * B);
    pa_tensor z = s.z ? pa_view_rows(s.z, (int64_t)i * B, (int64_t)(i + 1) * B) : (pa_tensor){0};
    PA_TRY(pa_copy(s.be, &copy, &x));
    PA_TRY(pa_prior_forward_embedded(m, s.x, &re, s.c, s.pred));
    pa_diffuzz_params dp = pa_diffuzz_at(s.r[i + 1], s.r[i + 2], j->ddim, j->cfg);
    PA_TRY(pa_diffuzz_step(s.be, &x, &ec, &eu, s.z ? &z : NULL, &dp));
    if (j->progress && !j->progress(j->progress_user, "prior", i + 1, j->steps)) {
      rc = pa_fail(PA_ERR_CANCELED, "canceled during the prior (step %d of %d)", i + 1, j->steps);
      goto fail;
    }
  }
  pa_tensor *host = pa_tensor_wrap(PA_F32, 2, (const int64_t[]){B, D}, out);
  rc = host ? s.be->to_host(s.be, host, &x) : PA_ERR_NOMEM;
  pa_tensor_free(host);
fail:
  prior_state_free(&s);
  return rc;
}
