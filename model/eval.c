/* `paella eval`: runs one network on golden-convention inputs (see model/eval.h). */
#include "model/eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/clip.h"
#include "model/nn.h"
#include "model/paella.h"
#include "model/prior.h"
#include "model/t5.h"
#include "model/vqgan.h"

int pa_eval_outputs_add(pa_eval_outputs *o, const char *name, pa_tensor *t) {
  if (!t) return PA_ERR_NOMEM;
  if (o->n == o->cap) {
    int cap = o->cap ? 2 * o->cap : 16;
    pa_named_tensor *items = realloc(o->items, (size_t)cap * sizeof *items);
    if (!items) {
      pa_tensor_free(t);
      return pa_fail(PA_ERR_NOMEM, "out of memory");
    }
    o->items = items;
    o->cap = cap;
  }
  char *copy = strdup(name);
  if (!copy) {
    pa_tensor_free(t);
    return pa_fail(PA_ERR_NOMEM, "out of memory");
  }
  o->items[o->n++] = (pa_named_tensor){copy, t};
  return PA_OK;
}

void pa_eval_outputs_free(pa_eval_outputs *o) {
  for (int i = 0; i < o->n; i++) {
    free((char *)o->items[i].name);
    pa_tensor_free((pa_tensor *)o->items[i].tensor);
  }
  free(o->items);
  memset(o, 0, sizeof *o);
}

/* Downloads a device tensor; 4-d NHWC tensors become NCHW unless keep_nhwc. */
static int add_output(pa_backend *be, pa_eval_outputs *o, const char *name, const pa_tensor *t,
                      bool keep_nhwc) {
  pa_tensor *h = pa_download(be, t);
  if (!h) return PA_ERR_NOMEM;
  if (t->ndim == 4 && !keep_nhwc) {
    pa_tensor *n = pa_nhwc_to_nchw(h);
    pa_tensor_free(h);
    if (!n) return PA_ERR_NOMEM;
    h = n;
  }
  return pa_eval_outputs_add(o, name, h);
}

/* An optional float input uploaded to the device (NULL when absent). */
static int input_f32(pa_backend *be, pa_weights *w, const char *name, bool required, pa_tensor **out) {
  *out = NULL;
  if (!pa_weights_find(w, name)) {
    if (!required) return PA_OK;
    return pa_fail(PA_ERR_NOTFOUND, "%s: missing input '%s'", pa_weights_source(w), name);
  }
  const pa_tensor *t;
  int rc = pa_weights_get_any(w, &t, "%s", name);
  if (rc) return rc;
  *out = pa_upload(be, t);
  return *out ? PA_OK : PA_ERR_NOMEM;
}

static int input_i64(pa_weights *w, const char *name, const pa_tensor **out) {
  int rc = pa_weights_get_raw(w, out, "%s", name);
  if (rc) return rc;
  if ((*out)->dtype != PA_I64)
    return pa_fail(PA_ERR_SHAPE, "%s: input '%s' must be I64", pa_weights_source(w), name);
  return PA_OK;
}

/* Marks every in.* / out.* tensor used so only weights count as unexpected keys. */
static void skip_io_tensors(pa_weights *w) {
  for (int i = 0; i < pa_weights_count(w); i++) {
    const char *n = pa_weights_name(w, i);
    if (!strncmp(n, "in.", 3) || !strncmp(n, "out.", 4)) pa_weights_mark_used(w, n);
  }
}

/* Reads the configuration from the file's "config" metadata (from_json, which sees it as
 * `jcfg`) or, without metadata, from the tensor shapes (infer). Returns from the caller on
 * failure. */
#define LOAD_CONFIG(w, from_json, infer)               \
  do {                                                 \
    json_t *jcfg = pa_cfg_from_weights((w), &rc);      \
    if (rc) return rc;                                 \
    rc = jcfg ? (from_json) : (infer);                 \
    json_decref(jcfg);                                 \
    if (rc) return rc;                                 \
  } while (0)

typedef struct {
  pa_backend *be;
  pa_eval_outputs *out;
  int rc;
} debug_sink;

static void debug_hook(void *user, const char *name, const pa_tensor *t) {
  debug_sink *s = user;
  char full[96];
  snprintf(full, sizeof full, "out.dbg.%s", name);
  if (s->rc == PA_OK) s->rc = add_output(s->be, s->out, full, t, !strcmp(name, "in_mapper"));
}

