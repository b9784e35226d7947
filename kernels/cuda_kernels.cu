/* The CUDA backend's kernels (see cuda_internal.h for the launcher contracts). Activations
 * are F32 NHWC; GEMMs run in cuBLASLt (cuda_backend.c), so what is here is everything that
 * is not a GEMM: casts, norms, GRN, grouped/depthwise conv, im2col and the transposed-conv
 * gather, layout ops, attention over concatenated keys, VQ argmin and the fused sampler.
 * Correctness first: simple one-pass kernels, reductions in F32 with two-pass variance. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "kernels/cuda_internal.h"
#include "model/sampler.h"
#include "ops/rng.h"

#define THREADS 256

static inline unsigned blocks_for(int64_t n, int threads = THREADS) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : (b > 1048576 ? 1048576 : b)); /* grid-stride beyond this */
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float act_apply(float v, pa_act act) {
  switch (act) {
    case PA_ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case PA_ACT_GELU_TANH: return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case PA_ACT_SILU: return v / (1.0f + expf(-v));
    default: return v;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. */
__device__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads(); /* part[] may still be read by a previous call */
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < nw ? part[lane] : 0.0f;
    t = warp_sum(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  return total;
}

/* ---- conversions and elementwise ---------------------------------------------------------- */

__global__ void k_f32_to_bf16(pa_bf16_bits *y, const float *x, int64_t n) {
  GRID_STRIDE(i, n) y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}
__global__ void k_bf16_to_f32(float *y, const pa_bf16_bits *x, int64_t n) {
  GRID_STRIDE(i, n) y[i] = __bfloat162float(__ushort_as_bfloat16(x[i]));
}
__global__ void k_bias_act(float *y, const float *x, const float *bias, int64_t n, int64_t N, pa_act act) {
  GRID_STRIDE(i, n) y[i] = act_apply(x[i] + (bias ? bias[i % N] : 0.0f), act);
}
__global__ void k_add(float *y, const float *a, const float *b, float alpha, int64_t n) {
  GRID_STRIDE(i, n) y[i] = a[i] + alpha * b[i];
}
__global__ void k_mul(float *y, const float *a, const float *b, int64_t n) { GRID_STRIDE(i, n) y[i] = a[i] * b[i]; }
__global__ void k_affine(float *y, const float *x, float s, float t, int64_t n) { GRID_STRIDE(i, n) y[i] = x[i] * s + t; }
__global__ void k_modulate(float *y, const float *x, const float *am, int64_t P, int64_t C, int64_t n, int shared) {
  GRID_STRIDE(i, n) {
    int64_t c = i % C, b = shared ? 0 : i / (P * C);
    y[i] = x[i] * (1.0f + am[b * 2 * C + c]) + am[b * 2 * C + C + c];
  }
}
__global__ void k_channel_affine(float *y, const float *x, const float *sc, const float *sh, int64_t C, int64_t n) {
  GRID_STRIDE(i, n) y[i] = x[i] * sc[i % C] + sh[i % C];
}
__global__ void k_embedding(float *y, const int64_t *ids, const float *table, int64_t n, int64_t V, int64_t D, int *err) {
  GRID_STRIDE(i, n * D) {
    int64_t r = i / D, id = ids[r];
    bool ok = id >= 0 && id < V;
    if (!ok) *err = 1; /* reported by the next sync / to_host: no host round trip here */
    y[i] = ok ? table[id * D + i % D] : 0.0f;
  }
}

#define LAUNCH(kernel, n, ...)                                        \
  do {                                                                \
    if ((n) > 0) kernel<<<blocks_for(n), THREADS, 0, s>>>(__VA_ARGS__); \
    return cudaGetLastError();                                        \
  } while (0)

extern "C" cudaError_t pa_k_f32_to_bf16(cudaStream_t s, pa_bf16_bits *y, const float *x, int64_t n) {
  LAUNCH(k_f32_to_bf16, n, y, x, n);
}
extern "C" cudaError_t pa_k_bf16_to_f32(cudaStream_t s, float *y, const pa_bf16_bits *x, int64_t n) {
  LAUNCH(k_bf16_to_f32, n, y, x, n);
}
extern "C" cudaError_t pa_k_bias_act(cudaStream_t s, float *y, const float *x, const float *bias, int64_t n,
                                     int64_t N, pa_act act) {
  LAUNCH(k_bias_act, n, y, x, bias, n, N, act);
}
extern "C" cudaError_t pa_k_add(cudaStream_t s, float *y, const float *a, const float *b, float alpha, int64_t n) {
  LAUNCH(k_add, n, y, a, b, alpha, n);
}
extern "C" cudaError_t pa_k_mul(cudaStream_t s, float *y, const float *a, const float *b, int64_t n) {
  LAUNCH(k_mul, n, y, a, b, n);
}
extern "C" cudaError_t pa_k_affine(cudaStream_t s, float *y, const float *x, float sc, float sh, int64_t n) {
  LAUNCH(k_affine, n, y, x, sc, sh, n);
}
extern "C" cudaError_t pa_k_modulate(cudaStream_t s, float *y, const float *x, const float *am, int64_t B,
                                     int64_t P, int64_t C, int shared) {
  LAUNCH(k_modulate, B * P * C, y, x, am, P, C, B * P * C, shared);
}
extern "C" cudaError_t pa_k_channel_affine(cudaStream_t s, float *y, const float *x, const float *scale,
                                           const float *shift, int64_t R, int64_t C) {
  LAUNCH(k_channel_affine, R * C, y, x, scale, shift, C, R * C);
}
extern "C" cudaError_t pa_k_embedding(cudaStream_t s, float *y, const int64_t *ids, const float *table,
                                      int64_t n, int64_t V, int64_t D, int *err) {
  LAUNCH(k_embedding, n * D, y, ids, table, n, V, D, err);
}

/* ---- normalisation: one block per row -------------------------------------------------------- */

static inline int row_threads(int64_t C) { return C >= 1024 ? 512 : (C >= 256 ? 256 : (C >= 64 ? 64 : 32)); }

__global__ void k_layernorm(float *y, const float *x, const float *g, const float *bt, int64_t C, float eps) {
  const float *xr = x + blockIdx.x * C;
  float *yr = y + blockIdx.x * C;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
  float mean = block_sum(s) / (float)C;
  float v = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += (xr[c] - mean) * (xr[c] - mean);
  float inv = rsqrtf(block_sum(v) / (float)C + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float o = (xr[c] - mean) * inv;
    if (g) o *= g[c];
    if (bt) o += bt[c];
    yr[c] = o;
  }
}

__global__ void k_rmsnorm(float *y, const float *x, const float *g, int64_t C, float eps) {
  const float *xr = x + blockIdx.x * C;
  float *yr = y + blockIdx.x * C;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xr[c] * xr[c];
  float inv = rsqrtf(block_sum(s) / (float)C + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = xr[c] * inv * g[c];
}

extern "C" cudaError_t pa_k_layernorm(cudaStream_t s, float *y, const float *x, const float *gamma,
                                      const float *beta, int64_t R, int64_t C, float eps) {
  if (R > 0) k_layernorm<<<(unsigned)R, row_threads(C), 0, s>>>(y, x, gamma, beta, C, eps);
  return cudaGetLastError();
}
extern "C" cudaError_t pa_k_rmsnorm(cudaStream_t s, float *y, const float *x, const float *gamma, int64_t R,
                                    int64_t C, float eps) {
  if (R > 0) k_rmsnorm<<<(unsigned)R, row_threads(C), 0, s>>>(y, x, gamma, C, eps);
  return cudaGetLastError();
}

/* GRN: nx[b, c] = ||x[b, :, c]||_2 (a 32x8 tile per 32 channels), then the per-image mean of
 * nx, then y = gamma * x * nx / (mean + 1e-6) + beta + x. Safe in place. */
__global__ void k_grn_norms(float *nx, const float *x, int64_t P, int64_t C) {
  __shared__ float part[8][33];
  int64_t b = blockIdx.y, c = (int64_t)blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < C)
    for (int64_t p = threadIdx.y; p < P; p += 8) {
      float v = x[(b * P + p) * C + c];
      s += v * v;
    }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.0f;
    for (int r = 0; r < 8; r++) t += part[r][threadIdx.x];
    nx[b * C + c] = sqrtf(t);
  }
}
__global__ void k_grn_mean(float *inv, const float *nx, int64_t C) {
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += nx[blockIdx.x * C + c];
  float mean = block_sum(s) / (float)C;
  if (threadIdx.x == 0) inv[blockIdx.x] = 1.0f / (mean + 1e-6f);
}
__global__ void k_grn_apply(float *y, const float *x, const float *g, const float *bt, const float *nx,
                            const float *inv, int64_t P, int64_t C, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t c = i % C, b = i / (P * C);
    float v = x[i];
    y[i] = g[c] * (v * nx[b * C + c] * inv[b]) + bt[c] + v;
  }
}

