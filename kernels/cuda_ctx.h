/* The CUDA backend's state, shared by its host files (C only). */
#ifndef PAELLA_KERNELS_CUDA_CTX_H
#define PAELLA_KERNELS_CUDA_CTX_H

#include <cublasLt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_internal.h"
#include "ops/ops.h"

typedef struct {
  void *ptr;
  size_t size;
} cuda_blk;

/* A network parameter: its F32 copy [f32, f32 + bytes) and the bf16 copy (or NULL). */
typedef struct {
  const void *f32;
  size_t bytes;
  const uint16_t *bf16;
} cuda_param;

/* A cuBLASLt plan for one GEMM signature, with the algorithm the heuristic chose. */
typedef struct {
  int64_t M, N, K;
  int w_nk, fp32, epi, align; /* epi: cublasLtEpilogue_t; align: min operand alignment */
  bool used, has_algo;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, d;
  cublasLtMatmulAlgo_t algo;
} cuda_plan;

#define CUDA_PLANS 256

typedef struct {
  cudaStream_t stream;
  cublasLtHandle_t lt;
  void *workspace;
  size_t workspace_size;
  int *err_flag; /* device int: set by kernels that detect bad input */
  int max_smem;  /* opt-in dynamic shared memory per block */
  bool fp32_gemm;
  pthread_mutex_t mu; /* allocator, parameter table, plan cache */
  /* allocator */
  cuda_blk *live, *free_list;
  size_t live_cap, live_n, live_used;
  int nfree, free_cap;
  size_t live_bytes, cached_bytes;
  /* parameters, sorted by f32 address */
  cuda_param *params;
  int nparams, params_cap;
  /* GEMM plans */
  cuda_plan plans[CUDA_PLANS];
  int next_evict;
  /* GEMM calls cuBLASLt had no algorithm for, run by the naive fallback kernel instead (each
   * such shape is also logged once, when its plan is made): never silent, it is far slower */
  int64_t gemm_fallbacks;
} cuda_ctx;

/* cuda_mem.c */
void *cuda_scratch(cuda_ctx *c, size_t n);
void cuda_scratch_free(cuda_ctx *c, void *p);
void cuda_mem_destroy(cuda_ctx *c);
pa_tensor *cuda_alloc(pa_backend *be, pa_dtype dt, int ndim, const int64_t *shape);
void cuda_release(pa_backend *be, pa_tensor *t);
pa_tensor *cuda_upload_param(pa_backend *be, const pa_tensor *host);
/* The bf16 copy of the parameter bytes at f32 (a parameter or a row view into one), or NULL. */
const uint16_t *cuda_param_bf16(cuda_ctx *c, const void *f32);

/* cuda_gemm.c: y(M, N) F32 = act(x(M, K) @ W + bias); W is w (N, K) transposed when w_nk, else
 * w (K, N). x is given as F32 (x32) or already bf16 (x16, e.g. an im2col); w is a device
 * tensor (a parameter's bf16 copy is used when it has one). */
int cuda_gemm(cuda_ctx *c, float *y, const float *x32, const uint16_t *x16, const pa_tensor *w,
              const float *bias, int64_t M, int64_t N, int64_t K, int w_nk, pa_act act);
void cuda_plans_destroy(cuda_ctx *c);

#endif