static int eval_paella(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out) {
  int rc = PA_OK;
  pa_paella *m = NULL;
  pa_paella_cond *cond = NULL;
  pa_tensor *byt5 = NULL, *clip = NULL, *clip_image = NULL, *aw = NULL, *x = NULL, *logits = NULL;
  pa_paella_config cfg = pa_paella_default_config();
  LOAD_CONFIG(w, pa_paella_config_from_json(jcfg, &cfg), pa_paella_config_infer(w, &cfg));
  const pa_tensor *xh, *rh;
  PA_TRY(input_i64(w, "in.x", &xh));
  PA_TRY(pa_weights_get(w, &rh, 1, (const int64_t[]){xh->shape[0]}, "in.r"));
  PA_TRY(input_f32(be, w, "in.byt5", true, &byt5));
  PA_TRY(input_f32(be, w, "in.clip", false, &clip));
  PA_TRY(input_f32(be, w, "in.clip_image", false, &clip_image));
  PA_TRY(input_f32(be, w, "in.attn_weights", false, &aw));
  skip_io_tensors(w);
  PA_TRY(pa_paella_load(be, w, &cfg, &m));
  debug_sink sink = {be, out, PA_OK};
  if (debug) pa_paella_set_hook(m, debug_hook, &sink);
  if (!(x = pa_upload(be, xh))) goto nomem;
  PA_TRY(pa_paella_cond_new(m, byt5, clip, clip_image, &cond));
  logits = pa_alloc_f32(be, 4, xh->shape[0], xh->shape[1], xh->shape[2], (int64_t)cfg.num_labels);
  if (!logits) goto nomem;
  PA_TRY(pa_paella_forward(m, cond, x, rh->data, aw, logits));
  PA_TRY(sink.rc);
  PA_TRY(add_output(be, out, "out.logits", logits, false));
  PA_TRY(add_output(be, out, "out.c_embed", pa_paella_cond_embed(cond), false));
  PA_TRY(pa_eval_outputs_add(out, "out.r_embed", pa_r_embedding(rh->data, (int)rh->shape[0], cfg.c_r)));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  if (m) pa_paella_cond_free(m, cond);
  pa_paella_free(m);
  pa_release(be, byt5);
  pa_release(be, clip);
  pa_release(be, clip_image);
  pa_release(be, aw);
  pa_release(be, x);
  pa_release(be, logits);
  return rc;
}

/* vqgan: from in.image (B, 3, H, W) in [0, 1]: latents, indices and the three decodings;
 * from in.indices alone: out.decoded. */
