/* GEMMs of the CUDA backend through cuBLASLt: one plan (descriptors + the heuristic's
 * algorithm) per signature, created on first use and kept in a small cache, so the heuristic
 * runs once per shape. Row-major Y(M, N) = X(M, K) W^T is the column-major
 * Y^T(N, M) = W(N, K) X^T(K, M): A = w, B = x, D = y, no copies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_ctx.h"

/* Largest power of two (<= 16) dividing the address: cuBLASLt's kernels need to know. */
static int align_of(const void *p) {
  uintptr_t a = (uintptr_t)p;
  int al = 16;
  while (al > 1 && a % (uintptr_t)al) al /= 2;
  return al;
}

static void plan_free(cuda_plan *p) {
  if (!p->used) return;
  if (p->desc) cublasLtMatmulDescDestroy(p->desc);
  if (p->a) cublasLtMatrixLayoutDestroy(p->a);
  if (p->b) cublasLtMatrixLayoutDestroy(p->b);
  if (p->d) cublasLtMatrixLayoutDestroy(p->d);
  memset(p, 0, sizeof *p);
}

void cuda_plans_destroy(cuda_ctx *c) {
  for (int i = 0; i < CUDA_PLANS; i++) plan_free(&c->plans[i]);
}

/* Descriptors and the heuristic's first algorithm; has_algo false when it offers none. */
static int plan_init(cuda_ctx *c, cuda_plan *p) {
  int rc = PA_OK;
  cublasLtMatmulPreference_t pref = NULL;
  cudaDataType_t ab = p->fp32 ? CUDA_R_32F : CUDA_R_16BF;
  cublasOperation_t ta = p->w_nk ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  cublasLtEpilogue_t epi = (cublasLtEpilogue_t)p->epi;
  cudaDataType_t bias_t = CUDA_R_32F;
  CUBLAS_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  if (epi & CUBLASLT_EPILOGUE_BIAS)
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_t, sizeof bias_t));
  /* A = w: stored (K rows, N cols) column-major when w is (N, K) row-major */
  if (p->w_nk)
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)p->K, (uint64_t)p->N, p->K));
  else
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)p->N, (uint64_t)p->K, p->N));
  CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)p->K, (uint64_t)p->M, p->K));
  CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->d, CUDA_R_32F, (uint64_t)p->N, (uint64_t)p->M, p->N));
  CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
  CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &c->workspace_size, sizeof c->workspace_size));
  uint32_t al = (uint32_t)p->align;
  CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al));
  CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al));
  CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al));
  CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al));
  cublasLtMatmulHeuristicResult_t res;
  int n = 0;
  /* "no algorithm" is an answer here, not an error: the caller falls back */
  if (cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &res, &n) ==
          CUBLAS_STATUS_SUCCESS &&
      n > 0) {
    p->algo = res.algo;
    p->has_algo = true;
  } else {
    fprintf(stderr, "paella cuda: no cuBLASLt %s algorithm for GEMM M=%lld N=%lld K=%lld (w %s, epilogue %d, "
                    "alignment %d B): the naive fallback kernel runs it (slow)\n",
            p->fp32 ? "fp32" : "bf16", (long long)p->M, (long long)p->N, (long long)p->K, p->w_nk ? "(N, K)" : "(K, N)",
            p->epi, p->align);
  }
fail:
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  return rc;
}

/* The cached plan of a signature, creating it on a miss (caller holds c->mu). */
static int plan_get(cuda_ctx *c, cuda_plan key, cuda_plan **out) {
  for (int i = 0; i < CUDA_PLANS; i++) {
    cuda_plan *p = &c->plans[i];
    if (p->used && p->M == key.M && p->N == key.N && p->K == key.K && p->w_nk == key.w_nk &&
        p->fp32 == key.fp32 && p->epi == key.epi && p->align == key.align) {
      *out = p;
      return PA_OK;
    }
  }
  int slot = -1;
  for (int i = 0; i < CUDA_PLANS && slot < 0; i++)
    if (!c->plans[i].used) slot = i;
  if (slot < 0) { /* full: evict round-robin (a serving process sees few distinct shapes) */
    slot = c->next_evict;
    c->next_evict = (c->next_evict + 1) % CUDA_PLANS;
    plan_free(&c->plans[slot]);
  }
  cuda_plan *p = &c->plans[slot];
  *p = key;
  p->used = true;
  int rc = plan_init(c, p);
  if (rc) {
    plan_free(p);
    return rc;
  }
  *out = p;
  return PA_OK;
}

