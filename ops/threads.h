/* The CPU backend's thread count, in one place: OpenMP's parallel loops and OpenBLAS.
 *
 * The count changes speed only: every CPU op gives the same bits with any count
 * (ops/cpu_backend.c, ops/cpu_gemm.c, docs/determinism.md). Without a call, the count is
 * OpenMP's default (OMP_NUM_THREADS, else one per core). */
#ifndef PAELLA_OPS_THREADS_H
#define PAELLA_OPS_THREADS_H

#define PA_THREADS_MAX 256

/* n in 1..PA_THREADS_MAX, else PA_ERR_INVALID. It is the calling thread's setting (OpenMP's
 * nthreads-var): call it on the thread that runs the pipeline, before it runs. */
int pa_threads_set(int n);
/* The count the calling thread's next parallel loop would use. */
int pa_threads_get(void);

#endif
