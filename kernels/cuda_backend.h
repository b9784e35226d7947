/* The CUDA backend (built with -DPAELLA_CUDA=ON): pa_backend_by_name("cuda") returns it.
 *
 * Precision: activations stay F32 on the device (so every checked wrapper of ops/ops.c works
 * unchanged and the op-for-op comparison with the CPU reference is direct); network
 * parameters are uploaded once through pa_param as F32 plus, for every parameter of rank >= 2,
 * a bf16 copy that the GEMMs read. GEMMs run in cuBLASLt with bf16 operands and F32
 * accumulation/output (cached plans, bias / GELU-tanh epilogues); everything else is F32.
 * PAELLA_CUDA_PRECISION=fp32 in the environment makes the GEMMs F32 throughout (a diagnostic:
 * it isolates bf16 rounding from kernel bugs).
 *
 * Memory: a caching allocator (blocks rounded to 8 size classes per power of two, kept for
 * reuse; cudaMalloc only when no cached block fits, i.e. during the first forward). One
 * stream; ops enqueue and never synchronise; to_host and sync do, and report device-side
 * errors (an out-of-range embedding id) flagged by earlier kernels. */
#ifndef PAELLA_KERNELS_CUDA_BACKEND_H
#define PAELLA_KERNELS_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "ops/backend.h"

/* The backend on device 0; NULL with the error set when no device is usable. */
pa_backend *pa_cuda_backend(void);
/* Number of CUDA devices (0 when the driver or a device is missing); never sets an error. */
int pa_cuda_device_count(void);
/* "NVIDIA H100 80GB HBM3, sm_90, 79.2 GiB" into buf. */
int pa_cuda_device_name(char *buf, size_t cap);

/* The functions below take the backend pa_cuda_backend() returned (its context: stream,
 * cuBLASLt handle, allocator); they never look the singleton up themselves. */

/* Times a cuBLASLt bf16 GEMM (n x n x n, random operands in [-1, 1), bf16 out, F32
 * accumulation) over `iters` runs after a warm-up; *tflops = 2 n^3 / mean time. The benchmarks' reference for "fraction of peak". */
int pa_cuda_gemm_peak(pa_backend *be, int n, int iters, double *tflops);

/* GEMM calls that ran the naive fallback kernel because cuBLASLt offered no algorithm for
 * their shape and alignment (each such shape is logged on stderr once); 0 is the goal. */
int64_t pa_cuda_gemm_fallbacks(pa_backend *be);

/* The device's Gumbel noise for all 2^24 open uniforms (out: 2^24 floats, host), to compare
 * exhaustively with the host's pa_gumbel (ops/rng.h). */
int pa_cuda_gumbel_table(pa_backend *be, float *out);

/* Bytes held by the caching allocator: live (in tensors) and cached (free for reuse). */
void pa_cuda_memory(pa_backend *be, size_t *live, size_t *cached);

#endif