extern "C" cudaError_t pa_k_grn(cudaStream_t s, float *y, const float *x, const float *gamma, const float *beta,
                                int64_t B, int64_t P, int64_t C, float *scratch) {
  if (B * P * C == 0) return cudaSuccess;
  float *nx = scratch, *inv = scratch + B * C;
  k_grn_norms<<<dim3((unsigned)((C + 31) / 32), (unsigned)B), dim3(32, 8), 0, s>>>(nx, x, P, C);
  k_grn_mean<<<(unsigned)B, row_threads(C), 0, s>>>(inv, nx, C);
  k_grn_apply<<<blocks_for(B * P * C), THREADS, 0, s>>>(y, x, gamma, beta, nx, inv, P, C, B * P * C);
  return cudaGetLastError();
}

/* ---- convolutions ------------------------------------------------------------------------- */

/* Input pixel offset for output tap (oy, ox, ky, kx), or -1 for a zero pad. */
__device__ __forceinline__ int64_t conv_src(const pa_k_conv_shape &sh, int64_t b, int64_t oy, int64_t ox, int ky, int kx) {
  int64_t iy = oy * sh.stride - sh.pad + ky, ix = ox * sh.stride - sh.pad + kx;
  if (iy < 0 || iy >= sh.H || ix < 0 || ix >= sh.W) {
    if (!sh.replicate) return -1;
    iy = iy < 0 ? 0 : (iy >= sh.H ? sh.H - 1 : iy);
    ix = ix < 0 ? 0 : (ix >= sh.W ? sh.W - 1 : ix);
  }
  return ((b * sh.H + iy) * sh.W + ix) * sh.C;
}