static int eval_vqgan(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out) {
  int rc = PA_OK;
  pa_vqgan *m = NULL;
  pa_tensor *img_h = NULL, *img = NULL, *lat = NULL, *idx = NULL, *qe = NULL, *dec = NULL;
  pa_vqgan_config cfg = pa_vqgan_default_config();
  LOAD_CONFIG(w, pa_vqgan_config_from_json(jcfg, &cfg), pa_vqgan_config_infer(w, &cfg));
  const pa_tensor *image = pa_weights_find(w, "in.image"), *idx_in = pa_weights_find(w, "in.indices");
  skip_io_tensors(w);
  PA_TRY(pa_vqgan_load(be, w, &cfg, &m));
  debug_sink sink = {be, out, PA_OK};
  if (debug) pa_vqgan_set_hook(m, debug_hook, &sink);
  int f = pa_vqgan_factor(m);
  float sf = (float)cfg.scale_factor;
  if (image) {
    const pa_tensor *im;
    PA_TRY(pa_weights_get_any(w, &im, "in.image"));
    if (im->ndim != 4 || im->shape[1] != 3) {
      rc = pa_fail(PA_ERR_SHAPE, "in.image must be (B, 3, H, W)");
      goto fail;
    }
    int64_t B = im->shape[0], h = im->shape[2] / f, wd = im->shape[3] / f;
    if (!(img_h = pa_nchw_to_nhwc(im)) || !(img = pa_upload(be, img_h))) goto nomem;
    lat = pa_alloc_f32(be, 4, B, h, wd, (int64_t)cfg.c_latent);
    qe = pa_alloc_f32(be, 4, B, h, wd, (int64_t)cfg.c_latent);
    idx = pa_alloc(be, PA_I64, 3, (const int64_t[]){B, h, wd});
    dec = pa_alloc_f32(be, 4, B, h * f, wd * f, (int64_t)3);
    if (!lat || !qe || !idx || !dec) goto nomem;
    PA_TRY(pa_vqgan_encode(m, img, lat, idx));
    PA_TRY(add_output(be, out, "out.latent_unscaled", lat, false));
    PA_TRY(add_output(be, out, "out.indices", idx, false));
    PA_TRY(pa_vqgan_lookup(m, idx, qe));
    PA_TRY(add_output(be, out, "out.codebook_lookup", qe, false));
    pa_vqgan_set_hook(m, NULL, NULL); /* the goldens hook only decode_indices */
    PA_TRY(pa_vqgan_decode(m, lat, 1.0f, dec));
    PA_TRY(add_output(be, out, "out.decoded_continuous", dec, false));
    PA_TRY(pa_affine(be, lat, lat, 1.0f / sf, 0.0f)); /* encode()[1] = x / scale_factor */
    PA_TRY(add_output(be, out, "out.latent", lat, false));
    PA_TRY(pa_affine(be, qe, qe, 1.0f / sf, 0.0f)); /* encode()[0] = qe / scale_factor */
    PA_TRY(add_output(be, out, "out.qe", qe, false));
    PA_TRY(pa_vqgan_decode(m, qe, sf, dec));
    PA_TRY(add_output(be, out, "out.decoded_from_latent", dec, false));
    if (debug) pa_vqgan_set_hook(m, debug_hook, &sink);
  } else if (idx_in) {
    if (idx_in->dtype != PA_I64 || idx_in->ndim != 3) {
      rc = pa_fail(PA_ERR_SHAPE, "in.indices must be I64 (B, h, w)");
      goto fail;
    }
    if (!(idx = pa_upload(be, idx_in))) goto nomem;
    if (!(dec = pa_alloc_f32(be, 4, idx_in->shape[0], idx_in->shape[1] * f, idx_in->shape[2] * f, (int64_t)3))) goto nomem;
  } else {
    rc = pa_fail(PA_ERR_NOTFOUND, "%s: vqgan needs in.image or in.indices", pa_weights_source(w));
    goto fail;
  }
  PA_TRY(pa_vqgan_decode_indices(m, idx, dec));
  PA_TRY(sink.rc);
  PA_TRY(add_output(be, out, "out.decoded", dec, false));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_vqgan_free(m);
  pa_tensor_free(img_h);
  pa_release(be, img);
  pa_release(be, lat);
  pa_release(be, qe);
  pa_release(be, idx);
  pa_release(be, dec);
  return rc;
}

/* Optional host-side schedule checks of the prior file (in.sched_t, in.step_*). */
static int eval_diffuzz(pa_weights *w, pa_eval_outputs *out) {
  int rc = PA_OK;
  const pa_tensor *st = pa_weights_find(w, "in.sched_t");
  if (st) {
    PA_TRY(pa_weights_get_any(w, &st, "in.sched_t"));
    pa_tensor *ac = pa_tensor_new(PA_F32, 1, st->shape);
    if (!ac) return PA_ERR_NOMEM;
    for (int64_t i = 0; i < pa_numel(st); i++)
      ((float *)ac->data)[i] = (float)pa_diffuzz_alpha_cumprod(((const float *)st->data)[i]);
    PA_TRY(pa_eval_outputs_add(out, "out.alpha_cumprod", ac));
  }
  if (!pa_weights_find(w, "in.step_x")) return PA_OK;
  const pa_tensor *x, *eps, *z, *t, *tp;
  PA_TRY(pa_weights_get_any(w, &x, "in.step_x"));
  int B = (int)x->shape[0], D = (int)pa_numel(x) / B;
  PA_TRY(pa_weights_get(w, &eps, x->ndim, x->shape, "in.step_noise"));
  PA_TRY(pa_weights_get(w, &z, x->ndim, x->shape, "in.step_z"));
  PA_TRY(pa_weights_get(w, &t, 1, (const int64_t[]){B}, "in.step_t"));
  PA_TRY(pa_weights_get(w, &tp, 1, (const int64_t[]){B}, "in.step_t_prev"));
  pa_tensor *ddpm = pa_tensor_new_like(x), *ddim = pa_tensor_new_like(x), *dif = pa_tensor_new_like(x);
  if (!ddpm || !ddim || !dif) {
    pa_tensor_free(ddpm);
    pa_tensor_free(ddim);
    pa_tensor_free(dif);
    return PA_ERR_NOMEM;
  }
  pa_diffuzz_ddpm_step(ddpm->data, x->data, eps->data, z->data, t->data, tp->data, B, D);
  pa_diffuzz_ddim_step(ddim->data, x->data, eps->data, t->data, tp->data, B, D);
  pa_diffuzz_diffuse(dif->data, x->data, eps->data, t->data, B, D);
  PA_TRY(pa_eval_outputs_add(out, "out.ddpm_step", ddpm));
  PA_TRY(pa_eval_outputs_add(out, "out.ddim_step", ddim));
  PA_TRY(pa_eval_outputs_add(out, "out.diffuse", dif));
fail:
  return rc;
}