/* The epilogue cuBLASLt applies; what it cannot (erf GELU, SiLU, a misaligned bias) runs as
 * one bias+activation pass afterwards. cuBLASLt's GELU is the tanh form. */
static cublasLtEpilogue_t choose_epilogue(const float *bias, pa_act act, bool *post) {
  bool bias_ok = bias && align_of(bias) == 16;
  *post = (bias && !bias_ok) || (act != PA_ACT_NONE && act != PA_ACT_GELU_TANH) ||
          (act == PA_ACT_GELU_TANH && bias && !bias_ok);
  if (*post) return CUBLASLT_EPILOGUE_DEFAULT;
  if (act == PA_ACT_GELU_TANH) return bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  return bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
}

static int run_plan(cuda_ctx *c, cuda_plan *p, float *y, const void *a, const void *b, const float *bias) {
  const float one = 1.0f, zero = 0.0f;
  if (p->epi & CUBLASLT_EPILOGUE_BIAS)
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  CHECK_CUBLAS(cublasLtMatmul(c->lt, p->desc, &one, a, p->a, b, p->b, &zero, y, p->d, y, p->d, &p->algo,
                              c->workspace, c->workspace_size, c->stream));
  return PA_OK;
}

/* The weight as a GEMM operand: bf16 bits (own copy, parameter copy, or a converted scratch
 * the caller frees), or the F32 data in fp32 mode. */
static int weight_operand(cuda_ctx *c, const pa_tensor *w, bool fp32, const void **out, void **scratch) {
  *scratch = NULL;
  if (fp32) {
    if (w->dtype != PA_F32) return pa_fail(PA_ERR_UNSUPPORTED, "cuda gemm: fp32 mode needs F32 weights");
    *out = w->data;
    return PA_OK;
  }
  if (w->dtype == PA_BF16) {
    *out = w->data;
    return PA_OK;
  }
  if (w->dtype != PA_F32) return pa_fail(PA_ERR_UNSUPPORTED, "cuda gemm: weights must be F32 or BF16");
  const uint16_t *shadow = cuda_param_bf16(c, w->data);
  if (shadow) {
    *out = shadow;
    return PA_OK;
  }
  /* not a registered parameter (an uploaded test tensor, an activation): convert per call */
  if (!(*scratch = cuda_scratch(c, (size_t)pa_numel(w) * 2))) return PA_ERR_NOMEM;
  CHECK_CUDA(pa_k_f32_to_bf16(c->stream, *scratch, w->data, pa_numel(w)));
  *out = *scratch;
  return PA_OK;
}

int cuda_gemm(cuda_ctx *c, float *y, const float *x32, const uint16_t *x16, const pa_tensor *w,
              const float *bias, int64_t M, int64_t N, int64_t K, int w_nk, pa_act act) {
  if (M == 0 || N == 0) return PA_OK;
  if (K == 0) {
    CHECK_CUDA(cudaMemsetAsync(y, 0, (size_t)(M * N) * sizeof(float), c->stream));
    return bias || act ? (pa_k_bias_act(c->stream, y, y, bias, M * N, N, act) ? PA_ERR_DEVICE : PA_OK) : PA_OK;
  }
  int rc = PA_OK;
  bool fp32 = c->fp32_gemm && x32;
  void *xs = NULL, *ws = NULL;
  const void *xa = fp32 ? (const void *)x32 : (const void *)x16, *wa = NULL;
  if (!fp32 && !x16) { /* activations are F32: one cast pass into a bf16 operand */
    if (!(xs = cuda_scratch(c, (size_t)(M * K) * 2))) return PA_ERR_NOMEM;
    CUDA_TRY(pa_k_f32_to_bf16(c->stream, xs, x32, M * K));
    xa = xs;
  }
  PA_TRY(weight_operand(c, w, fp32, &wa, &ws));
  bool post;
  cublasLtEpilogue_t epi = choose_epilogue(bias, act, &post);
  int al = align_of(xa) < align_of(wa) ? align_of(xa) : align_of(wa);
  al = align_of(y) < al ? align_of(y) : al;
  cuda_plan key = {.M = M, .N = N, .K = K, .w_nk = w_nk, .fp32 = fp32, .epi = (int)epi, .align = al}, *p = NULL;
  pthread_mutex_lock(&c->mu);
  rc = plan_get(c, key, &p);
  if (rc == PA_OK && p->has_algo) rc = run_plan(c, p, y, wa, xa, bias);
  if (rc == PA_OK && !p->has_algo && !fp32) c->gemm_fallbacks++;
  pthread_mutex_unlock(&c->mu);
  if (rc) goto fail;
  if (!p->has_algo) { /* cuBLASLt has no kernel for this shape/alignment: the simple one */
    if (fp32) {
      rc = pa_fail(PA_ERR_UNSUPPORTED, "cuda gemm: no cuBLASLt fp32 algorithm for %lldx%lldx%lld",
                   (long long)M, (long long)N, (long long)K);
      goto fail;
    }
    CUDA_TRY(pa_k_gemm_fallback(c->stream, y, xa, wa, bias, M, N, K, w_nk, act));
  } else if (post) {
    CUDA_TRY(pa_k_bias_act(c->stream, y, y, bias, M * N, N, act));
  }
fail:
  cuda_scratch_free(c, xs);
  cuda_scratch_free(c, ws);
  return rc;
}

