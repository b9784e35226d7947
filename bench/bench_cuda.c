/* GPU benchmarks of the CUDA backend with the published configurations and synthetic weights
 * (pa_weights_set_autocreate): Paella v3 forward and a full 12-step CFG sample at 256 px
 * (64x64 tokens) at batch 1, 4, 16 (the sample through the product loop, model/denoise.c, with
 * its per-step op counts from ops/counting.h); the prior's 60 CFG steps (product loop too);
 * ByT5-XL and CLIP-H encoders; the VQGAN decode of 64x64 tokens. Each line: ms, the GEMM+attention TFLOP/s the run reached
 * (FLOPs counted by wrapping the backend's GEMM ops) and its fraction of the card's bf16 GEMM
 * peak, measured first in the same run with cuBLASLt (8192^3, random operands).
 *
 * Each network's synthetic weights are created once per process (multi-threaded, ops/weights.c)
 * and Paella's model is uploaded once for both the forward and the sample.
 *
 * usage: bench_cuda [--batch N[,N...]]... [peak|paella|sample|prior|t5|clip|vqgan|all]...
 *   names: what to run (default all; the bf16 GEMM peak always runs first);
 *   --batch: the batch sizes of paella, sample and prior (1..16; default 1,4,16 for Paella and
 *   1,16 for the prior), so a check can run batch 1 as its own step before the larger ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda_backend.h"
#include "model/clip.h"
#include "model/denoise.h"
#include "model/paella.h"
#include "model/prior.h"
#include "model/sampler.h"
#include "model/t5.h"
#include "model/vqgan.h"
#include "ops/counting.h"

static pa_backend counted, *real;
static double flops, peak_tflops;

#define MAX_BATCH 16 /* the per-image arrays below (seeds, timesteps) */
/* --batch: the batch sizes asked for (n_batches = 0: each benchmark's defaults) */
static int batches[MAX_BATCH], n_batches;

/* ---- FLOP counting wrapper around the CUDA op table ---------------------------------------- */

