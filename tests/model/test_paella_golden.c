/* Paella denoiser vs the golden float64 reference (tests/golden/paella_tiny.safetensors):
 * logits with and without clip_image, with attention re-weighting, every per-layer
 * intermediate, the conditioning sequence and the r-embedding. */
#include <stdio.h>
#include <string.h>

#include "model/eval.h"
#include "model/nn.h"
#include "model/paella.h"
#include "tests/golden.h"
#include "tests/test.h"

#define TOL 1e-4

static pa_weights *golden;

/* Runs `paella eval` logic on the golden file with only the listed optional inputs. */
static int run_variant(bool clip_image, bool attn, pa_eval_outputs *out) {
  pa_weights *w = pa_weights_new("variant");
  for (int i = 0; i < pa_weights_count(golden); i++) {
    const char *n = pa_weights_name(golden, i);
    if (!strncmp(n, "out.", 4)) continue;
    if (!clip_image && !strcmp(n, "in.clip_image")) continue;
    if (!attn && !strcmp(n, "in.attn_weights")) continue;
    const pa_tensor *t = pa_weights_tensor(golden, i);
    pa_weights_add(w, n, pa_tensor_clone(t));
  }
  pa_weights_set_metadata(w, "config", pa_weights_metadata(golden, "config"));
  int rc = pa_eval_net(pa_cpu_backend(), "paella", w, true, out);
  pa_weights_free(w);
  return rc;
}

static const pa_tensor *find_out(const pa_eval_outputs *o, const char *name) {
  for (int i = 0; i < o->n; i++)
    if (!strcmp(o->items[i].name, name)) return o->items[i].tensor;
  return NULL;
}

static void check_err(const char *what, const pa_tensor *y, const char *ref_name, double tol) {
  const pa_tensor *ref = pa_weights_find(golden, ref_name);
  double e = golden_rel_err(y, ref);
  printf("  %-40s rel err %.3e\n", what, e);
  CHECK_MSG(e <= tol, "%s: %.3e > %.1e", what, e, tol);
}

int main(void) {
  CHECK_OK(pa_safetensors_open(PAELLA_GOLDEN_DIR "/paella_tiny.safetensors", &golden));
  if (!golden) TEST_END();

  /* frequency table bit-exact; r-embedding in double */
  const pa_tensor *freqs = pa_weights_find(golden, "out.r_freqs"), *f64 = pa_weights_find(golden, "out.r_freqs_c_r64");
  float f[32];
  pa_r_freqs(16, f);
  CHECK(memcmp(f, freqs->data, 8 * sizeof(float)) == 0);
  pa_r_freqs(64, f);
  CHECK(memcmp(f, f64->data, 32 * sizeof(float)) == 0);

  pa_eval_outputs full = {0}, noimg = {0}, attn = {0};
  CHECK_OK(run_variant(true, false, &full));
  CHECK_OK(run_variant(false, false, &noimg));
  CHECK_OK(run_variant(true, true, &attn));

  check_err("r_embed", find_out(&full, "out.r_embed"), "out.r_embed_f64", 1e-6);
  check_err("c_embed", find_out(&full, "out.c_embed"), "out.c_embed_f64", TOL);
  check_err("c_embed (no clip_image)", find_out(&noimg, "out.c_embed"), "out.c_embed_noclipimg_f64", TOL);
  check_err("logits", find_out(&full, "out.logits"), "out.logits_f64", TOL);
  check_err("logits (no clip_image)", find_out(&noimg, "out.logits"), "out.logits_noclipimg_f64", TOL);
  check_err("logits (attn weights)", find_out(&attn, "out.logits"), "out.logits_attnw_f64", TOL);

  /* every per-layer intermediate the golden recorded */
  int n_dbg = 0;
  for (int i = 0; i < pa_weights_count(golden); i++) {
    const char *n = pa_weights_name(golden, i);
    size_t len = strlen(n);
    if (strncmp(n, "out.dbg.", 8) || len < 4 || strcmp(n + len - 4, "_f64")) continue;
    char base[128];
    snprintf(base, sizeof base, "%.*s", (int)(len - 4), n);
    const pa_tensor *y = find_out(&full, base);
    CHECK_MSG(y != NULL, "no intermediate %s", base);
    if (y) check_err(base, y, n, TOL);
    n_dbg++;
  }
  CHECK(n_dbg == 29);

  pa_eval_outputs_free(&full);
  pa_eval_outputs_free(&noimg);
  pa_eval_outputs_free(&attn);
  pa_weights_free(golden);
  TEST_END();
}
