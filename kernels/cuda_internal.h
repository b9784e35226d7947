/* Internal interface between the CUDA backend's host code (cuda_backend.c, C11) and its
 * kernels (cuda_kernels.cu). Every launcher enqueues on `s` without synchronising and
 * returns the launch status (cudaGetLastError); activations are F32, GEMM operands bf16
 * (stored as uint16_t bits), accumulation F32. Shapes in the comments are row-major. */
#ifndef PAELLA_KERNELS_CUDA_INTERNAL_H
#define PAELLA_KERNELS_CUDA_INTERNAL_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "ops/backend.h"
#include "ops/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A failing CUDA / cuBLAS call becomes pa_fail(PA_ERR_DEVICE) naming the call, file and line.
 * CHECK_* return from the function; *_TRY set rc and jump to the `fail:` label. */
#define CHECK_CUDA(call)                                                                      \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess)                                                                    \
      return pa_fail(PA_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,               \
                     cudaGetErrorString(e_));                                                 \
  } while (0)
#define CUDA_TRY(call)                                                                        \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      rc = pa_fail(PA_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,                 \
                   cudaGetErrorString(e_));                                                   \
      goto fail;                                                                              \
    }                                                                                         \
  } while (0)
#define CHECK_CUBLAS(call)                                                                    \
  do {                                                                                        \
    int s_ = (int)(call);                                                                     \
    if (s_ != 0)                                                                              \
      return pa_fail(PA_ERR_DEVICE, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call, \
                     s_);                                                                     \
  } while (0)
#define CUBLAS_TRY(call)                                                                      \
  do {                                                                                        \
    int s_ = (int)(call);                                                                     \
    if (s_ != 0) {                                                                            \
      rc = pa_fail(PA_ERR_DEVICE, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call,   \
                   s_);                                                                       \
      goto fail;                                                                              \
    }                                                                                         \
  } while (0)

typedef uint16_t pa_bf16_bits;

/* ---- conversions and elementwise ---------------------------------------------------------- */
cudaError_t pa_k_f32_to_bf16(cudaStream_t s, pa_bf16_bits *y, const float *x, int64_t n);
cudaError_t pa_k_bf16_to_f32(cudaStream_t s, float *y, const pa_bf16_bits *x, int64_t n);
/* y = act(x + bias[i % N]) over n elements (bias may be NULL) */
cudaError_t pa_k_bias_act(cudaStream_t s, float *y, const float *x, const float *bias, int64_t n,
                          int64_t N, pa_act act);
cudaError_t pa_k_add(cudaStream_t s, float *y, const float *a, const float *b, float alpha, int64_t n);
cudaError_t pa_k_mul(cudaStream_t s, float *y, const float *a, const float *b, int64_t n);
cudaError_t pa_k_affine(cudaStream_t s, float *y, const float *x, float sc, float sh, int64_t n);
/* x (B, P, C); am (B, 2C) */
cudaError_t pa_k_modulate(cudaStream_t s, float *y, const float *x, const float *am, int64_t B,
                          int64_t P, int64_t C, int shared);
/* x (R, C) */
cudaError_t pa_k_channel_affine(cudaStream_t s, float *y, const float *x, const float *scale,
                                const float *shift, int64_t R, int64_t C);
/* y (n, D) = table (V, D)[ids]; an id outside [0, V) writes zeros and sets *err = 1 */
cudaError_t pa_k_embedding(cudaStream_t s, float *y, const int64_t *ids, const float *table,
                           int64_t n, int64_t V, int64_t D, int *err);

/* ---- normalisation ------------------------------------------------------------------------ */
/* rows of C; gamma/beta optional (LayerNorm) / gamma required (RMS) */
cudaError_t pa_k_layernorm(cudaStream_t s, float *y, const float *x, const float *gamma,
                           const float *beta, int64_t R, int64_t C, float eps);
cudaError_t pa_k_rmsnorm(cudaStream_t s, float *y, const float *x, const float *gamma, int64_t R,
                         int64_t C, float eps);
/* x (B, P, C); nx scratch (B, C) + (B) floats */
cudaError_t pa_k_grn(cudaStream_t s, float *y, const float *x, const float *gamma, const float *beta,
                     int64_t B, int64_t P, int64_t C, float *scratch);