/* prior: out.pred (and out.r_embed) from in.x, in.r, in.c, plus the schedule pieces. */
static int eval_prior(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out) {
  int rc = PA_OK;
  pa_prior *m = NULL;
  pa_tensor *x = NULL, *c = NULL, *pred = NULL;
  pa_prior_config cfg = pa_prior_default_config();
  LOAD_CONFIG(w, pa_prior_config_from_json(jcfg, &cfg), pa_prior_config_infer(w, &cfg));
  const pa_tensor *rh;
  PA_TRY(input_f32(be, w, "in.x", true, &x));
  PA_TRY(input_f32(be, w, "in.c", true, &c));
  PA_TRY(pa_weights_get(w, &rh, 1, (const int64_t[]){x->shape[0]}, "in.r"));
  skip_io_tensors(w);
  PA_TRY(pa_prior_load(be, w, &cfg, &m));
  debug_sink sink = {be, out, PA_OK};
  if (debug) pa_prior_set_hook(m, debug_hook, &sink);
  if (!(pred = pa_alloc(be, PA_F32, 2, x->shape))) goto nomem;
  PA_TRY(pa_prior_forward(m, x, rh->data, c, pred));
  PA_TRY(sink.rc);
  PA_TRY(add_output(be, out, "out.pred", pred, false));
  PA_TRY(pa_eval_outputs_add(out, "out.r_embed", pa_r_embedding(rh->data, (int)rh->shape[0], cfg.c_r)));
  PA_TRY(eval_diffuzz(w, out));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_prior_free(m);
  pa_release(be, x);
  pa_release(be, c);
  pa_release(be, pred);
  return rc;
}

/* t5: out.last_hidden_state from in.input_ids (no attention mask, as Paella). */
static int eval_t5(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out) {
  int rc = PA_OK;
  pa_t5 *m = NULL;
  pa_tensor *hidden = NULL;
  pa_t5_config cfg = pa_t5_default_config();
  LOAD_CONFIG(w, pa_t5_config_from_json(jcfg, &cfg), pa_t5_config_infer(w, &cfg));
  const pa_tensor *ids;
  PA_TRY(input_i64(w, "in.input_ids", &ids));
  skip_io_tensors(w);
  PA_TRY(pa_t5_load(be, w, &cfg, &m));
  debug_sink sink = {be, out, PA_OK};
  if (debug) pa_t5_set_hook(m, debug_hook, &sink);
  if (!(hidden = pa_alloc_f32(be, 3, ids->shape[0], ids->shape[1], (int64_t)cfg.d_model))) goto nomem;
  PA_TRY(pa_t5_encode(m, ids, hidden));
  PA_TRY(sink.rc);
  PA_TRY(add_output(be, out, "out.last_hidden_state", hidden, false));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_t5_free(m);
  pa_release(be, hidden);
  return rc;
}

static int clip_config(pa_weights *w, bool vision, pa_clip_config *cfg) {
  int rc = PA_OK;
  *cfg = vision ? pa_clip_vision_default_config() : pa_clip_text_default_config();
  LOAD_CONFIG(w, pa_clip_config_from_json(jcfg, vision, cfg), pa_clip_config_infer(w, vision, cfg));
  return rc;
}

