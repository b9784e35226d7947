/* `paella eval`: runs one network on golden-convention inputs (see model/eval.h). */
#include "model/eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/nn.h"
#include "model/paella.h"

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
  json_t *jcfg = pa_cfg_from_weights(w, &rc);
  if (rc) return rc;
  rc = jcfg ? pa_paella_config_from_json(jcfg, &cfg) : pa_paella_config_infer(w, &cfg);
  json_decref(jcfg);
  if (rc) return rc;
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

typedef struct {
  const char *name;
  int (*run)(pa_backend *be, pa_weights *w, bool debug, pa_eval_outputs *out);
} eval_entry;

static const eval_entry nets[] = {
    {"paella", eval_paella},
};

int pa_eval_net(pa_backend *be, const char *net, pa_weights *w, bool debug, pa_eval_outputs *out) {
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++)
    if (!strcmp(net, nets[i].name)) return nets[i].run(be, w, debug, out);
  return pa_fail(PA_ERR_INVALID, "unknown network '%s' (paella, vqgan, prior, t5, clip-text, clip-vision)", net);
}
