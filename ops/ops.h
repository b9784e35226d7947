/* Checked entry points to the backend ops: each validates shapes and dtypes once (for every
 * backend), then dispatches to the backend's implementation. Networks call only these. */
#ifndef PAELLA_OPS_OPS_H
#define PAELLA_OPS_OPS_H

#include "ops/backend.h"
#include "ops/error.h"
#include "ops/weights.h"

/* Device tensors. pa_alloc returns NULL with the error set on failure. */
pa_tensor *pa_alloc(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape);
/* pa_alloc_f32(be, 3, B, L, C): the sizes go through an int64_t array literal, so each is
 * converted (an int argument is safe, unlike through varargs) and more than PA_MAX_DIMS of
 * them do not compile. */
#define pa_alloc_f32(be, ndim, ...) pa_alloc((be), PA_F32, (ndim), (const int64_t[PA_MAX_DIMS]){__VA_ARGS__})
void pa_release(pa_backend *be, pa_tensor *t);
/* Upload a host tensor (new device tensor); on CPU, a copy. */
pa_tensor *pa_upload(pa_backend *be, const pa_tensor *host);
/* Download into a new F32 host tensor. */
pa_tensor *pa_download(pa_backend *be, const pa_tensor *t);

/* A network parameter: fetched by state_dict name with its expected shape, then made
 * resident on the backend (CPU: borrows the host weights, no copy). */
int pa_param(pa_backend *be, pa_weights *w, pa_tensor **out, int ndim, const int64_t *shape,
             const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The same for a parameter the network derived on the host (e.g. concatenated weights);
 * `host` must outlive the result on the CPU backend, which borrows it. */
pa_tensor *pa_param_from_host(pa_backend *be, const pa_tensor *host);

/* A view of rows [r0, r1) of a 2-d (or first-dim slice of an n-d) tensor; shares storage. */
pa_tensor pa_view_rows(const pa_tensor *t, int64_t r0, int64_t r1);
/* A view with another shape (same numel); shares storage. */
pa_tensor pa_view(const pa_tensor *t, int ndim, const int64_t *shape);

int pa_linear(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
              const pa_tensor *b, pa_act act);
int pa_embedding(pa_backend *be, pa_tensor *y, const pa_tensor *ids, const pa_tensor *table);
int pa_layernorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
                 const pa_tensor *beta, float eps);
int pa_rmsnorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma, float eps);
int pa_activation(pa_backend *be, pa_tensor *y, const pa_tensor *x, pa_act act);
int pa_add(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, float alpha);
int pa_mul(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b);
int pa_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, float s, float t);
int pa_modulate(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *am);
int pa_channel_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *scale,
                      const pa_tensor *shift);
int pa_grn(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *gamma,
           const pa_tensor *beta);
int pa_conv2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
              const pa_tensor *b, pa_conv_params p);
int pa_conv_transpose2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                        const pa_tensor *b, pa_conv_params p);
int pa_pixel_unshuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p);
int pa_pixel_shuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p);
int pa_concat(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, int axis);
int pa_attention(pa_backend *be, pa_tensor *y, const pa_tensor *q, const pa_tensor *k,
                 const pa_tensor *v, const pa_attn_params *p);
int pa_vq_nearest(pa_backend *be, pa_tensor *idx, const pa_tensor *z, const pa_tensor *codebook);
int pa_copy(pa_backend *be, pa_tensor *y, const pa_tensor *x);
int pa_diffuzz_step(pa_backend *be, pa_tensor *x, const pa_tensor *eps_c, const pa_tensor *eps_u,
                    const pa_tensor *z, const pa_diffuzz_params *p);

/* Output size of a conv along one axis. */
static inline int64_t pa_conv_out(int64_t in, int k, pa_conv_params p) {
  return (in + 2 * p.pad - k) / p.stride + 1;
}
static inline int64_t pa_convt_out(int64_t in, int k, pa_conv_params p) {
  return (in - 1) * p.stride - 2 * p.pad + k;
}

#endif
