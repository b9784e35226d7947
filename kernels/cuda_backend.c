/* The CUDA backend's op table: shapes were checked by the wrappers in ops/ops.c, so each op
 * here only checks that its tensors live on the device, maps them onto a kernel launch (or a
 * cuBLASLt GEMM) on the backend's stream, and returns without synchronising. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_ctx.h"

#define F(t) ((float *)(t)->data)
#define CF(t) ((const float *)(t)->data)
#define CTX(be) ((cuda_ctx *)(be)->ctx)
#define S(be) (CTX(be)->stream)

/* Every tensor argument must be a device tensor (a host tensor here is a caller bug that
 * would otherwise crash inside a kernel). */
static int on_device(const char *op, int n, const pa_tensor *const *ts) {
  for (int i = 0; i < n; i++)
    if (ts[i] && ts[i]->device != PA_CUDA)
      return pa_fail(PA_ERR_INVALID, "cuda %s: argument %d is a host tensor (upload it first)", op, i);
  return PA_OK;
}
#define ON_DEVICE(op, ...)                                                         \
  do {                                                                             \
    const pa_tensor *ts_[] = {__VA_ARGS__};                                        \
    int r_ = on_device(op, (int)(sizeof ts_ / sizeof ts_[0]), ts_);                \
    if (r_) return r_;                                                             \
  } while (0)

/* Param-like operands (gamma, bias, tables) are read as F32 by the kernels. */
static int f32_or_null(const char *op, const pa_tensor *t) {
  if (t && t->dtype != PA_F32)
    return pa_fail(PA_ERR_UNSUPPORTED, "cuda %s: %s operand (F32 expected)", op, pa_dtype_name(t->dtype));
  return PA_OK;
}

static const float *opt(const pa_tensor *t) { return t ? CF(t) : NULL; }

/* ---- memory ------------------------------------------------------------------------------- */

/* Reports (and clears) an error that an earlier kernel flagged on the device. */
static int check_flag(cuda_ctx *c) {
  int flag = 0;
  CHECK_CUDA(cudaMemcpyAsync(&flag, c->err_flag, sizeof flag, cudaMemcpyDeviceToHost, c->stream));
  CHECK_CUDA(cudaStreamSynchronize(c->stream));
  if (!flag) return PA_OK;
  CHECK_CUDA(cudaMemsetAsync(c->err_flag, 0, sizeof(int), c->stream));
  return pa_fail(PA_ERR_INVALID, "cuda: an embedding id was outside its table (an earlier op wrote zeros)");
}

static int cuda_to_host(pa_backend *be, pa_tensor *host, const pa_tensor *src) {
  ON_DEVICE("to_host", src);
  if (pa_nbytes(host) != pa_nbytes(src) || host->dtype != src->dtype)
    return pa_fail(PA_ERR_SHAPE, "cuda to_host: size or dtype mismatch");
  if (pa_nbytes(src))
    CHECK_CUDA(cudaMemcpyAsync(host->data, src->data, pa_nbytes(src), cudaMemcpyDeviceToHost, S(be)));
  return check_flag(CTX(be)); /* synchronises: the host reads the bytes next */
}

static int cuda_from_host(pa_backend *be, pa_tensor *dst, const pa_tensor *host) {
  ON_DEVICE("from_host", dst);
  if (pa_nbytes(dst) != pa_nbytes(host) || dst->dtype != host->dtype)
    return pa_fail(PA_ERR_SHAPE, "cuda from_host: size or dtype mismatch");
  /* From pageable memory the call returns once the bytes are staged, so the caller may
   * reuse its buffer at once. */
  if (pa_nbytes(host))
    CHECK_CUDA(cudaMemcpyAsync(dst->data, host->data, pa_nbytes(host), cudaMemcpyHostToDevice, S(be)));
  return PA_OK;
}