__global__ void k_im2col(void *cols, int bf16, const float *x, pa_k_conv_shape sh, int64_t n) {
  int64_t Kc = sh.C * sh.kh * sh.kw;
  GRID_STRIDE(i, n) {
    int64_t m = i / Kc, col = i % Kc;
    int64_t c = col / (sh.kh * sh.kw);
    int r = (int)(col % (sh.kh * sh.kw)), ky = r / sh.kw, kx = r % sh.kw;
    int64_t ox = m % sh.Wo, oy = (m / sh.Wo) % sh.Ho, b = m / (sh.Wo * sh.Ho);
    int64_t src = conv_src(sh, b, oy, ox, ky, kx);
    float v = src < 0 ? 0.0f : x[src + c];
    if (bf16)
      ((pa_bf16_bits *)cols)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else
      ((float *)cols)[i] = v;
  }
}

__global__ void k_conv_grouped(float *y, const float *x, const float *w, const float *bias, pa_k_conv_shape sh, int64_t n) {
  int64_t Ig = sh.C / sh.groups, Og = sh.O / sh.groups;
  GRID_STRIDE(i, n) {
    int64_t o = i % sh.O, pix = i / sh.O;
    int64_t ox = pix % sh.Wo, oy = (pix / sh.Wo) % sh.Ho, b = pix / (sh.Wo * sh.Ho);
    int64_t cin = (o / Og) * Ig;
    float acc = bias ? bias[o] : 0.0f;
    for (int ky = 0; ky < sh.kh; ky++)
      for (int kx = 0; kx < sh.kw; kx++) {
        int64_t src = conv_src(sh, b, oy, ox, ky, kx);
        if (src < 0) continue;
        const float *in = x + src + cin, *wo = w + o * Ig * sh.kh * sh.kw + ky * sh.kw + kx;
        for (int64_t j = 0; j < Ig; j++) acc += in[j] * wo[j * sh.kh * sh.kw];
      }
    y[i] = acc;
  }
}