/* ---- convolutions and layout -------------------------------------------------------------- */
typedef struct {
  int64_t B, H, W, C;     /* input NHWC */
  int64_t Ho, Wo, O;      /* output */
  int kh, kw, stride, pad, groups;
  int replicate;          /* padding mode */
} pa_k_conv_shape;
/* cols (B*Ho*Wo, C*kh*kw), bf16 or F32, column (c*kh + ky)*kw + kx (PyTorch weight order) */
cudaError_t pa_k_im2col(cudaStream_t s, void *cols, int bf16, const float *x, pa_k_conv_shape sh);
/* grouped / depthwise direct conv, w (O, C/groups, kh, kw) F32, bias optional */
cudaError_t pa_k_conv_grouped(cudaStream_t s, float *y, const float *x, const float *w,
                              const float *bias, pa_k_conv_shape sh);
/* transposed conv gather: cols (B*H*W, O*kh*kw) -> y (B, Ho, Wo, O) + bias */
cudaError_t pa_k_convt_gather(cudaStream_t s, float *y, const float *cols, const float *bias,
                              pa_k_conv_shape sh);
/* (B, H, W, C) <-> (B, H/p, W/p, C*p*p); `up` = pixel_shuffle (x is the small grid) */
cudaError_t pa_k_pixel_shuffle(cudaStream_t s, float *y, const float *x, int64_t B, int64_t Hs,
                               int64_t Ws, int64_t C, int p, int up);
/* y (outer, ia + ib) = [a (outer, ia) | b (outer, ib)] */
cudaError_t pa_k_concat(cudaStream_t s, float *y, const float *a, const float *b, int64_t outer,
                        int64_t ia, int64_t ib);

/* ---- attention ---------------------------------------------------------------------------- */
typedef struct {
  int64_t B, Lq, Lk, C;
  int H;
  float scale;
  int causal;
  const float *pos_bias;   /* (H, Lq, Lk) or NULL */
  const float *key_weight; /* (nw) or (B, nw) when kw_rows, or NULL */
  int64_t nw;
  int kw_rows;
  const int32_t *key_pad;  /* (B): the last key_pad[b] keys of row b are padding, or NULL */
  const float *k2, *v2;    /* (B, Lk - Lk1, *) keys after the Lk1 of k/v, or NULL */
  int64_t Lk1, q_ld, kv_ld, kv2_ld; /* row strides in floats */
} pa_k_attn_shape;
/* Dynamic shared memory the attention kernel needs for a query tile of qt rows. */
size_t pa_k_attention_smem(int64_t Lk, int64_t d, int qt);
cudaError_t pa_k_attention_init(int max_smem); /* opt in to large dynamic shared memory */
cudaError_t pa_k_attention(cudaStream_t s, float *y, const float *q, const float *k, const float *v,
                           pa_k_attn_shape sh, int qt);

/* ---- vector quantisation, sampler, fallback GEMM ------------------------------------------- */
cudaError_t pa_k_vq_nearest(cudaStream_t s, int64_t *idx, const float *z, const float *cb, int64_t N,
                            int64_t K, int64_t C);
typedef struct {
  const float *cond, *uncond, *cond2; /* (B, n, K); cond2 feeds the second region */
  int regions;                         /* pa_sample_regions over the (h, w) grid */
  int64_t h, w;
  float cfg, temp;
  int argmax;
  const int64_t *seeds;                /* (B) */
  uint32_t step;
  int renoise;
  float renoise_t;
  const int64_t *init, *pinned;
  const uint8_t *keep;
  int64_t *tokens;
  int64_t B, n;
  int K;
} pa_k_sample_args;
cudaError_t pa_k_sample(cudaStream_t s, const pa_k_sample_args *a);
/* x (n) updated in place by one prior step (ops/rng.h pa_prior_guidance + pa_diffuzz_ddpm/ddim) */
cudaError_t pa_k_diffuzz_step(cudaStream_t s, float *x, const float *eps_c, const float *eps_u, const float *z,
                              int64_t n, float cfg, int ddim, double a, double ac, double acp, double sd);
/* Gumbel noise of every 24-bit open uniform (2^24 floats): the exhaustive host/device check. */
cudaError_t pa_k_gumbel_table(cudaStream_t s, float *out);
/* y(M, N) = x(M, K) @ W + bias, W (N, K) when w_nk else (K, N); bf16 operands, F32 out.
 * The fallback when cuBLASLt offers no algorithm (odd alignments of the tiny models). */
cudaError_t pa_k_gemm_fallback(cudaStream_t s, float *y, const pa_bf16_bits *x, const pa_bf16_bits *w,
                               const float *bias, int64_t M, int64_t N, int64_t K, int w_nk, pa_act act);

#ifdef __cplusplus
}
#endif

#endif