static int cuda_sync(pa_backend *be) {
  CHECK_CUDA(cudaGetLastError());
  return check_flag(CTX(be));
}

static int cuda_copy(pa_backend *be, pa_tensor *y, const pa_tensor *x) {
  ON_DEVICE("copy", y, x);
  if (pa_nbytes(x) && y->data != x->data)
    CHECK_CUDA(cudaMemcpyAsync(y->data, x->data, pa_nbytes(x), cudaMemcpyDeviceToDevice, S(be)));
  return PA_OK;
}

/* ---- GEMM ops ----------------------------------------------------------------------------- */

static int cuda_linear(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w, const pa_tensor *b,
                       pa_act act) {
  ON_DEVICE("linear", y, x, w, b);
  int rc = f32_or_null("linear bias", b);
  if (rc) return rc;
  return cuda_gemm(CTX(be), F(y), CF(x), NULL, w, opt(b), pa_rows(x), w->shape[0], w->shape[1], 1, act);
}

static int cuda_embedding(pa_backend *be, pa_tensor *y, const pa_tensor *ids, const pa_tensor *table) {
  ON_DEVICE("embedding", y, ids, table);
  int rc = f32_or_null("embedding table", table);
  if (rc) return rc;
  CHECK_CUDA(pa_k_embedding(S(be), F(y), ids->data, CF(table), pa_numel(ids), table->shape[0], table->shape[1],
                            CTX(be)->err_flag));
  return PA_OK;
}

static pa_k_conv_shape conv_shape(const pa_tensor *x, const pa_tensor *y, int kh, int kw, pa_conv_params p) {
  return (pa_k_conv_shape){.B = x->shape[0], .H = x->shape[1], .W = x->shape[2], .C = x->shape[3],
                           .Ho = y->shape[1], .Wo = y->shape[2], .O = y->shape[3], .kh = kh, .kw = kw,
                           .stride = p.stride, .pad = p.pad, .groups = p.groups,
                           .replicate = p.pad_mode == PA_PAD_REPLICATE};
}

/* groups == 1: im2col (bf16, straight into the GEMM operand) then one GEMM with the weight
 * viewed as (O, C*kh*kw); 1x1 stride-1 convs skip the im2col. groups > 1: direct kernel. */
static int cuda_conv2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w, const pa_tensor *b,
                       pa_conv_params p) {
  ON_DEVICE("conv2d", y, x, w, b);
  cuda_ctx *c = CTX(be);
  int rc = f32_or_null("conv2d bias", b);
  if (rc) return rc;
  int kh = (int)w->shape[2], kw = (int)w->shape[3];
  pa_k_conv_shape sh = conv_shape(x, y, kh, kw, p);
  if (p.groups > 1) {
    if ((rc = f32_or_null("grouped conv2d weight", w))) return rc;
    CHECK_CUDA(pa_k_conv_grouped(c->stream, F(y), CF(x), CF(w), opt(b), sh));
    return PA_OK;
  }
  int64_t M = sh.B * sh.Ho * sh.Wo, K = sh.C * kh * kw;
  pa_tensor w2 = pa_view(w, 2, (const int64_t[]){w->shape[0], K});
  if (kh == 1 && kw == 1 && p.stride == 1 && p.pad == 0)
    return cuda_gemm(c, F(y), CF(x), NULL, &w2, opt(b), M, sh.O, K, 1, PA_ACT_NONE);
  bool bf16 = !c->fp32_gemm;
  void *cols = cuda_scratch(c, (size_t)(M * K) * (bf16 ? 2 : 4));
  if (!cols) return PA_ERR_NOMEM;
  cudaError_t e = pa_k_im2col(c->stream, cols, bf16, CF(x), sh);
  if (e != cudaSuccess)
    rc = pa_fail(PA_ERR_DEVICE, "%s:%d: im2col: %s", __FILE__, __LINE__, cudaGetErrorString(e));
  else
    rc = cuda_gemm(c, F(y), bf16 ? NULL : cols, bf16 ? cols : NULL, &w2, opt(b), M, sh.O, K, 1, PA_ACT_NONE);
  cuda_scratch_free(c, cols);
  return rc;
}