/* Output (oy, ox, o) sums the GEMM columns of the input pixels (iy, ix) with
 * iy*stride - pad + ky == oy (same for x): a gather, so no atomics. */
__global__ void k_convt_gather(float *y, const float *cols, const float *bias, pa_k_conv_shape sh, int64_t n) {
  int64_t N = sh.O * sh.kh * sh.kw;
  GRID_STRIDE(i, n) {
    int64_t o = i % sh.O, pix = i / sh.O;
    int64_t ox = pix % sh.Wo, oy = (pix / sh.Wo) % sh.Ho, b = pix / (sh.Wo * sh.Ho);
    float acc = bias ? bias[o] : 0.0f;
    for (int ky = 0; ky < sh.kh; ky++) {
      int64_t ty = oy + sh.pad - ky;
      if (ty < 0 || ty % sh.stride || ty / sh.stride >= sh.H) continue;
      for (int kx = 0; kx < sh.kw; kx++) {
        int64_t tx = ox + sh.pad - kx;
        if (tx < 0 || tx % sh.stride || tx / sh.stride >= sh.W) continue;
        acc += cols[((b * sh.H + ty / sh.stride) * sh.W + tx / sh.stride) * N + (o * sh.kh + ky) * sh.kw + kx];
      }
    }
    y[i] = acc;
  }
}

extern "C" cudaError_t pa_k_im2col(cudaStream_t s, void *cols, int bf16, const float *x, pa_k_conv_shape sh) {
  int64_t n = sh.B * sh.Ho * sh.Wo * sh.C * sh.kh * sh.kw;
  LAUNCH(k_im2col, n, cols, bf16, x, sh, n);
}
extern "C" cudaError_t pa_k_conv_grouped(cudaStream_t s, float *y, const float *x, const float *w,
                                         const float *bias, pa_k_conv_shape sh) {
  int64_t n = sh.B * sh.Ho * sh.Wo * sh.O;
  LAUNCH(k_conv_grouped, n, y, x, w, bias, sh, n);
}
extern "C" cudaError_t pa_k_convt_gather(cudaStream_t s, float *y, const float *cols, const float *bias,
                                         pa_k_conv_shape sh) {
  int64_t n = sh.B * sh.Ho * sh.Wo * sh.O;
  LAUNCH(k_convt_gather, n, y, cols, bias, sh, n);
}

/* ---- layout ------------------------------------------------------------------------------ */

/* Indexed by the full-resolution element (b, Y, X, c); the small grid holds channel
 * c*p*p + (Y%p)*p + X%p at (Y/p, X/p). */
