#include "ops/ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- memory -------------------------------------------------------------------------------- */

pa_tensor *pa_alloc(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape) {
  return be->alloc(be, dt, ndim, shape);
}

void pa_release(pa_backend *be, pa_tensor *t) {
  if (t) be->release(be, t);
}

pa_tensor *pa_upload(pa_backend *be, const pa_tensor *host) {
  pa_tensor *t = be->alloc(be, host->dtype, host->ndim, host->shape);
  if (t && be->from_host(be, t, host)) {
    be->release(be, t);
    return NULL;
  }
  return t;
}

pa_tensor *pa_download(pa_backend *be, const pa_tensor *t) {
  pa_tensor *h = pa_tensor_new(t->dtype, t->ndim, t->shape);
  if (h && be->to_host(be, h, t)) {
    pa_tensor_free(h);
    return NULL;
  }
  return h;
}

int pa_param(pa_backend *be, pa_weights *w, pa_tensor **out, int ndim, const int64_t *shape,
             const char *fmt, ...) {
  char name[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  const pa_tensor *host;
  int rc = pa_weights_get(w, &host, ndim, shape, "%s", name);
  if (rc) return rc;
  *out = pa_param_from_host(be, host);
  return *out ? PA_OK : PA_ERR_NOMEM;
}

pa_tensor *pa_param_from_host(pa_backend *be, const pa_tensor *host) {
  if (be->device == PA_HOST) return pa_tensor_wrap(host->dtype, host->ndim, host->shape, host->data);
  return be->upload_param ? be->upload_param(be, host) : pa_upload(be, host);
}

pa_tensor pa_view_rows(const pa_tensor *t, int64_t r0, int64_t r1) {
  pa_tensor v = *t;
  int64_t inner = pa_numel(t) / (t->shape[0] ? t->shape[0] : 1);
  v.data = (char *)t->data + (size_t)(r0 * inner) * pa_dtype_size(t->dtype);
  v.shape[0] = r1 - r0;
  v.owns_data = false;
  return v;
}

pa_tensor pa_view(const pa_tensor *t, int ndim, const int64_t *shape) {
  pa_tensor v = *t;
  v.ndim = ndim;
  for (int i = 0; i < ndim; i++) v.shape[i] = shape[i];
  v.owns_data = false;
  return v;
}

/* ---- shape checks ------------------------------------------------------------------------ */

static int bad_shape(const char *op, const char *what, const pa_tensor *t) {
  char s[128];
  return pa_fail(PA_ERR_SHAPE, "%s: %s has unexpected shape %s (dtype %s)", op, what,
                 t ? pa_shape_str(t, s, sizeof s) : "(null)", t ? pa_dtype_name(t->dtype) : "-");
}

static bool is_f32(const pa_tensor *t) { return t && t->dtype == PA_F32; }

#define REQUIRE(cond, op, what, t) \
  do {                             \
    if (!(cond)) return bad_shape(op, what, t); \
  } while (0)

int pa_linear(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
              const pa_tensor *b, pa_act act) {
  REQUIRE(w && w->ndim == 2, "linear", "weight", w);
  REQUIRE(is_f32(x) && pa_last(x) == w->shape[1], "linear", "input", x);
  REQUIRE(is_f32(y) && pa_last(y) == w->shape[0] && pa_rows(y) == pa_rows(x), "linear", "output", y);
  REQUIRE(!b || (b->ndim == 1 && b->shape[0] == w->shape[0]), "linear", "bias", b);
  return be->linear(be, y, x, w, b, act);
}

int pa_embedding(pa_backend *be, pa_tensor *y, const pa_tensor *ids, const pa_tensor *table) {
  REQUIRE(ids && ids->dtype == PA_I64, "embedding", "ids", ids);
  REQUIRE(table && table->ndim == 2, "embedding", "table", table);
  REQUIRE(is_f32(y) && pa_numel(y) == pa_numel(ids) * table->shape[1], "embedding", "output", y);
  return be->embedding(be, y, ids, table);
}

static bool vec_of(const pa_tensor *v, int64_t n) { return !v || (v->ndim == 1 && v->shape[0] == n); }

int pa_layernorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
                 const pa_tensor *beta, float eps) {
  REQUIRE(is_f32(x) && is_f32(y) && pa_same_shape(x, y), "layernorm", "output", y);
  REQUIRE(vec_of(gamma, pa_last(x)) && vec_of(beta, pa_last(x)), "layernorm", "gamma/beta", gamma);
  return be->layernorm(be, y, x, gamma, beta, eps);
}

int pa_rmsnorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma, float eps) {
  REQUIRE(is_f32(x) && is_f32(y) && pa_same_shape(x, y), "rmsnorm", "output", y);
  REQUIRE(gamma && vec_of(gamma, pa_last(x)), "rmsnorm", "gamma", gamma);
  return be->rmsnorm(be, y, x, gamma, eps);
}

int pa_activation(pa_backend *be, pa_tensor *y, const pa_tensor *x, pa_act act) {
  REQUIRE(is_f32(x) && is_f32(y) && pa_numel(x) == pa_numel(y), "activation", "output", y);
  return be->activation(be, y, x, act);
}