/* cols (B*H*W, O*kh*kw) = x @ w(C, O*kh*kw), then a gather with the bias. */
static int cuda_conv_transpose2d(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w,
                                 const pa_tensor *b, pa_conv_params p) {
  ON_DEVICE("conv_transpose2d", y, x, w, b);
  cuda_ctx *c = CTX(be);
  int rc = f32_or_null("conv_transpose2d bias", b);
  if (rc) return rc;
  int kh = (int)w->shape[2], kw = (int)w->shape[3];
  pa_k_conv_shape sh = conv_shape(x, y, kh, kw, p);
  int64_t M = sh.B * sh.H * sh.W, N = sh.O * kh * kw;
  float *cols = cuda_scratch(c, (size_t)(M * N) * 4);
  if (!cols) return PA_ERR_NOMEM;
  pa_tensor w2 = pa_view(w, 2, (const int64_t[]){sh.C, N});
  rc = cuda_gemm(c, cols, CF(x), NULL, &w2, NULL, M, N, sh.C, 0, PA_ACT_NONE);
  if (rc == PA_OK) {
    cudaError_t e = pa_k_convt_gather(c->stream, F(y), cols, opt(b), sh);
    if (e != cudaSuccess) rc = pa_fail(PA_ERR_DEVICE, "%s:%d: convt gather: %s", __FILE__, __LINE__, cudaGetErrorString(e));
  }
  cuda_scratch_free(c, cols);
  return rc;
}

/* ---- normalisation and elementwise -------------------------------------------------------- */

static int cuda_layernorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *g,
                          const pa_tensor *bt, float eps) {
  ON_DEVICE("layernorm", y, x, g, bt);
  int rc = f32_or_null("layernorm gamma", g);
  if (rc || (rc = f32_or_null("layernorm beta", bt))) return rc;
  CHECK_CUDA(pa_k_layernorm(S(be), F(y), CF(x), opt(g), opt(bt), pa_rows(x), pa_last(x), eps));
  return PA_OK;
}

static int cuda_rmsnorm(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *g, float eps) {
  ON_DEVICE("rmsnorm", y, x, g);
  int rc = f32_or_null("rmsnorm gamma", g);
  if (rc) return rc;
  CHECK_CUDA(pa_k_rmsnorm(S(be), F(y), CF(x), CF(g), pa_rows(x), pa_last(x), eps));
  return PA_OK;
}

static int cuda_grn(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *g, const pa_tensor *bt) {
  ON_DEVICE("grn", y, x, g, bt);
  cuda_ctx *c = CTX(be);
  int rc = f32_or_null("grn gamma", g);
  if (rc || (rc = f32_or_null("grn beta", bt))) return rc;
  int64_t B = x->shape[0], P = x->shape[1] * x->shape[2], C = x->shape[3];
  float *scratch = cuda_scratch(c, (size_t)(B * C + B) * 4);
  if (!scratch) return PA_ERR_NOMEM;
  cudaError_t e = pa_k_grn(c->stream, F(y), CF(x), CF(g), CF(bt), B, P, C, scratch);
  cuda_scratch_free(c, scratch);
  if (e != cudaSuccess) return pa_fail(PA_ERR_DEVICE, "%s:%d: grn: %s", __FILE__, __LINE__, cudaGetErrorString(e));
  return PA_OK;
}

static int cuda_activation(pa_backend *be, pa_tensor *y, const pa_tensor *x, pa_act act) {
  ON_DEVICE("activation", y, x);
  CHECK_CUDA(pa_k_bias_act(S(be), F(y), CF(x), NULL, pa_numel(x), 1, act));
  return PA_OK;
}

