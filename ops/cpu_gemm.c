/* Thread-count-independent GEMM over single-threaded OpenBLAS calls (see cpu_gemm.h). */
#include "ops/cpu_gemm.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Products below this many flops run their tiles on the calling thread: forking a team
 * costs more than it saves (the tiny golden networks, the prior at batch 1). */
#define PARALLEL_MIN_FLOPS (1 << 21)
/* About this many tiles per product, so that 2 to 8 threads share the work evenly. */
#define TILES_TARGET 16

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round16(int64_t v) { return ceil_div(v, 16) * 16; }
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Row tiles of 32..256 rows (a tall product keeps whole rows of w per tile, so OpenBLAS
 * packs w once per 256 rows of x); when that gives fewer than 8 tiles (short products: the
 * prior, the conditioning, small images), the columns are cut too, 64 at least. */
void pa_cpu_sgemm_tiles(int64_t M, int64_t N, int64_t *tm, int64_t *tn) {
  *tm = clamp64(round16(ceil_div(M, TILES_TARGET)), 32, 256);
  if (*tm > M) *tm = M > 0 ? M : 1;
  int64_t nr = ceil_div(M, *tm);
  *tn = N > 0 ? N : 1;
  if (nr >= 8) return;
  int64_t tn_cut = round16(ceil_div(N, ceil_div(TILES_TARGET, nr)));
  if (tn_cut < 64) tn_cut = 64;
  if (tn_cut < *tn) *tn = tn_cut;
}

/* OpenBLAS's OpenMP build runs a call single-threaded inside an active parallel region;
 * outside one it uses omp_get_max_threads() threads, so the caller's count is set to 1 for
 * the call (it is this thread's own setting: other threads are not affected). */
static int serial_begin(void) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 0;
  int n = omp_get_max_threads();
  if (n <= 1) return 0;
  omp_set_num_threads(1);
  return n;
#else
  return 0;
#endif
}

static void serial_end(int saved) {
#ifdef _OPENMP
  if (saved) omp_set_num_threads(saved);
#else
  (void)saved;
#endif
}

static void blas(bool w_nk, int64_t M, int64_t N, int64_t K, float alpha, const float *x, int64_t ldx,
                 const float *w, int64_t ldw, float *y, int64_t ldy) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, w_nk ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, x,
              (int)ldx, w, (int)ldw, 0.0f, y, (int)ldy);
}

void pa_cpu_sgemm_serial(bool w_nk, int64_t M, int64_t N, int64_t K, float alpha, const float *x, int64_t ldx,
                         const float *w, int64_t ldw, float *y, int64_t ldy) {
  if (M <= 0 || N <= 0) return;
  int saved = serial_begin();
  blas(w_nk, M, N, K, alpha, x, ldx, w, ldw, y, ldy);
  serial_end(saved);
}

/* Tile t of the (M, N) product: rows [r0, r0 + m) and columns [c0, c0 + n). */
static void run_tile(int64_t t, int64_t nc, int64_t tm, int64_t tn, bool w_nk, int64_t M, int64_t N, int64_t K,
                     float alpha, const float *x, int64_t ldx, const float *w, int64_t ldw, float *y, int64_t ldy) {
  int64_t r0 = t / nc * tm, c0 = t % nc * tn;
  int64_t m = M - r0 < tm ? M - r0 : tm, n = N - c0 < tn ? N - c0 : tn;
  const float *wt = w_nk ? w + c0 * ldw : w + c0; /* columns c0.. of W: rows of w (N, K), columns of w (K, N) */
  blas(w_nk, m, n, K, alpha, x + r0 * ldx, ldx, wt, ldw, y + r0 * ldy + c0, ldy);
}

void pa_cpu_sgemm(bool w_nk, int64_t M, int64_t N, int64_t K, float alpha, const float *x, int64_t ldx,
                  const float *w, int64_t ldw, float *y, int64_t ldy) {
  if (M <= 0 || N <= 0) return;
  int64_t tm, tn;
  pa_cpu_sgemm_tiles(M, N, &tm, &tn);
  int64_t nc = ceil_div(N, tn), ntiles = ceil_div(M, tm) * nc;
  if (ntiles > 1 && 2.0 * M * N * K >= PARALLEL_MIN_FLOPS) {
    /* inside the region each call is single-threaded (see serial_begin); a team the
     * runtime shrank to one thread is not "in parallel", so the guard is kept per call */
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntiles; t++) {
      int saved = serial_begin();
      run_tile(t, nc, tm, tn, w_nk, M, N, K, alpha, x, ldx, w, ldw, y, ldy);
      serial_end(saved);
    }
    return;
  }
  int saved = serial_begin();
  for (int64_t t = 0; t < ntiles; t++) run_tile(t, nc, tm, tn, w_nk, M, N, K, alpha, x, ldx, w, ldw, y, ldy);
  serial_end(saved);
}