int pa_add(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, float alpha) {
  REQUIRE(is_f32(a) && is_f32(b) && pa_numel(a) == pa_numel(b), "add", "operand", b);
  REQUIRE(is_f32(y) && pa_numel(y) == pa_numel(a), "add", "output", y);
  return be->add(be, y, a, b, alpha);
}

int pa_mul(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b) {
  REQUIRE(is_f32(a) && is_f32(b) && pa_numel(a) == pa_numel(b), "mul", "operand", b);
  REQUIRE(is_f32(y) && pa_numel(y) == pa_numel(a), "mul", "output", y);
  return be->mul(be, y, a, b);
}

int pa_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, float s, float t) {
  REQUIRE(is_f32(x) && is_f32(y) && pa_numel(x) == pa_numel(y), "affine", "output", y);
  return be->affine(be, y, x, s, t);
}

int pa_modulate(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *am) {
  REQUIRE(is_f32(x) && is_f32(y) && pa_same_shape(x, y), "modulate", "output", y);
  REQUIRE(is_f32(am) && am->ndim == 2 && (am->shape[0] == x->shape[0] || am->shape[0] == 1) &&
              am->shape[1] == 2 * pa_last(x),
          "modulate", "a|b", am);
  return be->modulate(be, y, x, am);
}

int pa_channel_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *scale,
                      const pa_tensor *shift) {
  REQUIRE(is_f32(x) && is_f32(y) && pa_same_shape(x, y), "channel_affine", "output", y);
  REQUIRE(scale && shift && vec_of(scale, pa_last(x)) && vec_of(shift, pa_last(x)),
          "channel_affine", "scale/shift", scale);
  return be->channel_affine(be, y, x, scale, shift);
}

int pa_grn(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
           const pa_tensor *beta) {
  REQUIRE(is_f32(x) && x->ndim == 4 && is_f32(y) && pa_same_shape(x, y), "grn", "input", x);
  REQUIRE(gamma && beta && pa_numel(gamma) == pa_last(x) && pa_numel(beta) == pa_last(x), "grn",
          "gamma/beta", gamma);
  return be->grn(be, y, x, gamma, beta);
}

int pa_conv2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
              const pa_tensor *b, pa_conv_params p) {
  if (p.groups < 1) p.groups = 1;
  if (p.stride < 1) p.stride = 1;
  REQUIRE(w && w->ndim == 4 && w->shape[0] % p.groups == 0, "conv2d", "weight", w);
  REQUIRE(is_f32(x) && x->ndim == 4 && x->shape[3] == w->shape[1] * p.groups, "conv2d", "input", x);
  int64_t ho = pa_conv_out(x->shape[1], (int)w->shape[2], p),
          wo = pa_conv_out(x->shape[2], (int)w->shape[3], p);
  REQUIRE(is_f32(y) && y->ndim == 4 && y->shape[0] == x->shape[0] && y->shape[1] == ho &&
              y->shape[2] == wo && y->shape[3] == w->shape[0],
          "conv2d", "output", y);
  REQUIRE(vec_of(b, w->shape[0]), "conv2d", "bias", b);
  return be->conv2d(be, y, x, w, b, p);
}

int pa_conv_transpose2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                        const pa_tensor *b, pa_conv_params p) {
  if (p.stride < 1) p.stride = 1;
  REQUIRE(w && w->ndim == 4, "conv_transpose2d", "weight", w);
  REQUIRE(is_f32(x) && x->ndim == 4 && x->shape[3] == w->shape[0], "conv_transpose2d", "input", x);
  int64_t ho = pa_convt_out(x->shape[1], (int)w->shape[2], p),
          wo = pa_convt_out(x->shape[2], (int)w->shape[3], p);
  REQUIRE(is_f32(y) && y->ndim == 4 && y->shape[0] == x->shape[0] && y->shape[1] == ho &&
              y->shape[2] == wo && y->shape[3] == w->shape[1],
          "conv_transpose2d", "output", y);
  REQUIRE(vec_of(b, w->shape[1]), "conv_transpose2d", "bias", b);
  return be->conv_transpose2d(be, y, x, w, b, p);
}

int pa_pixel_unshuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  REQUIRE(is_f32(x) && x->ndim == 4 && p > 0 && x->shape[1] % p == 0 && x->shape[2] % p == 0,
          "pixel_unshuffle", "input", x);
  REQUIRE(is_f32(y) && y->ndim == 4 && y->shape[0] == x->shape[0] && y->shape[1] == x->shape[1] / p &&
              y->shape[2] == x->shape[2] / p && y->shape[3] == x->shape[3] * p * p,
          "pixel_unshuffle", "output", y);
  return be->pixel_unshuffle(be, y, x, p);
}