static int cuda_add(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, float alpha) {
  ON_DEVICE("add", y, a, b);
  CHECK_CUDA(pa_k_add(S(be), F(y), CF(a), CF(b), alpha, pa_numel(a)));
  return PA_OK;
}

static int cuda_mul(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b) {
  ON_DEVICE("mul", y, a, b);
  CHECK_CUDA(pa_k_mul(S(be), F(y), CF(a), CF(b), pa_numel(a)));
  return PA_OK;
}

static int cuda_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, float s, float t) {
  ON_DEVICE("affine", y, x);
  CHECK_CUDA(pa_k_affine(S(be), F(y), CF(x), s, t, pa_numel(x)));
  return PA_OK;
}

static int cuda_modulate(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *am) {
  ON_DEVICE("modulate", y, x, am);
  int64_t B = x->shape[0], C = pa_last(x);
  CHECK_CUDA(pa_k_modulate(S(be), F(y), CF(x), CF(am), B, B ? pa_numel(x) / (B * C) : 0, C, am->shape[0] == 1 && B > 1));
  return PA_OK;
}

static int cuda_channel_affine(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *scale,
                               const pa_tensor *shift) {
  ON_DEVICE("channel_affine", y, x, scale, shift);
  int rc = f32_or_null("channel_affine scale", scale);
  if (rc || (rc = f32_or_null("channel_affine shift", shift))) return rc;
  CHECK_CUDA(pa_k_channel_affine(S(be), F(y), CF(x), CF(scale), CF(shift), pa_rows(x), pa_last(x)));
  return PA_OK;
}

/* ---- layout ------------------------------------------------------------------------------- */

static int cuda_pixel_unshuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  ON_DEVICE("pixel_unshuffle", y, x);
  CHECK_CUDA(pa_k_pixel_shuffle(S(be), F(y), CF(x), y->shape[0], y->shape[1], y->shape[2], x->shape[3], p, 0));
  return PA_OK;
}

static int cuda_pixel_shuffle(pa_backend *be, pa_tensor *y, const pa_tensor *x, int p) {
  ON_DEVICE("pixel_shuffle", y, x);
  CHECK_CUDA(pa_k_pixel_shuffle(S(be), F(y), CF(x), x->shape[0], x->shape[1], x->shape[2], y->shape[3], p, 1));
  return PA_OK;
}

static int cuda_concat(pa_backend *be, pa_tensor *y, const pa_tensor *a, const pa_tensor *b, int axis) {
  ON_DEVICE("concat", y, a, b);
  int64_t outer = 1, ia = 1, ib = 1;
  for (int i = 0; i < axis; i++) outer *= a->shape[i];
  for (int i = axis; i < a->ndim; i++) {
    ia *= a->shape[i];
    ib *= b->shape[i];
  }
  CHECK_CUDA(pa_k_concat(S(be), F(y), CF(a), CF(b), outer, ia, ib));
  return PA_OK;
}

/* ---- attention, VQ ------------------------------------------------------------------------ */