__global__ void k_pixel_shuffle(float *y, const float *x, int64_t Hs, int64_t Ws, int64_t C, int p, int up, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t c = i % C, X = (i / C) % (Ws * p), Y = (i / (C * Ws * p)) % (Hs * p), b = i / (C * Ws * p * Hs * p);
    int64_t small = ((b * Hs + Y / p) * Ws + X / p) * C * p * p + c * p * p + (Y % p) * p + X % p;
    if (up)
      y[i] = x[small];
    else
      y[small] = x[i];
  }
}
__global__ void k_concat(float *y, const float *a, const float *b, int64_t ia, int64_t ib, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t o = i / (ia + ib), r = i % (ia + ib);
    y[i] = r < ia ? a[o * ia + r] : b[o * ib + r - ia];
  }
}

extern "C" cudaError_t pa_k_pixel_shuffle(cudaStream_t s, float *y, const float *x, int64_t B, int64_t Hs,
                                          int64_t Ws, int64_t C, int p, int up) {
  int64_t n = B * Hs * p * Ws * p * C;
  LAUNCH(k_pixel_shuffle, n, y, x, Hs, Ws, C, p, up, n);
}
extern "C" cudaError_t pa_k_concat(cudaStream_t s, float *y, const float *a, const float *b, int64_t outer,
                                   int64_t ia, int64_t ib) {
  int64_t n = outer * (ia + ib);
  LAUNCH(k_concat, n, y, a, b, ia, ib, n);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* One block = qt queries (one warp each) of one (image, head). Keys and values stream through
 * shared memory in tiles of 32 rows, read once per qt queries; the qt score rows (Lk floats
 * each) stay in shared memory for the softmax. Head dim up to 256 (8 accumulators a lane). */
#define ATT_TILE 32
#define ATT_MAX_D 256

extern "C" size_t pa_k_attention_smem(int64_t Lk, int64_t d, int qt) {
  return (size_t)(qt * d + qt * Lk + ATT_TILE * (d + 1)) * sizeof(float);
}

/* Element `col` of key (or value) j of row b: the first Lk1 keys from k, the rest from k2. */
__device__ __forceinline__ float key_at(const float *k, const float *k2, const pa_k_attn_shape &sh, int64_t b,
                                        int64_t j, int64_t col) {
  if (j < sh.Lk1) return k[(b * sh.Lk1 + j) * sh.kv_ld + col];
  return k2[(b * (sh.Lk - sh.Lk1) + j - sh.Lk1) * sh.kv2_ld + col];
}

__global__ void k_attention(float *y, const float *q, const float *k, const float *v, pa_k_attn_shape sh, int qt) {
  extern __shared__ float smem[];
  int64_t d = sh.C / sh.H, Lk = sh.Lk;
  float *qs = smem, *S = qs + qt * d, *tile = S + qt * Lk;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, h = blockIdx.y;
  int64_t b = blockIdx.z, i = (int64_t)blockIdx.x * qt + warp;
  bool live = i < sh.Lq;
  /* keys past Lb are padding: the row runs as if it had only Lb keys (uniform per block) */
  int64_t Lb = Lk - (sh.key_pad ? sh.key_pad[b] : 0);
  const float *kw = sh.key_weight ? sh.key_weight + (sh.kw_rows ? b * sh.nw : 0) : NULL;
  for (int64_t c = lane; c < d; c += 32) qs[warp * d + c] = live ? q[(b * sh.Lq + i) * sh.q_ld + h * d + c] : 0.0f;
  /* scores */
  for (int64_t j0 = 0; j0 < Lb; j0 += ATT_TILE) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < ATT_TILE * d; e += blockDim.x) {
      int64_t j = e / d, c = e % d;
      tile[j * (d + 1) + c] = j0 + j < Lb ? key_at(k, sh.k2, sh, b, j0 + j, h * d + c) : 0.0f;
    }
    __syncthreads();
    int64_t j = j0 + lane;
    if (live && j < Lb) {
      float acc = 0.0f;
      for (int64_t c = 0; c < d; c++) acc += qs[warp * d + c] * tile[lane * (d + 1) + c];
      acc *= sh.scale;
      if (sh.pos_bias) acc += sh.pos_bias[((int64_t)h * sh.Lq + i) * Lk + j];
      if (sh.causal && j > i) acc = -INFINITY;
      S[warp * Lk + j] = acc;
    }
  }
  /* softmax of the warp's row, then the key weights of the last nw keys (no renormalisation) */
  if (live) {
    float *row = S + warp * Lk, mx = -INFINITY, sum = 0.0f;
    for (int64_t j = lane; j < Lb; j += 32) mx = fmaxf(mx, row[j]);
    mx = warp_max(mx);
    for (int64_t j = lane; j < Lb; j += 32) {
      float e = mx == -INFINITY ? 0.0f : expf(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int64_t j = lane; j < Lb; j += 32) {
      float p = row[j] * inv;
      if (kw && j >= Lb - sh.nw) p *= kw[j - (Lb - sh.nw)];
      row[j] = p;
    }
  }
  /* out = P @ V */
  float acc[ATT_MAX_D / 32];
  for (int t = 0; t < ATT_MAX_D / 32; t++) acc[t] = 0.0f;
  for (int64_t j0 = 0; j0 < Lb; j0 += ATT_TILE) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < ATT_TILE * d; e += blockDim.x) {
      int64_t j = e / d, c = e % d;
      tile[j * (d + 1) + c] = j0 + j < Lb ? key_at(v, sh.v2, sh, b, j0 + j, h * d + c) : 0.0f;
    }
    __syncthreads();
    if (!live) continue;
    int64_t jn = Lb - j0 < ATT_TILE ? Lb - j0 : ATT_TILE;
    for (int64_t j = 0; j < jn; j++) {
      float p = S[warp * Lk + j0 + j];
#pragma unroll
      for (int t = 0; t < ATT_MAX_D / 32; t++)
        if (lane + 32 * t < d) acc[t] += p * tile[j * (d + 1) + lane + 32 * t];
    }
  }
  if (live)
