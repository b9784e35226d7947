/* The dashboard in headless Chromium: after a job completed, the page served by the
 * scheduler must render it (DOM: a succeeded card with its image) and the screenshot must
 * not be blank. */
#include <spng.h>
#include <sys/stat.h>

#include "tests/scheduler/harness.h"

static char *run_capture(const char *cmd) {
  FILE *p = popen(cmd, "r");
  if (!p) return NULL;
  size_t len = 0, cap = 1 << 16;
  char *out = malloc(cap);
  size_t n;
  while ((n = fread(out + len, 1, cap - len - 1, p)) > 0)
    if ((len += n) + 1 == cap) out = realloc(out, cap *= 2);
  out[len] = 0;
  pclose(p);
  return out;
}

/* Distinct colours in the decoded screenshot: a blank page has one. */
static int png_colours(const char *path, int *w, int *h) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  spng_ctx *ctx = spng_ctx_new(0);
  struct spng_ihdr ihdr;
  size_t size = 0;
  int colours = -1;
  spng_set_png_file(ctx, f);
  if (!spng_get_ihdr(ctx, &ihdr) && !spng_decoded_image_size(ctx, SPNG_FMT_RGBA8, &size)) {
    unsigned char *img = malloc(size);
    if (!spng_decode_image(ctx, img, size, SPNG_FMT_RGBA8, 0)) {
      *w = (int)ihdr.width;
      *h = (int)ihdr.height;
      json_t *seen = json_object();
      for (size_t i = 0; i < size && json_object_size(seen) < 1000; i += 4 * 7) {
        char k[16];
        snprintf(k, sizeof k, "%02x%02x%02x", img[i], img[i + 1], img[i + 2]);
        json_object_set_new(seen, k, json_true());
      }
      colours = (int)json_object_size(seen);
      json_decref(seen);
    }
    free(img);
  }
  spng_ctx_free(ctx);
  fclose(f);
  return colours;
}

int main(void) {
  if (system("command -v chromium >/dev/null 2>&1") != 0) {
    fprintf(stderr, "chromium is not installed (scripts/install-deps.sh installs it)\n");
    return 1;
  }
  if (harness_start_redis()) return 1;
  sched_config c;
  harness_config(&c);
  sched_tracker *t = NULL;
  sched_server *s = NULL;
  CHECK(tracker_start(&c, &t) == PA_OK && sched_server_start(&c, &s) == PA_OK);
  CHECK(harness_start_worker(NULL) == 0);
  if (s && t) {
    int port = sched_server_port(s);
    const char *job = "{\"prompt\":\"a dashboard fox\",\"width\":64,\"height\":64,\"steps\":4,\"prior\":{\"steps\":2}}";
    h_resp r;
    CHECK(h_http(port, "POST", "/v1/jobs", "Content-Type: application/json\r\nPrefer: wait=60\r\n", job, strlen(job), 70, &r) == 0 &&
          r.status == 200 && h_str_is(r.json, "status", "succeeded"));
    char id[80];
    snprintf(id, sizeof id, "%s", h_str(r.json, "id") ? h_str(r.json, "id") : "none");
    h_resp_free(&r);
    char flags[600], cmd[1400], shot[400];
    snprintf(flags, sizeof flags,
             "timeout 90 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
             "--disable-background-networking --disable-component-update --disable-sync --no-first-run "
             "--user-data-dir=%s/chromium --virtual-time-budget=8000 --window-size=1000,700",
             h_dir);
    snprintf(cmd, sizeof cmd, "%s --dump-dom http://127.0.0.1:%d/ 2>/dev/null", flags, port);
    char *dom = run_capture(cmd);
    char card[160];
    snprintf(card, sizeof card, "id=\"job-%s\" data-status=\"succeeded\"", id);
    CHECK_MSG(dom && strstr(dom, card), "DOM lacks the finished card %s", card);
    CHECK(dom && strstr(dom, "<img alt=\"output of "));
    CHECK(dom && strstr(dom, "1 recent jobs, 0 active"));
    free(dom);
    snprintf(shot, sizeof shot, "%s/screenshot.png", h_dir);
    snprintf(cmd, sizeof cmd, "%s --screenshot=%s http://127.0.0.1:%d/ >/dev/null 2>&1", flags, shot, port);
    CHECK(system(cmd) == 0);
    int w = 0, hgt = 0, colours = png_colours(shot, &w, &hgt);
    printf("screenshot %dx%d, %d distinct colours sampled\n", w, hgt, colours);
    CHECK(w == 1000 && hgt == 700);
    CHECK_MSG(colours > 20, "the screenshot looks blank (%d colours)", colours);
  }
  sched_server_stop(s);
  tracker_stop(t);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  TEST_END();
}