static int cuda_attention(pa_backend *be, pa_tensor *y, const pa_tensor *q, const pa_tensor *k,
                          const pa_tensor *v, const pa_attn_params *p) {
  ON_DEVICE("attention", y, q, k, v, p->pos_bias, p->key_weight, p->key_pad, p->k2, p->v2);
  cuda_ctx *c = CTX(be);
  int rc = f32_or_null("attention pos_bias", p->pos_bias);
  if (rc || (rc = f32_or_null("attention key_weight", p->key_weight))) return rc;
  int64_t C = q->shape[2];
  pa_k_attn_shape sh = {.B = q->shape[0], .Lq = q->shape[1], .Lk = k->shape[1] + (p->k2 ? p->k2->shape[1] : 0),
                        .C = C, .k2 = opt(p->k2), .v2 = opt(p->v2), .Lk1 = k->shape[1],
                        .q_ld = p->q_ld ? p->q_ld : C, .kv_ld = p->kv_ld ? p->kv_ld : C, .kv2_ld = p->kv2_ld ? p->kv2_ld : C,
                        .H = p->nhead, .scale = p->scale, .causal = p->causal, .pos_bias = opt(p->pos_bias),
                        .key_weight = opt(p->key_weight), .nw = p->key_weight ? pa_last(p->key_weight) : 0,
                        .kw_rows = p->key_weight && p->key_weight->ndim == 2,
                        .key_pad = p->key_pad ? p->key_pad->data : NULL};
  int64_t d = sh.C / sh.H;
  int qt = 8; /* queries per block: as many as the score rows fit in shared memory */
  while (qt > 1 && pa_k_attention_smem(sh.Lk, d, qt) > (size_t)c->max_smem) qt /= 2;
  if (pa_k_attention_smem(sh.Lk, d, qt) > (size_t)c->max_smem || d > 256)
    return pa_fail(PA_ERR_UNSUPPORTED, "cuda attention: %lld keys of head dim %lld exceed shared memory",
                   (long long)sh.Lk, (long long)d);
  CHECK_CUDA(pa_k_attention(c->stream, F(y), CF(q), CF(k), CF(v), sh, qt));
  return PA_OK;
}

static int cuda_vq_nearest(pa_backend *be, pa_tensor *idx, const pa_tensor *z, const pa_tensor *cb) {
  ON_DEVICE("vq_nearest", idx, z, cb);
  int rc = f32_or_null("vq codebook", cb);
  if (rc) return rc;
  CHECK_CUDA(pa_k_vq_nearest(S(be), idx->data, CF(z), CF(cb), pa_rows(z), cb->shape[0], pa_last(z)));
  return PA_OK;
}

/* ---- the fused sampler -------------------------------------------------------------------- */

static int cuda_sample(pa_backend *be, const pa_sample_params *p) {
  ON_DEVICE("sample", p->cond, p->uncond, p->cond2, p->seeds, p->init, p->pinned, p->keep, p->tokens);
  int64_t B = p->cond->shape[0];
  pa_k_sample_args a = {.cond = CF(p->cond), .uncond = opt(p->uncond), .cond2 = opt(p->cond2),
                        .regions = p->cond2 ? (int)p->regions : 0,
                        .h = p->cond->ndim == 4 ? p->cond->shape[1] : 1, .w = p->cond->ndim == 4 ? p->cond->shape[2] : 1,
                        .cfg = p->cfg, .temp = p->temp,
                        .argmax = p->argmax, .seeds = p->seeds->data, .step = (uint32_t)p->step,
                        .renoise = p->renoise, .renoise_t = p->renoise_t,
                        .init = p->renoise ? p->init->data : NULL, .pinned = p->pinned ? p->pinned->data : NULL,
                        .keep = p->keep ? p->keep->data : NULL, .tokens = p->tokens->data, .B = B,
                        .n = B ? pa_rows(p->cond) / B : 0, .K = (int)pa_last(p->cond)};
  CHECK_CUDA(pa_k_sample(S(be), &a));
  return PA_OK;
}

static int cuda_diffuzz_step(pa_backend *be, pa_tensor *x, const pa_tensor *ec, const pa_tensor *eu,
                             const pa_tensor *z, const pa_diffuzz_params *p) {
  ON_DEVICE("diffuzz_step", x, ec, eu, z);
  CHECK_CUDA(pa_k_diffuzz_step(S(be), F(x), CF(ec), CF(eu), p->ddim ? NULL : CF(z), pa_numel(x), p->cfg, p->ddim,
                               p->a, p->ac, p->acp, p->sd));
  return PA_OK;
}

