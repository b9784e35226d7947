/* Previews while denoising (pa_gen_request.preview_*) on the embedded default model, through
 * a counting view of the CPU backend:
 *   - the throttle lets one event through per interval, the first at once;
 *   - previews come every preview_every steps (never after the last), at the size asked for;
 *   - each preview costs exactly one read from the backend (its pixels), and a run without
 *     previews reads exactly what it read before previews existed: the tokens once and the
 *     decoded images once, nothing per step;
 *   - previews change nothing in the result (same tokens, same pixels);
 *   - a long interval throttles a run to its first preview.
 * It also prints the cost of one preview (the VQGAN decode of image 0 and the downscale). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model/pipeline.h"
#include "ops/counting.h"
#include "tests/test.h"

#define STEPS 8

typedef struct {
  int calls, steps[STEPS], width, height;
} seen;

static void on_preview(void *user, int step, int total, const pa_image *img) {
  seen *s = user;
  CHECK(total == STEPS);
  if (s->calls < STEPS) s->steps[s->calls] = step;
  s->calls++;
  s->width = img->width;
  s->height = img->height;
  float lo = 1, hi = 0; /* a decoded image, not an empty buffer */
  for (int i = 0; i < img->width * img->height * 3; i++) {
    lo = img->rgb[i] < lo ? img->rgb[i] : lo;
    hi = img->rgb[i] > hi ? img->rgb[i] : hi;
  }
  CHECK_MSG(hi > lo, "preview at step %d is flat (%g)", step, lo);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_throttle(void) {
  pa_throttle t = {.interval = 0.5};
  CHECK(pa_throttle_take(&t, 100.0));   /* the first at once */
  CHECK(!pa_throttle_take(&t, 100.2));
  CHECK(!pa_throttle_take(&t, 100.49));
  CHECK(pa_throttle_take(&t, 100.5));   /* a full interval after the last one let through */
  CHECK(!pa_throttle_take(&t, 100.9));  /* measured from 100.5, not from the refused 100.49 */
  CHECK(pa_throttle_take(&t, 101.0));
  int through = 0;
  pa_throttle burst = {.interval = 0.5};
  for (int i = 0; i < 1000; i++) through += pa_throttle_take(&burst, 7.0 + i * 0.01); /* 10 s at 100 Hz */
  CHECK_MSG(through == 20, "%d of 1000 calls over 10 s went through (want 2 per second)", through);
  pa_throttle none = {.interval = 0};
  CHECK(pa_throttle_take(&none, 1.0) && pa_throttle_take(&none, 1.0));
}

static pa_gen_request request(int side) {
  pa_gen_request r = pa_gen_request_default();
  r.prompt = "a yellow star";
  r.width = r.height = side;
  r.seed = 11;
  r.sampler.steps = STEPS;
  r.sampler.renoise_steps = STEPS - 1;
  r.sampler.cond_steps = STEPS;
  r.prior_steps = 2;
  return r;
}

static void test_previews(pa_pipeline *p, pa_backend *cb) {
  const int side = 64; /* 16x16 tokens */
  pa_gen_result plain = {0}, watched = {0}, throttled = {0};
  pa_gen_request r = request(side);
  pa_counting_reset(cb);
  CHECK_OK(pa_generate(p, &r, &plain));
  pa_op_counts off = pa_counting_snapshot(cb);
  printf("without previews: %lld reads from the backend (%lld B)\n", off.to_host, off.to_host_bytes);

  seen s = {0};
  r.preview_every = 2;
  r.preview_interval = 0; /* no throttle: every second step */
  r.preview_max_side = 32;
  r.preview = on_preview;
  r.preview_user = &s;
  pa_counting_reset(cb);
  double t0 = now_s();
  CHECK_OK(pa_generate(p, &r, &watched));
  double with = now_s() - t0;
  pa_op_counts on = pa_counting_snapshot(cb);
  CHECK_MSG(s.calls == 3 && s.steps[0] == 2 && s.steps[1] == 4 && s.steps[2] == 6, "%d previews (steps %d %d %d)",
            s.calls, s.steps[0], s.steps[1], s.steps[2]);
  CHECK_MSG(s.width == 32 && s.height == 32, "preview %dx%d, want 32x32", s.width, s.height);
  CHECK_MSG(on.to_host == off.to_host + 3, "%lld reads with 3 previews, %lld without", on.to_host, off.to_host);
  CHECK(on.to_host_bytes - off.to_host_bytes == 3LL * side * side * 3 * (long long)sizeof(float));
  CHECK(plain.tokens && watched.tokens &&
        !memcmp(plain.tokens, watched.tokens, (size_t)(side / 4) * (side / 4) * sizeof *plain.tokens));
  CHECK(plain.n == 1 && watched.n == 1 &&
        !memcmp(plain.images[0]->rgb, watched.images[0]->rgb, (size_t)side * side * 3 * sizeof(float)));

  /* a preview is one VQGAN decode of one image plus a downscale: the final decode's cost
   * (wall-clock differences of whole runs drown in the noise of a loaded machine) */
  printf("%d px, %d steps: %.3f s with 3 previews; one decode (= one preview) %.1f ms\n", side, STEPS, with,
         watched.seconds_decode * 1000);
  pa_gen_request base = request(side);

  /* an interval longer than the run: the first preview only */
  seen t = {0};
  r.preview_user = &t;
  r.preview_interval = 3600;
  r.preview_every = 1;
  r.preview_max_side = 0; /* full size */
  CHECK_OK(pa_generate(p, &r, &throttled));
  CHECK_MSG(t.calls == 1 && t.steps[0] == 1, "%d previews with a 1 h interval", t.calls);
  CHECK(t.width == side && t.height == side);
  /* a request with previews is not batched with others */
  pa_gen_request other = request(side);
  CHECK(pa_gen_batchable(&base, &other) && !pa_gen_batchable(&r, &other));
  pa_gen_result_free(&plain);
  pa_gen_result_free(&watched);
  pa_gen_result_free(&throttled);
}

int main(void) {
  test_throttle();
  pa_backend *cb = pa_counting_backend(pa_cpu_backend());
  pa_pipeline *p = NULL;
  pa_pipeline_options o = {.be = cb};
  CHECK_OK(pa_pipeline_open(&o, &p));
  if (p) {
    const char *sums = pa_pipeline_checksums(p);
    CHECK_MSG(sums && strlen(sums) == 5 * 64 + strlen("{\"byt5\":\"\",\"clip\":\"\",\"paella\":\"\",\"prior\":\"\",\"vqgan\":\"\"}"),
              "checksums: %s", sums ? sums : "(null)");
    test_previews(p, cb);
  }
  pa_pipeline_free(p);
  pa_counting_backend_free(cb);
  TEST_END();
}