#pragma unroll
    for (int t = 0; t < ATT_MAX_D / 32; t++)
      if (lane + 32 * t < d) y[(b * sh.Lq + i) * sh.C + h * d + lane + 32 * t] = acc[t];
}

extern "C" cudaError_t pa_k_attention_init(int max_smem) {
  return cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
}

extern "C" cudaError_t pa_k_attention(cudaStream_t s, float *y, const float *q, const float *k, const float *v,
                                      pa_k_attn_shape sh, int qt) {
  if (sh.B * sh.Lq == 0) return cudaSuccess;
  int64_t d = sh.C / sh.H;
  if (d > ATT_MAX_D) return cudaErrorInvalidValue;
  dim3 grid((unsigned)((sh.Lq + qt - 1) / qt), (unsigned)sh.H, (unsigned)sh.B);
  k_attention<<<grid, 32 * qt, pa_k_attention_smem(sh.Lk, d, qt), s>>>(y, q, k, v, sh, qt);
  return cudaGetLastError();
}

/* ---- vector quantisation ------------------------------------------------------------------ */

/* (distance, index) pairs: the smaller distance wins, ties go to the smaller index (argmin). */
__device__ __forceinline__ void argmin_merge(float &bd, int64_t &bk, float d, int64_t k) {
  if (d < bd || (d == bd && k < bk)) {
    bd = d;
    bk = k;
  }
}