int pa_cuda_gumbel_table(pa_backend *be, float *out) {
  cuda_ctx *c = be->ctx;
  size_t bytes = ((size_t)1 << 24) * sizeof(float);
  float *d = cuda_scratch(c, bytes);
  if (!d) return PA_ERR_NOMEM;
  int rc = PA_OK;
  CUDA_TRY(pa_k_gumbel_table(c->stream, d));
  CUDA_TRY(cudaMemcpyAsync(out, d, bytes, cudaMemcpyDeviceToHost, c->stream));
  CUDA_TRY(cudaStreamSynchronize(c->stream));
fail:
  cuda_scratch_free(c, d);
  return rc;
}

/* ---- setup -------------------------------------------------------------------------------- */

static cuda_ctx the_ctx;
static pa_backend cuda_backend = {
    .name = "cuda",
    .device = PA_CUDA,
    .ctx = &the_ctx,
    .alloc = cuda_alloc,
    .release = cuda_release,
    .to_host = cuda_to_host,
    .from_host = cuda_from_host,
    .sync = cuda_sync,
    .linear = cuda_linear,
    .embedding = cuda_embedding,
    .layernorm = cuda_layernorm,
    .rmsnorm = cuda_rmsnorm,
    .activation = cuda_activation,
    .add = cuda_add,
    .mul = cuda_mul,
    .affine = cuda_affine,
    .modulate = cuda_modulate,
    .channel_affine = cuda_channel_affine,
    .grn = cuda_grn,
    .conv2d = cuda_conv2d,
    .conv_transpose2d = cuda_conv_transpose2d,
    .pixel_unshuffle = cuda_pixel_unshuffle,
    .pixel_shuffle = cuda_pixel_shuffle,
    .concat = cuda_concat,
    .attention = cuda_attention,
    .vq_nearest = cuda_vq_nearest,
    .copy = cuda_copy,
    .upload_param = cuda_upload_param,
    .sample = cuda_sample,
    .diffuzz_step = cuda_diffuzz_step,
};

int pa_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int pa_cuda_device_name(char *buf, size_t cap) {
  struct cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  snprintf(buf, cap, "%s, sm_%d%d, %.1f GiB", prop.name, prop.major, prop.minor,
           (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024));
  return PA_OK;
}

#define WORKSPACE_BYTES ((size_t)32 << 20)

static int cuda_init(cuda_ctx *c) {
  int rc = PA_OK;
  if (pa_cuda_device_count() < 1) return pa_fail(PA_ERR_DEVICE, "cuda: no CUDA device");
  const char *prec = getenv("PAELLA_CUDA_PRECISION");
  c->fp32_gemm = prec && strcmp(prec, "fp32") == 0;
  pthread_mutex_init(&c->mu, NULL);
  CUDA_TRY(cudaSetDevice(0));
  CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  CUBLAS_TRY(cublasLtCreate(&c->lt));
  c->workspace_size = WORKSPACE_BYTES;
  CUDA_TRY(cudaMalloc(&c->workspace, c->workspace_size));
  CUDA_TRY(cudaMalloc((void **)&c->err_flag, sizeof(int)));
  CUDA_TRY(cudaMemset(c->err_flag, 0, sizeof(int)));
  CUDA_TRY(cudaDeviceGetAttribute(&c->max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  CUDA_TRY(pa_k_attention_init(c->max_smem));
  return PA_OK;
fail:
  return rc;
}

static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
static int init_state; /* 0 not tried, 1 ready, -1 failed */
static char init_err[256];

pa_backend *pa_cuda_backend(void) {
  pthread_mutex_lock(&init_mu);
  if (init_state == 0) {
    int rc = cuda_init(&the_ctx);
    init_state = rc ? -1 : 1;
    if (rc) snprintf(init_err, sizeof init_err, "%s", pa_errmsg());
  }
  int st = init_state;
  pthread_mutex_unlock(&init_mu);
  if (st < 0) {
    pa_fail(PA_ERR_DEVICE, "%s", init_err);
    return NULL;
  }
  return &cuda_backend;
}