int64_t pa_cuda_gemm_fallbacks(pa_backend *be) {
  cuda_ctx *c = be->ctx;
  pthread_mutex_lock(&c->mu);
  int64_t n = c->gemm_fallbacks;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* ---- the peak reference for the benchmarks ------------------------------------------------ */

/* dev (count bf16) = uniform values in [-1, 1) from the xorshift state *s: the peak is measured
 * on random operands, since tensor cores draw less power (and may clock higher) on zeros. */
static int upload_random_bf16(cuda_ctx *c, void *dev, size_t count, uint64_t *s) {
  uint16_t *h = malloc(count * sizeof *h);
  if (!h) return pa_fail(PA_ERR_NOMEM, "cuda gemm peak: out of host memory");
  for (size_t i = 0; i < count; i++) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    float x = (float)(*s >> 40) * 0x1p-23f - 1.0f;
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    h[i] = (uint16_t)(bits >> 16); /* bf16: the top half of the float */
  }
  int rc = PA_OK;
  CUDA_TRY(cudaMemcpyAsync(dev, h, count * sizeof *h, cudaMemcpyHostToDevice, c->stream));
  CUDA_TRY(cudaStreamSynchronize(c->stream)); /* before h is freed */
fail:
  free(h);
  return rc;
}

int pa_cuda_gemm_peak(pa_backend *be, int n, int iters, double *tflops) {
  cuda_ctx *c = be->ctx;
  int rc = PA_OK;
  size_t bytes = (size_t)n * n * 2;
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  void *a = cuda_scratch(c, bytes), *b = cuda_scratch(c, bytes), *d = cuda_scratch(c, bytes);
  cublasLtMatmulDesc_t desc = NULL;
  cublasLtMatrixLayout_t la = NULL;
  cublasLtMatmulPreference_t pref = NULL;
  cudaEvent_t e0 = NULL, e1 = NULL;
  if (!a || !b || !d) {
    rc = PA_ERR_NOMEM;
    goto fail;
  }
  PA_TRY(upload_random_bf16(c, a, (size_t)n * n, &rng));
  PA_TRY(upload_random_bf16(c, b, (size_t)n * n, &rng));
  cublasOperation_t tt = CUBLAS_OP_T;
  CUBLAS_TRY(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  CUBLAS_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &tt, sizeof tt));
  CUBLAS_TRY(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, (uint64_t)n, (uint64_t)n, n));
  CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
  CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &c->workspace_size, sizeof c->workspace_size));
  cublasLtMatmulHeuristicResult_t res;
  int nres = 0;
  CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(c->lt, desc, la, la, la, la, pref, 1, &res, &nres));
  if (nres == 0) {
    rc = pa_fail(PA_ERR_UNSUPPORTED, "cuda: no bf16 GEMM algorithm for %d^3", n);
    goto fail;
  }
  const float one = 1.0f, zero = 0.0f;
  CUDA_TRY(cudaEventCreate(&e0));
  CUDA_TRY(cudaEventCreate(&e1));
  for (int i = 0; i < iters + 3; i++) {
    if (i == 3) CUDA_TRY(cudaEventRecord(e0, c->stream));
    CUBLAS_TRY(cublasLtMatmul(c->lt, desc, &one, a, la, b, la, &zero, d, la, d, la, &res.algo, c->workspace,
                              c->workspace_size, c->stream));
  }
  CUDA_TRY(cudaEventRecord(e1, c->stream));
  CUDA_TRY(cudaEventSynchronize(e1));
  float ms = 0;
  CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
  *tflops = 2.0 * n * (double)n * n * iters / (ms * 1e-3) / 1e12;
fail:
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (desc) cublasLtMatmulDescDestroy(desc);
  cuda_scratch_free(c, a);
  cuda_scratch_free(c, b);
  cuda_scratch_free(c, d);
  return rc;
}