static int c_linear(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w, const pa_tensor *b, pa_act a) {
  flops += 2.0 * (double)pa_rows(x) * (double)w->shape[0] * (double)w->shape[1];
  return real->linear(be, y, x, w, b, a);
}
static int c_conv(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w, const pa_tensor *b,
                  pa_conv_params p) {
  flops += 2.0 * (double)pa_numel(y) * (double)(w->shape[1] * w->shape[2] * w->shape[3]);
  return real->conv2d(be, y, x, w, b, p);
}
static int c_convt(pa_backend *be, pa_tensor *y, const pa_tensor *x, const pa_tensor *w, const pa_tensor *b,
                   pa_conv_params p) {
  flops += 2.0 * (double)pa_rows(x) * (double)pa_numel(w);
  return real->conv_transpose2d(be, y, x, w, b, p);
}
static int c_attn(pa_backend *be, pa_tensor *y, const pa_tensor *q, const pa_tensor *k, const pa_tensor *v,
                  const pa_attn_params *p) {
  flops += 4.0 * (double)q->shape[0] * (double)q->shape[1] * (double)k->shape[1] * (double)q->shape[2];
  return real->attention(be, y, q, k, v, p);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void report(const char *what, int batch, double ms, double fl) {
  double tf = fl / (ms * 1e-3) / 1e12;
  printf("%-34s batch %-3d %10.2f ms  %8.1f TFLOP/s  %5.1f%% of bf16 peak\n", what, batch, ms, tf,
         peak_tflops > 0 ? 100.0 * tf / peak_tflops : 0.0);
  fflush(stdout);
}

static int fail(const char *what) {
  fprintf(stderr, "%s: %s\n", what, pa_errmsg());
  return 1;
}

static pa_tensor *dev_rand(pa_backend *be, int ndim, const int64_t *shape, float scale) {
  pa_tensor *h = pa_tensor_new(PA_F32, ndim, shape);
  if (!h) return NULL;
  uint64_t s = 88172645463325252ull;
  for (int64_t i = 0; i < pa_numel(h); i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    ((float *)h->data)[i] = scale * ((float)(s >> 40) / (float)(1 << 24) - 0.5f);
  }
  pa_tensor *d = pa_upload(be, h);
  pa_tensor_free(h);
  return d;
}

/* ---- Paella: forward and the 12-step CFG sample ---------------------------------------------- */

/* Per-step counts of the product loop (ops/counting.h), printed for its second step. */
typedef struct {
  pa_backend *cb;
  pa_op_counts last;
} step_counts;

static bool count_step(void *user, const char *stage, int step, int total) {
  step_counts *sc = user;
  pa_op_counts now_ = pa_counting_snapshot(sc->cb), d = pa_op_counts_diff(&now_, &sc->last);
  if (step == 2)
    printf("  %s step %d/%d: %lld GEMMs (%.1f GFLOP), %lld other ops, %lld+%lld transfers (%lld B), %lld allocations\n",
           stage, step, total, d.gemm_calls, d.gemm_flops / 1e9, d.other_ops, d.to_host, d.from_host,
           d.to_host_bytes + d.from_host_bytes, d.allocs);
  sc->last = now_;
  return true;
}

/* The product loop (model/denoise.c) over a 12-step CFG sample of B images. */
static int sample_product_loop(pa_paella *m, pa_backend *cb, pa_paella_cond *c, pa_paella_cond *u, int B, int H) {
  int64_t n = (int64_t)H * H;
  int64_t *start = malloc((size_t)(B * n) * sizeof *start), *out = malloc((size_t)(B * n) * sizeof *out);
  uint64_t seeds[MAX_BATCH];
  if (!start || !out) return fail("sample alloc");
  for (int b = 0; b < B; b++) {
    seeds[b] = 42 + (uint64_t)b;
    pa_sampler_init_noise(seeds[b], n, pa_paella_cfg(m)->num_labels, start + b * n);
  }
  step_counts sc = {.cb = cb};
  pa_denoise_job j = {.B = B, .h = H, .w = H, .sampler = pa_sampler_default_config(), .cond = c, .uncond = u,
                      .seeds = seeds, .start = start, .init = start};
  int rc = pa_denoise(m, &j, out); /* warm-up: plans the activation arena and the GEMM plans */
  j.progress = count_step, j.progress_user = &sc;
  sc.last = pa_counting_snapshot(cb);
  flops = 0;
  double s = now();
  if (rc == PA_OK) rc = pa_denoise(m, &j, out);
  double ms = (now() - s) * 1e3; /* pa_denoise ends with the tokens on the host: synchronised */
  free(start);
  free(out);
  if (rc) return fail("denoise");
  report("paella 12-step CFG sample 256px", B, ms, flops);
  printf("%-34s batch %-3d %10.2f ms per image\n", "", B, ms / B);
  return 0;
}

/* The batch sizes to run: --batch's, or `defaults`. */
static int pick_batches(const int *defaults, int n_defaults, const int **out) {
  *out = n_batches ? batches : defaults;
  return n_batches ? n_batches : n_defaults;
}

/* Paella v3 with synthetic weights, created and uploaded once per process (the forward and
 * the sample share it); `be` counts the product loop's ops. */
static struct {
  pa_backend *be;
  pa_weights *w;
  pa_paella *m;
} paella;

static int paella_model(void) {
  if (paella.m) return 0;
  if (!(paella.be = pa_counting_backend(&counted))) return fail("counting backend");
  pa_paella_config cfg = pa_paella_default_config();
  paella.w = pa_weights_new("paella-v3-random");
  if (!paella.w) return fail("paella weights");
  pa_weights_set_autocreate(paella.w, 1, 0.02f);
  double t0 = now();
  if (pa_paella_load(paella.be, paella.w, &cfg, &paella.m)) return fail("paella load");
  printf("(paella: weights created and uploaded in %.1f s)\n", now() - t0);
  return 0;
}

static void paella_model_free(void) {
  pa_paella_free(paella.m);
  pa_weights_free(paella.w);
  if (paella.be) pa_counting_backend_free(paella.be);
}

static int bench_paella(bool sample) {
  if (paella_model()) return 1;
  pa_backend *be = paella.be;
  pa_paella *m = paella.m;
  pa_paella_config cfg = *pa_paella_cfg(m);
  const int *bs, defaults[] = {1, 4, 16}, H = 64, L = 77;
  int nb = pick_batches(defaults, 3, &bs);
  for (int bi = 0; bi < nb; bi++) {
    int B = bs[bi];
    pa_tensor *byt5 = dev_rand(be, 3, (const int64_t[]){B, L, cfg.byt5_embd}, 1.0f);
    pa_tensor *clip = dev_rand(be, 2, (const int64_t[]){B, cfg.clip_embd}, 1.0f);
    pa_tensor *zb = dev_rand(be, 3, (const int64_t[]){B, L, cfg.byt5_embd}, 0.0f);
    pa_tensor *zc = dev_rand(be, 2, (const int64_t[]){B, cfg.clip_embd}, 0.0f);
    pa_tensor *tok = pa_alloc(be, PA_I64, 3, (const int64_t[]){B, H, H});
    pa_tensor *init = pa_alloc(be, PA_I64, 3, (const int64_t[]){B, H, H});
    pa_tensor *lc = pa_alloc(be, PA_F32, 4, (const int64_t[]){B, H, H, cfg.num_labels});
    pa_tensor *lu = pa_alloc(be, PA_F32, 4, (const int64_t[]){B, H, H, cfg.num_labels});
    pa_paella_cond *c = NULL, *u = NULL;
    if (!byt5 || !clip || !zb || !zc || !tok || !init || !lc || !lu) return fail("paella alloc");
    if (pa_paella_cond_new(m, byt5, clip, NULL, &c) || pa_paella_cond_new(m, zb, zc, NULL, &u)) return fail("cond");
    float r[MAX_BATCH];
    for (int i = 0; i < B; i++) r[i] = 0.5f;
    /* warm-up: plans, allocator blocks */
    if (pa_paella_forward(m, c, tok, r, NULL, lc) || be->sync(be)) return fail("paella forward");
    if (!sample) {
      int iters = B >= 16 ? 3 : 5;
      flops = 0;
      double s = now();
      for (int i = 0; i < iters; i++)
        if (pa_paella_forward(m, c, tok, r, NULL, lc)) return fail("paella forward");
      if (be->sync(be)) return fail("sync");
      report("paella forward 256px", B, (now() - s) * 1e3 / iters, flops / iters);
    } else if (sample_product_loop(m, be, c, u, B, H)) {
      return 1;
    }
    pa_paella_cond_free(m, c), pa_paella_cond_free(m, u);
    pa_tensor *ts[] = {byt5, clip, zb, zc, tok, init, lc, lu};
    for (int i = 0; i < 8; i++) pa_release(be, ts[i]);
  }
  return 0;
}

/* ---- prior: 60 steps, each a conditional and an unconditional forward ------------------------ */

/* The product prior loop (model/denoise.c pa_prior_sample): 60 DDPM steps, cond and uncond
 * rows in one forward, guidance and the step on the device. */
static int bench_prior(void) {
  pa_backend *be = &counted;
  pa_prior_config cfg = pa_prior_default_config();
  pa_weights *w = pa_weights_new("prior-random");
  pa_weights_set_autocreate(w, 2, 0.02f);
  pa_prior *m = NULL;
  if (pa_prior_load(be, w, &cfg, &m)) return fail("prior load");
  const int *bs, defaults[] = {1, 16};
  int nb = pick_batches(defaults, 2, &bs);
  float *text = calloc((size_t)cfg.clip_r, sizeof *text), *out = malloc((size_t)MAX_BATCH * cfg.clip_r * sizeof *out);
  uint64_t seeds[MAX_BATCH];
  if (!text || !out) return fail("prior alloc");
  for (int d = 0; d < cfg.clip_r; d++) text[d] = (float)(d % 7) / 7.0f - 0.4f;
  for (int b = 0; b < MAX_BATCH; b++) seeds[b] = 1000 + (uint64_t)b;
  for (int bi = 0; bi < nb; bi++) {
    int B = bs[bi];
    pa_prior_job j = {.B = B, .steps = 60, .cfg = 3.0f, .seeds = seeds, .clip_text = text};
    if (pa_prior_sample(m, &j, out)) return fail("prior sample"); /* warm-up */
    flops = 0;
    double s = now();
    if (pa_prior_sample(m, &j, out)) return fail("prior sample");
    report("prior 60 steps (product loop)", B, (now() - s) * 1e3, flops);
  }
  free(text);
  free(out);
  pa_prior_free(m);
  pa_weights_free(w);
  return 0;
}

/* ---- encoders ------------------------------------------------------------------------------- */

static int bench_t5(void) {
  pa_backend *be = &counted;
  pa_t5_config cfg = pa_t5_default_config();
  pa_weights *w = pa_weights_new("byt5-xl-random");
  pa_weights_set_autocreate(w, 3, 0.02f);
  pa_t5 *m = NULL;
  double t0 = now();
  if (pa_t5_load(be, w, &cfg, &m)) return fail("t5 load");
  printf("(byt5-xl: weights created and uploaded in %.1f s)\n", now() - t0);
  const int L = 77;
  pa_tensor *ids = pa_tensor_new_2d(PA_I64, 1, L);
  for (int i = 0; i < L; i++) ((int64_t *)ids->data)[i] = 3 + i;
  pa_tensor *h = pa_alloc(be, PA_F32, 3, (const int64_t[]){1, L, cfg.d_model});
  if (!h || pa_t5_encode(m, ids, h) || be->sync(be)) return fail("t5 encode");
  flops = 0;
  double s = now();
  for (int i = 0; i < 3; i++)
    if (pa_t5_encode(m, ids, h)) return fail("t5 encode");
  if (be->sync(be)) return fail("sync");
  report("byt5-xl encoder (77 bytes)", 1, (now() - s) * 1e3 / 3, flops / 3);
  pa_release(be, h);
  pa_tensor_free(ids);
  pa_t5_free(m);
  pa_weights_free(w);
  return 0;
}

static int bench_clip(void) {
  pa_backend *be = &counted;
  pa_weights *w = pa_weights_new("clip-h-random"); /* one checkpoint holds both towers */
  if (!w) return fail("clip weights");
  pa_weights_set_autocreate(w, 4, 0.02f);
  for (int vision = 0; vision < 2; vision++) {
    pa_clip_config cfg = vision ? pa_clip_vision_default_config() : pa_clip_text_default_config();
    pa_clip *m = NULL;
    if (pa_clip_load(be, w, &cfg, vision, &m)) return fail("clip load");
    int64_t L = vision ? 1 + (int64_t)(cfg.image_size / cfg.patch_size) * (cfg.image_size / cfg.patch_size) : 77;
    pa_tensor *ids = pa_tensor_new_2d(PA_I64, 1, 77), *px = NULL;
    for (int i = 0; i < 77; i++) ((int64_t *)ids->data)[i] = i == 20 ? 49407 : 320 + i;
    if (vision) px = dev_rand(be, 4, (const int64_t[]){1, cfg.image_size, cfg.image_size, 3}, 1.0f);
    pa_tensor *h = pa_alloc(be, PA_F32, 3, (const int64_t[]){1, L, cfg.hidden_size});
    pa_tensor *e = pa_alloc(be, PA_F32, 2, (const int64_t[]){1, cfg.projection_dim});
    if (!h || !e || (vision && !px)) return fail("clip alloc");
    double ms = 0;
    for (int it = 0; it < 4; it++) {
      if (it == 1) flops = 0, ms = now();
      int rc = vision ? pa_clip_vision_forward(m, px, h, e) : pa_clip_text_forward(m, ids, h, e);
      if (rc) return fail("clip forward");
    }
    if (be->sync(be)) return fail("sync");
    report(vision ? "clip-h vision (224 px)" : "clip-h text (77 tokens)", 1, (now() - ms) * 1e3 / 3, flops / 3);
    pa_release(be, h), pa_release(be, e), pa_release(be, px);
    pa_tensor_free(ids);
    pa_clip_free(m);
  }
  pa_weights_free(w);
  return 0;
}

static int bench_vqgan(void) {
  pa_backend *be = &counted;
  pa_vqgan_config cfg = pa_vqgan_default_config();
  pa_weights *w = pa_weights_new("vqgan-random");
  pa_weights_set_autocreate(w, 5, 0.02f);
  pa_vqgan *m = NULL;
  if (pa_vqgan_load(be, w, &cfg, &m)) return fail("vqgan load");
  pa_tensor *idx = pa_alloc(be, PA_I64, 3, (const int64_t[]){1, 64, 64});
  pa_tensor *img = pa_alloc(be, PA_F32, 4, (const int64_t[]){1, 256, 256, 3});
  if (!idx || !img || pa_vqgan_decode_indices(m, idx, img) || be->sync(be)) return fail("vqgan decode");
  flops = 0;
  double s = now();
  for (int i = 0; i < 3; i++)
    if (pa_vqgan_decode_indices(m, idx, img)) return fail("vqgan decode");
  if (be->sync(be)) return fail("sync");
  report("vqgan decode 64x64 -> 256 px", 1, (now() - s) * 1e3 / 3, flops / 3);
  pa_release(be, idx), pa_release(be, img);
  pa_vqgan_free(m);
  pa_weights_free(w);
  return 0;
}

/* ---- command line ---------------------------------------------------------------------------- */

static const char *const bench_names[] = {"peak", "paella", "sample", "prior", "t5", "clip", "vqgan", "all"};
#define N_BENCH_NAMES (int)(sizeof bench_names / sizeof *bench_names)
static bool wanted[N_BENCH_NAMES], any_wanted;

static int usage(const char *why, const char *arg) {
  fprintf(stderr, "bench_cuda: %s '%s'\nusage: bench_cuda [--batch N[,N...]]... [peak|paella|sample|prior|t5|clip|vqgan|all]...\n",
          why, arg);
  return 2;
}

/* "4,16" appended to batches[]: each 1..MAX_BATCH */
static int parse_batches(const char *list) {
  const char *p = list;
  for (;;) {
    char *end;
    long b = strtol(p, &end, 10);
    if (end == p || b < 1 || b > MAX_BATCH || (*end && *end != ',')) return usage("--batch wants sizes 1..16 separated by commas, not", list);
    if (n_batches == MAX_BATCH) return usage("too many batch sizes in", list);
    batches[n_batches++] = (int)b;
    if (!*end) return 0;
    p = end + 1;
  }
}

static int parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--batch")) {
      if (i + 1 >= argc) return usage("missing sizes after", argv[i]);
      if (parse_batches(argv[++i])) return 2;
      continue;
    }
    int k = 0;
    while (k < N_BENCH_NAMES && strcmp(argv[i], bench_names[k])) k++;
    if (k == N_BENCH_NAMES) return usage("unknown benchmark", argv[i]);
    wanted[k] = any_wanted = true;
  }
  return 0;
}

