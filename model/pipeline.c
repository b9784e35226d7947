#include "model/pipeline.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
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
#include "model/pipeline_internal.h"


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

static void hex_digest(const unsigned char *md, char hex[65]) {
  for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* SHA-256 of a file, read in 4 MiB pieces. */
static int sha256_file(const char *path, char hex[65]) {
  FILE *f = fopen(path, "rb");
  if (!f) return pa_fail(PA_ERR_IO, "%s: %s", path, strerror(errno));
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char *buf = malloc(4u << 20), md[32];
  unsigned len = 0;
  int rc = ctx && buf && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ? PA_OK : pa_fail(PA_ERR_NOMEM, "out of memory");
  for (size_t n; !rc && (n = fread(buf, 1, 4u << 20, f)) > 0;)
    if (!EVP_DigestUpdate(ctx, buf, n)) rc = pa_fail(PA_ERR_IO, "%s: SHA-256 failed", path);
  if (!rc && ferror(f)) rc = pa_fail(PA_ERR_IO, "%s: read error", path);
  if (!rc && !EVP_DigestFinal_ex(ctx, md, &len)) rc = pa_fail(PA_ERR_IO, "%s: SHA-256 failed", path);
  if (!rc) hex_digest(md, hex);
  EVP_MD_CTX_free(ctx);
  free(buf);
  fclose(f);
  return rc;
}

/* The checksums object (pa_pipeline_checksums): names in the order of the weights below. */
static int compute_checksums(pa_pipeline *p, bool embedded, bool random_weights) {
  static const char *const names[5] = {"byt5", "clip", "prior", "vqgan", "paella"};
  const pa_weights *ws[5] = {p->w_t5, p->w_clip, p->w_prior, p->w_vqgan, p->w_paella};
  char hex[5][65];
  pa_default_blob blobs[5];
  pa_default_model_blobs(blobs);
  for (int i = 0; i < 5; i++) {
    unsigned char md[32];
    unsigned len = 0;
    if (random_weights) snprintf(hex[i], sizeof hex[i], "random");
    else if (!embedded) {
      int rc = sha256_file(pa_weights_source(ws[i]), hex[i]);
      if (rc) return rc;
    } else if (EVP_Digest(blobs[i].start, (size_t)(blobs[i].end - blobs[i].start), md, &len, EVP_sha256(), NULL))
      hex_digest(md, hex[i]);
    else return pa_fail(PA_ERR_NOMEM, "SHA-256 failed");
  }
  json_t *o = json_object();
  for (int i = 0; o && i < 5; i++) json_object_set_new(o, names[i], json_string(hex[i]));
  p->checksums = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  json_decref(o);
  return p->checksums ? PA_OK : pa_fail(PA_ERR_NOMEM, "out of memory");
}

const char *pa_pipeline_checksums(const pa_pipeline *p) { return p->checksums; }

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
  PA_TRY(compute_checksums(p, !(o->models_dir && o->models_dir[0]), o->random_weights && !(o->models_dir && o->models_dir[0])));
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
  free(p->checksums);
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

/* ---- token sampling ---------------------------------------------------------------------- */

double pl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void pin_tokens(int64_t *tokens, const sample_ctx *s) {
  if (!s->pinned) return;
  int64_t n = (int64_t)s->h * s->w;
  for (int b = 0; b < s->B; b++)
    for (int64_t q = 0; q < n; q++)
      if (s->keep[q]) tokens[b * n + q] = s->pinned[b * n + q];
}

bool pa_throttle_take(pa_throttle *t, double now) {
  if (t->taken && now - t->last < t->interval) return false;
  t->taken = true;
  t->last = now;
  return true;
}

static bool preview_due(void *user, int step, int total) {
  (void)step, (void)total;
  preview_ctx *c = user;
  return pa_throttle_take(&c->throttle, pl_now());
}

/* Image 0 of the batch from the current tokens: a VQGAN decode on the backend, one read of
 * its pixels, a bilinear downscale on the host. */
static int preview_show(void *user, int step, int total, const pa_tensor *tokens) {
  preview_ctx *c = user;
  pa_backend *be = c->p->be;
  int f = pa_vqgan_factor(c->p->vqgan), h = (int)tokens->shape[1], w = (int)tokens->shape[2], rc = PA_OK;
  int H = h * f, W = w * f, side = c->r->preview_max_side, pw = W, ph = H;
  if (side > 0 && (W > side || H > side)) {
    pw = W >= H ? side : (W * side + H / 2) / H;
    ph = H >= W ? side : (H * side + W / 2) / W;
  }
  pa_tensor first = pa_view_rows(tokens, 0, 1);
  pa_tensor *img = pa_alloc_f32(be, 4, (int64_t)1, (int64_t)H, (int64_t)W, (int64_t)3), *ih = NULL; /* (1, H, W, 3) */
  pa_image *full = NULL, *small = NULL;
  if (!img) return PA_ERR_NOMEM;
  PA_TRY(pa_vqgan_decode_indices(c->p->vqgan, &first, img));
  if (!(ih = pa_download(be, img))) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(pa_image_new(W, H, &full));
  memcpy(full->rgb, ih->data, (size_t)H * W * 3 * sizeof(float));
  if (pw != W || ph != H) PA_TRY(pa_image_resize(full, pw, ph, &small));
  c->r->preview(c->r->preview_user, step, total, small ? small : full);
fail:
  pa_image_free(full);
  pa_image_free(small);
  pa_tensor_free(ih);
  pa_release(be, img);
  return rc;
}

/* The v3 loop on the backend (model/denoise.c) over the prepared conditions and tokens. */
int pl_sample_tokens(pa_pipeline *p, const pa_gen_request *r, const pa_sampler_config *sc,
                         sample_ctx *s, int64_t *tokens) {
  preview_ctx pc = {.p = p, .r = r, .throttle = {.interval = r->preview_interval}};
  pa_denoise_job j = {
      .B = s->B, .h = s->h, .w = s->w, .sampler = *sc, .cond = s->cond, .cond2 = s->cond2,
      .uncond = s->uncond,
      .regions = r->regions == PA_REGIONS_TOP_BOTTOM ? PA_SAMPLE_REGIONS_TOP_BOTTOM : PA_SAMPLE_REGIONS_LEFT_RIGHT,
      .attn_weights = s->attn_w, .n_attn = s->n_attn, .seeds = s->seeds, .start = tokens,
      .init = s->init_noise, .pinned = s->pinned, .keep = s->keep, .progress = s->progress,
      .progress_user = s->progress_user, .forwards = &p->forwards};
  if (r->preview_every > 0 && r->preview)
    j.preview = (pa_preview_hook){.every = r->preview_every, .due = preview_due, .show = preview_show, .user = &pc};
  return pa_denoise(p->paella, &j, tokens);
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

/* Weights per conditioning token: [byt5 x L | clip x seq | clip_image x seq]. */
static int attn_weights(pa_pipeline *p, const pa_gen_request *r, int L, bool with_image, sample_ctx *s) {
  if (r->attn_weight[0] == 1 && r->attn_weight[1] == 1 && r->attn_weight[2] == 1) return PA_OK;
  int seq = pa_paella_cfg(p->paella)->clip_seq_len, n = L + seq + (with_image ? seq : 0);
  if (!(s->attn_w = malloc((size_t)n * sizeof *s->attn_w))) return pa_fail(PA_ERR_NOMEM, "out of memory");
  for (int i = 0; i < n; i++) s->attn_w[i] = r->attn_weight[i < L ? 0 : (i < L + seq ? 1 : 2)];
  s->n_attn = n;
  return PA_OK;
}

/* Conditions of the request: main (maybe interpolated), second region, unconditional. */
static int build_conditions(pa_pipeline *p, const pa_gen_request *r, sample_ctx *s) {
  int rc = PA_OK;
  text_embed ab[2] = {{0}}, u = {0}, *a = &ab[0], *b = &ab[1];
  pa_tensor *ci_a = NULL, *ci_b = NULL;
  /* interpolation: both prompts padded to the same ByT5 length, as in a training batch */
  PA_TRY(pl_embed_texts(p, (const char *const[]){r->prompt, r->prompt2}, r->interpolate ? 2 : 1, ab));
  double t0 = pl_now();
  PA_TRY(pl_image_condition(p, r, a->clip, &ci_a));
  s->seconds_prior += pl_now() - t0;
  if (r->prompt2 && (r->interpolate || r->regions != PA_REGIONS_NONE)) {
    if (!r->interpolate) PA_TRY(pl_embed_text(p, r->prompt2, b));
    t0 = pl_now();
    PA_TRY(pl_image_condition(p, r, b->clip, &ci_b));
    s->seconds_prior += pl_now() - t0;
  }
  if (r->interpolate) {
    pl_mix(a->byt5->data, a->byt5->data, b->byt5->data, pa_numel(a->byt5), r->interp_t, r->slerp);
    pl_mix(a->clip->data, a->clip->data, b->clip->data, pa_numel(a->clip), r->interp_t, r->slerp);
    if (ci_a) pl_mix(ci_a->data, ci_a->data, ci_b->data, pa_numel(ci_a), r->interp_t, r->slerp);
  }
  const pa_tensor *cia = ci_a, *cib = ci_b;
  PA_TRY(pl_make_cond(p, a, &cia, &r->batch, 1, &s->cond));
  if (r->regions != PA_REGIONS_NONE) PA_TRY(pl_make_cond(p, b, &cib, &r->batch, 1, &s->cond2));
  PA_TRY(pl_embed_text(p, r->negative_prompt ? r->negative_prompt : "", &u));
  PA_TRY(pl_make_cond(p, &u, NULL, &r->batch, 1, &s->uncond)); /* upstream: clip_image None */
  PA_TRY(attn_weights(p, r, (int)a->byt5->shape[1], ci_a != NULL, s));
fail:
  pl_text_embed_free(a);
  pl_text_embed_free(b);
  pl_text_embed_free(&u);
  pa_tensor_free(ci_a);
  pa_tensor_free(ci_b);
  return rc;
}

/* Initial tokens and pinned regions for the mode. Returns the sampler config to run (img2img
 * runs round(steps * strength) steps from t_start = strength). */
int pl_prepare_tokens(pa_pipeline *p, const pa_gen_request *r, sample_ctx *s, int64_t *tokens,
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

int pl_decode_images(pa_pipeline *p, const sample_ctx *s, int64_t *tokens, pa_gen_result *out) {
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
  double t0 = pl_now();
  PA_TRY(build_conditions(p, r, &s));
  double t1 = pl_now();
  pa_sampler_config sc;
  PA_TRY(pl_prepare_tokens(p, r, &s, tokens, &sc));
  if (sc.steps > 0) PA_TRY(pl_sample_tokens(p, r, &sc, &s, tokens));
  double t2 = pl_now();
  PA_TRY(pl_decode_images(p, &s, tokens, out));
  double t3 = pl_now();
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
  free(s.attn_w);
  return rc;
}

void pa_gen_result_free(pa_gen_result *r) {
  for (int i = 0; r->images && i < r->n; i++) pa_image_free(r->images[i]);
  free(r->images);
  free(r->tokens);
  memset(r, 0, sizeof *r);
}
