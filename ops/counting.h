/* A counting view of a backend: wraps any pa_backend, forwards every call and counts what
 * the backend was asked to do (GEMMs and their FLOPs, other ops, host<->backend bytes,
 * allocations), so tests can check the shape of a loop on the CPU backend (e.g. "no
 * transfer and no allocation inside the denoising steps") and benchmarks can report it.
 *
 * A GEMM is a `linear` call or a convolution that lowers to one (groups == 1, including the
 * transposed 2x2 convs); depthwise convolutions count as other ops. FLOPs are 2*M*N*K. */
#ifndef PAELLA_OPS_COUNTING_H
#define PAELLA_OPS_COUNTING_H

#include "ops/backend.h"

typedef struct {
  long long gemm_calls;
  double gemm_flops;
  long long other_ops;     /* every non-GEMM op call (norms, attention, sampler, copies ...) */
  long long to_host, from_host;             /* transfer calls */
  long long to_host_bytes, from_host_bytes; /* and their sizes */
  long long allocs, releases;
  long long alloc_bytes;
} pa_op_counts;

/* a - b, field by field (the work between two snapshots). */
pa_op_counts pa_op_counts_diff(const pa_op_counts *a, const pa_op_counts *b);

/* A new backend counting into its own totals while forwarding to `inner` (not owned).
 * Free with pa_counting_backend_free; tensors keep belonging to `inner`. */
pa_backend *pa_counting_backend(pa_backend *inner);
void pa_counting_backend_free(pa_backend *counting);
/* The totals so far (a snapshot by value) and a reset to zero. */
pa_op_counts pa_counting_snapshot(const pa_backend *counting);
void pa_counting_reset(pa_backend *counting);

#endif