int pa_pixel_shuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  REQUIRE(is_f32(x) && x->ndim == 4 && p > 0 && x->shape[3] % (p * p) == 0, "pixel_shuffle",
          "input", x);
  REQUIRE(is_f32(y) && y->ndim == 4 && y->shape[0] == x->shape[0] && y->shape[1] == x->shape[1] * p &&
              y->shape[2] == x->shape[2] * p && y->shape[3] == x->shape[3] / (p * p),
          "pixel_shuffle", "output", y);
  return be->pixel_shuffle(be, y, x, p);
}

int pa_concat(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, int axis) {
  REQUIRE(is_f32(a) && is_f32(b) && a->ndim == b->ndim && axis >= 0 && axis < a->ndim, "concat",
          "operand", b);
  for (int i = 0; i < a->ndim; i++)
    REQUIRE(i == axis || a->shape[i] == b->shape[i], "concat", "operand", b);
  REQUIRE(is_f32(y) && y->ndim == a->ndim && y->shape[axis] == a->shape[axis] + b->shape[axis] &&
              pa_numel(y) == pa_numel(a) + pa_numel(b),
          "concat", "output", y);
  return be->concat(be, y, a, b, axis);
}

int pa_attention(pa_backend *be, pa_tensor *y, const pa_tensor *q, const pa_tensor *k,
                 const pa_tensor *v, const pa_attn_params *p) {
  REQUIRE(is_f32(q) && q->ndim == 3 && p->nhead > 0 && q->shape[2] % p->nhead == 0, "attention",
          "q", q);
  REQUIRE(is_f32(k) && k->ndim == 3 && k->shape[0] == q->shape[0] && k->shape[2] == q->shape[2],
          "attention", "k", k);
  REQUIRE(is_f32(v) && pa_same_shape(k, v), "attention", "v", v);
  REQUIRE(is_f32(y) && pa_same_shape(y, q), "attention", "output", y);
  REQUIRE(!p->pos_bias || (p->pos_bias->ndim == 3 && p->pos_bias->shape[0] == p->nhead &&
                           p->pos_bias->shape[1] == q->shape[1] && p->pos_bias->shape[2] == k->shape[1]),
          "attention", "pos_bias", p->pos_bias);
  int64_t Lk = k->shape[1] + (p->k2 ? p->k2->shape[1] : 0);
  REQUIRE(!p->key_weight || (p->key_weight->ndim == 1 && p->key_weight->shape[0] <= Lk) ||
              (p->key_weight->ndim == 2 && p->key_weight->shape[0] == q->shape[0] && p->key_weight->shape[1] <= Lk),
          "attention", "key_weight", p->key_weight);
  REQUIRE(!p->key_pad || (p->key_pad->dtype == PA_I32 && p->key_pad->ndim == 1 && p->key_pad->shape[0] == q->shape[0]),
          "attention", "key_pad", p->key_pad);
  REQUIRE(!p->key_pad || (!p->causal && !p->pos_bias), "attention", "key_pad (with causal or pos_bias)", p->key_pad);
  REQUIRE(!p->k2 || (is_f32(p->k2) && is_f32(p->v2) && pa_same_shape(p->k2, p->v2) && p->k2->ndim == 3 &&
                     p->k2->shape[0] == q->shape[0] && p->k2->shape[2] == q->shape[2] && !p->causal && !p->pos_bias),
          "attention", "k2/v2", p->k2);
  REQUIRE((p->q_ld == 0 || p->q_ld >= q->shape[2]) && (p->kv_ld == 0 || p->kv_ld >= q->shape[2]) &&
              (p->kv2_ld == 0 || p->kv2_ld >= q->shape[2]),
          "attention", "row strides", q);
  return be->attention(be, y, q, k, v, p);
}

int pa_vq_nearest(pa_backend *be, pa_tensor *idx, const pa_tensor *z, const pa_tensor *codebook) {
  REQUIRE(codebook && codebook->ndim == 2, "vq_nearest", "codebook", codebook);
  REQUIRE(is_f32(z) && pa_last(z) == codebook->shape[1], "vq_nearest", "z", z);
  REQUIRE(idx && idx->dtype == PA_I64 && pa_numel(idx) == pa_rows(z), "vq_nearest", "idx", idx);
  return be->vq_nearest(be, idx, z, codebook);
}

int pa_diffuzz_step(pa_backend *be, pa_tensor *x, const pa_tensor *eps_c, const pa_tensor *eps_u,
                    const pa_tensor *z, const pa_diffuzz_params *p) {
  REQUIRE(is_f32(x) && x->ndim == 2, "diffuzz_step", "x", x);
  REQUIRE(is_f32(eps_c) && is_f32(eps_u) && pa_same_shape(eps_c, x) && pa_same_shape(eps_u, x), "diffuzz_step",
          "eps", eps_c);
  REQUIRE(p->ddim || (is_f32(z) && pa_same_shape(z, x)), "diffuzz_step", "z", z);
  return be->diffuzz_step(be, x, eps_c, eps_u, z, p);
}

int pa_copy(pa_backend *be, pa_tensor *y, const pa_tensor *x) {
  REQUIRE(x && y && x->dtype == y->dtype && pa_numel(x) == pa_numel(y), "copy", "output", y);
  return be->copy(be, y, x);
}