static bool want(const char *name) {
  if (!any_wanted || wanted[N_BENCH_NAMES - 1]) return true; /* none named, or "all" */
  for (int k = 0; k < N_BENCH_NAMES; k++)
    if (!strcmp(bench_names[k], name)) return wanted[k];
  return false;
}

int main(int argc, char **argv) {
  if (parse_args(argc, argv)) return 2;
  if (pa_cuda_device_count() < 1) {
    printf("SKIP: no CUDA device\n");
    return 77;
  }
  if (!(real = pa_backend_by_name("cuda"))) return fail("cuda backend");
  counted = *real;
  counted.linear = c_linear, counted.conv2d = c_conv, counted.conv_transpose2d = c_convt, counted.attention = c_attn;
  char dev[128] = "?";
  pa_cuda_device_name(dev, sizeof dev);
  printf("device: %s\n", dev);
  if (pa_cuda_gemm_peak(real, 8192, 20, &peak_tflops)) return fail("gemm peak");
  printf("%-34s           %10s     %8.1f TFLOP/s (cuBLASLt bf16 8192^3, random operands, this run)\n", "bf16 GEMM peak", "", peak_tflops);
  int rc = 0;
  if (!rc && want("paella")) rc = bench_paella(false);
  if (!rc && want("sample")) rc = bench_paella(true);
  paella_model_free();
  if (!rc && want("prior")) rc = bench_prior();
  if (!rc && want("t5")) rc = bench_t5();
  if (!rc && want("clip")) rc = bench_clip();
  if (!rc && want("vqgan")) rc = bench_vqgan();
  size_t live = 0, cached = 0;
  pa_cuda_memory(real, &live, &cached);
  printf("device memory at exit: %zu MiB live, %zu MiB cached\n", live >> 20, cached >> 20);
  printf("naive GEMM fallbacks: %lld calls\n", (long long)pa_cuda_gemm_fallbacks(real));
  return rc;
}