/* clip-text: out.text_embeds and out.last_hidden_state from in.input_ids. */
static int eval_clip_text(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out) {
  int rc = PA_OK;
  pa_clip *m = NULL;
  pa_tensor *hidden = NULL, *embeds = NULL;
  pa_clip_config cfg;
  const pa_tensor *ids;
  PA_TRY(clip_config(w, false, &cfg));
  PA_TRY(input_i64(w, "in.input_ids", &ids));
  skip_io_tensors(w);
  PA_TRY(pa_clip_load(be, w, &cfg, false, &m));
  debug_sink sink = {be, out, PA_OK};
  if (debug) pa_clip_set_hook(m, debug_hook, &sink);
  int64_t B = ids->shape[0];
  hidden = pa_alloc_f32(be, 3, B, ids->ndim == 2 ? ids->shape[1] : 0, (int64_t)cfg.hidden_size);
  embeds = pa_alloc_f32(be, 2, B, (int64_t)cfg.projection_dim);
  if (!hidden || !embeds) goto nomem;
  PA_TRY(pa_clip_text_forward(m, ids, hidden, embeds));
  PA_TRY(sink.rc);
  PA_TRY(add_output(be, out, "out.text_embeds", embeds, false));
  PA_TRY(add_output(be, out, "out.last_hidden_state", hidden, false));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_clip_free(m);
  pa_release(be, hidden);
  pa_release(be, embeds);
  return rc;
}

/* clip-vision: out.image_embeds and out.last_hidden_state from in.pixel_values (B, 3, H, W). */
static int eval_clip_vision(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out) {
  int rc = PA_OK;
  pa_clip *m = NULL;
  pa_tensor *px_h = NULL, *px = NULL, *hidden = NULL, *embeds = NULL;
  pa_clip_config cfg;
  const pa_tensor *pv;
  PA_TRY(clip_config(w, true, &cfg));
  PA_TRY(pa_weights_get_any(w, &pv, "in.pixel_values"));
  if (pv->ndim != 4 || pv->shape[1] != 3) {
    rc = pa_fail(PA_ERR_SHAPE, "in.pixel_values must be (B, 3, H, W)");
    goto fail;
  }
  skip_io_tensors(w);
  PA_TRY(pa_clip_load(be, w, &cfg, true, &m));
  debug_sink sink = {be, out, PA_OK};
  if (debug) pa_clip_set_hook(m, debug_hook, &sink);
  int64_t B = pv->shape[0], G = cfg.image_size / cfg.patch_size;
  if (!(px_h = pa_nchw_to_nhwc(pv)) || !(px = pa_upload(be, px_h))) goto nomem;
  hidden = pa_alloc_f32(be, 3, B, G * G + 1, (int64_t)cfg.hidden_size);
  embeds = pa_alloc_f32(be, 2, B, (int64_t)cfg.projection_dim);
  if (!hidden || !embeds) goto nomem;
  PA_TRY(pa_clip_vision_forward(m, px, hidden, embeds));
  PA_TRY(sink.rc);
  PA_TRY(add_output(be, out, "out.image_embeds", embeds, false));
  PA_TRY(add_output(be, out, "out.last_hidden_state", hidden, false));
  goto fail;
nomem:
  rc = PA_ERR_NOMEM;
fail:
  pa_clip_free(m);
  pa_tensor_free(px_h);
  pa_release(be, px);
  pa_release(be, hidden);
  pa_release(be, embeds);
  return rc;
}

typedef struct {
  const char *name;
  int (*run)(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out);
} eval_entry;

static const eval_entry nets[] = {
    {"paella", eval_paella},
    {"vqgan", eval_vqgan},
    {"prior", eval_prior},
    {"t5", eval_t5},
    {"clip-text", eval_clip_text},
    {"clip-vision", eval_clip_vision},
};

int pa_eval_net(pa_backend *be, const char *net, pa_weights *w, bool debug, pa_eval_outputs *out) {
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++)
    if (!strcmp(net, nets[i].name)) return nets[i].run(be, w, debug, out);
  return pa_fail(PA_ERR_INVALID, "unknown network '%s' (paella, vqgan, prior, t5, clip-text, clip-vision)", net);
}
