/* The CPU backend's GEMM: OpenBLAS, partitioned by us so that the result does not depend on
 * the thread count.
 *
 * Why: Debian's OpenBLAS (0.3.21, OpenMP build) splits one sgemm across its threads in a way
 * that changes the floating-point result: with 2, 3 or 4 threads, for example, a (1024, 256)
 * x (256, 64) product differs from the 1-thread one in most of its elements (measured on
 * this machine; see docs/determinism.md). So every product here is cut into tiles whose
 * shape depends only on (M, N, K), never on the thread count; each tile is one
 * single-threaded BLAS call, and the tiles are spread over the OpenMP threads. Any thread
 * count computes every element with the same calls in the same order: identical bits. */
#ifndef PAELLA_OPS_CPU_GEMM_H
#define PAELLA_OPS_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* y(M, N) = alpha * x(M, K) @ W, where W = w^T for w (N, K) when w_nk, else w (K, N).
 * ldx, ldw, ldy are row strides in floats. y is overwritten (beta = 0). */
void pa_cpu_sgemm(bool w_nk, int64_t M, int64_t N, int64_t K, float alpha, const float *x, int64_t ldx,
                  const float *w, int64_t ldw, float *y, int64_t ldy);

/* The same as one single-threaded BLAS call, whatever the OpenMP setting: for callers that
 * partition the work themselves (attention) and call it from inside their own parallel
 * loops, or outside them. */
void pa_cpu_sgemm_serial(bool w_nk, int64_t M, int64_t N, int64_t K, float alpha, const float *x, int64_t ldx,
                         const float *w, int64_t ldw, float *y, int64_t ldy);

/* The tiling pa_cpu_sgemm uses for an (M, N) product: tm rows by tn columns (the last tiles
 * may be smaller). A function of M and N only; exposed for the tests. */
void pa_cpu_sgemm_tiles(int64_t M, int64_t N, int64_t *tm, int64_t *tn);

#endif