__global__ void k_vq_nearest(int64_t *idx, const float *z, const float *cb, int64_t K, int64_t C) {
  __shared__ float sd[THREADS];
  __shared__ int64_t sk[THREADS];
  const float *zn = z + blockIdx.x * C;
  float bd = INFINITY;
  int64_t bk = INT64_MAX;
  for (int64_t kk = threadIdx.x; kk < K; kk += blockDim.x) {
    float d = 0.0f;
    for (int64_t c = 0; c < C; c++) {
      float t = zn[c] - cb[kk * C + c];
      d += t * t;
    }
    argmin_merge(bd, bk, d, kk);
  }
  sd[threadIdx.x] = bd;
  sk[threadIdx.x] = bk;
  __syncthreads();
  for (int st = blockDim.x / 2; st > 0; st >>= 1) {
    if ((int)threadIdx.x < st) argmin_merge(sd[threadIdx.x], sk[threadIdx.x], sd[threadIdx.x + st], sk[threadIdx.x + st]);
    __syncthreads();
  }
  if (threadIdx.x == 0) idx[blockIdx.x] = sk[0] == INT64_MAX ? 0 : sk[0];
}

extern "C" cudaError_t pa_k_vq_nearest(cudaStream_t s, int64_t *idx, const float *z, const float *cb, int64_t N,
                                       int64_t K, int64_t C) {
  if (N > 0) k_vq_nearest<<<(unsigned)N, THREADS, 0, s>>>(idx, z, cb, K, C);
  return cudaGetLastError();
}

/* ---- the fused sampler -------------------------------------------------------------------- */

/* (score, class) pairs: the larger score wins, ties go to the smaller class, as the host's
 * strict `>` scan in class order. */
__device__ __forceinline__ void argmax_merge(float &bv, int &bk, float v, int k) {
  if (v > bv || (v == bv && k < bk)) {
    bv = v;
    bk = k;
  }
}

/* One block per (position, image): every class scored once, only the winner written. Each
 * thread takes groups of 4 classes, which share one Philox call (counter {k>>2, ...}). */
__global__ void k_sample(pa_k_sample_args a) {
  __shared__ float sv[THREADS];
  __shared__ int sk[THREADS];
  int64_t q = blockIdx.x, b = blockIdx.y, row = (b * a.n + q) * a.K;
  uint64_t seed = (uint64_t)a.seeds[b];
  /* positions of the second region read the second prompt's logits */
  bool second = a.regions == 1 ? q % a.w >= a.w / 2 : a.regions == 2 ? q / a.w >= a.h / 2 : false;
  const float *cond = second ? a.cond2 : a.cond;
  float bv = -INFINITY;
  int bk = INT_MAX;
  for (int g = threadIdx.x; g < (a.K + 3) / 4; g += blockDim.x) {
    uint32_t r[4] = {0, 0, 0, 0};
    if (!a.argmax) {
      uint32_t ctr[4] = {(uint32_t)g, (uint32_t)q, a.step, PA_RNG_SAMPLE};
      pa_philox4x32_hd(ctr, seed, r);
    }
    for (int sub = 0; sub < 4; sub++) {
      int k = 4 * g + sub;
      if (k >= a.K) break;
      float v = cond[row + k];
      if (a.uncond) v = pa_cfg_combine(v, a.uncond[row + k], a.cfg);
      if (!a.argmax) {
        if (v == -INFINITY) continue;
        v = pa_gumbel_score(v, a.temp, pa_u32_to_uniform_open(r[sub]));
      }
      if (!(v > -INFINITY)) continue; /* -inf and NaN never win, as on the host */
      argmax_merge(bv, bk, v, k);
    }
  }
  sv[threadIdx.x] = bv;
  sk[threadIdx.x] = bk;
  __syncthreads();
  for (int st = blockDim.x / 2; st > 0; st >>= 1) {
    if ((int)threadIdx.x < st) argmax_merge(sv[threadIdx.x], sk[threadIdx.x], sv[threadIdx.x + st], sk[threadIdx.x + st]);
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  int64_t tok = sk[0] == INT_MAX ? 0 : sk[0];
  if (a.renoise) {
    uint32_t ctr[4] = {0, (uint32_t)q, a.step, PA_RNG_RENOISE}, r[4];
    pa_philox4x32_hd(ctr, seed, r);
    if (pa_u32_to_uniform(r[0]) <= a.renoise_t) tok = a.init[b * a.n + q];
  }
  if (a.keep && a.keep[q]) tok = a.pinned[b * a.n + q];
  a.tokens[b * a.n + q] = tok;
}

__global__ void k_diffuzz_step(float *x, const float *ec, const float *eu, const float *z, int64_t n, float cfg,
                               int ddim, double a, double ac, double acp, double sd) {
  GRID_STRIDE(i, n) {
    float e = pa_prior_guidance(ec[i], eu[i], cfg);
    x[i] = ddim ? pa_diffuzz_ddim(x[i], e, ac, acp) : pa_diffuzz_ddpm(x[i], e, z[i], a, ac, sd);
  }
}
extern "C" cudaError_t pa_k_diffuzz_step(cudaStream_t s, float *x, const float *eps_c, const float *eps_u,
                                         const float *z, int64_t n, float cfg, int ddim, double a, double ac,
                                         double acp, double sd) {
  LAUNCH(k_diffuzz_step, n, x, eps_c, eps_u, z, n, cfg, ddim, a, ac, acp, sd);
}

extern "C" cudaError_t pa_k_sample(cudaStream_t s, const pa_k_sample_args *a) {
  if (a->B * a->n == 0) return cudaSuccess;
  if (a->n > 2147483647 || a->B > 65535) return cudaErrorInvalidValue;
  k_sample<<<dim3((unsigned)a->n, (unsigned)a->B), THREADS, 0, s>>>(*a);
  return cudaGetLastError();
}

__global__ void k_gumbel_table(float *out) {
  GRID_STRIDE(i, (int64_t)1 << 24) out[i] = pa_gumbel(pa_u32_to_uniform_open((uint32_t)i << 8));
}
extern "C" cudaError_t pa_k_gumbel_table(cudaStream_t s, float *out) {
  LAUNCH(k_gumbel_table, (int64_t)1 << 24, out);
}

/* ---- fallback GEMM: 16x16 tiles through shared memory, F32 accumulation ------------------- */

__global__ void k_gemm(float *y, const pa_bf16_bits *x, const pa_bf16_bits *w, const float *bias, int64_t M,
                       int64_t N, int64_t K, int w_nk, pa_act act) {
  __shared__ float xs[16][17], ws[16][17];
  int tx = threadIdx.x, ty = threadIdx.y;
  int64_t m = (int64_t)blockIdx.x * 16 + ty, n = (int64_t)blockIdx.y * 16 + tx;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    int64_t kx = k0 + tx, kw = k0 + ty, nw = (int64_t)blockIdx.y * 16 + tx;
    xs[ty][tx] = m < M && kx < K ? __bfloat162float(__ushort_as_bfloat16(x[m * K + kx])) : 0.0f;
    pa_bf16_bits wb = 0;
    if (nw < N && kw < K) wb = w_nk ? w[nw * K + kw] : w[kw * N + nw];
    ws[ty][tx] = __bfloat162float(__ushort_as_bfloat16(wb)); /* ws[k][n] */
    __syncthreads();
    for (int kk = 0; kk < 16; kk++) acc += xs[ty][kk] * ws[kk][tx];
    __syncthreads();
  }
  if (m < M && n < N) y[m * N + n] = act_apply(acc + (bias ? bias[n] : 0.0f), act);
}

extern "C" cudaError_t pa_k_gemm_fallback(cudaStream_t s, float *y, const pa_bf16_bits *x, const pa_bf16_bits *w,
                                          const float *bias, int64_t M, int64_t N, int64_t K, int w_nk, pa_act act) {
  if (M == 0 || N == 0) return cudaSuccess;
  if ((N + 15) / 16 > 65535) return cudaErrorInvalidValue;
  k_gemm<<<dim3((unsigned)((M + 15) / 16), (unsigned)((N + 15) / 16)), dim3(16, 16), 0, s>>>(y, x, w, bias, M, N, K, w_nk, act);
  return cudaGetLastError();
}
