/* `paella eval` as a user runs it: each network on its golden file through the binary, the
 * written outputs compared with the float64 references; bad invocations fail cleanly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/weights.h"
#include "tests/golden.h"
#include "tests/test.h"

static char dir[] = "/tmp/paella-eval-XXXXXX";

static int run_eval(const char *net, const char *golden, const char *out, const char *extra) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s/paella eval %s --in %s/%s --out %s %s 2>%s/err", PAELLA_BINARY_DIR, net,
           PAELLA_GOLDEN_DIR, golden, out, extra, dir);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Compares out.<name> of the written file with <ref> of the golden file. */
static void compare(const char *golden, const char *out, const char *name, const char *ref, double tol) {
  char gpath[512];
  snprintf(gpath, sizeof gpath, "%s/%s", PAELLA_GOLDEN_DIR, golden);
  pa_weights *g = NULL, *o = NULL;
  CHECK_OK(pa_weights_open(gpath, &g));
  CHECK_OK(pa_weights_open(out, &o));
  if (g && o) {
    const pa_tensor *y = pa_weights_find(o, name), *r = pa_weights_find(g, ref);
    bool exact = tol == 0;
    double e = exact ? (golden_equal_bytes(y, r) ? 0 : INFINITY) : golden_rel_err(y, r);
    printf("  %-12s %-26s vs %-30s %s %.3e\n", golden, name, ref, exact ? "exact" : "rel err", e);
    CHECK_MSG(e <= tol, "%s %s: %.3e", golden, name, e);
  }
  pa_weights_free(g);
  pa_weights_free(o);
}

int main(void) {
  CHECK(mkdtemp(dir) != NULL);
  char out[512];
  snprintf(out, sizeof out, "%s/out.safetensors", dir);
  /* the golden paella file carries in.attn_weights, so out.logits is the re-weighted forward */
  CHECK(run_eval("paella", "paella_tiny.safetensors", out, "") == 0);
  compare("paella_tiny.safetensors", out, "out.logits", "out.logits_attnw_f64", 1e-4);
  compare("paella_tiny.safetensors", out, "out.c_embed", "out.c_embed_f64", 1e-4);
  CHECK(run_eval("paella", "paella_tiny.safetensors", out, "--debug") == 0);
  compare("paella_tiny.safetensors", out, "out.dbg.embedding", "out.dbg.embedding_f64", 1e-4);
  CHECK(run_eval("vqgan", "vqgan_tiny.safetensors", out, "") == 0);
  compare("vqgan_tiny.safetensors", out, "out.decoded", "out.decoded_f64", 1e-4);
  compare("vqgan_tiny.safetensors", out, "out.latent", "out.latent_f64", 1e-4);
  compare("vqgan_tiny.safetensors", out, "out.indices", "out.indices", 0);
  CHECK(run_eval("prior", "prior_tiny.safetensors", out, "") == 0);
  compare("prior_tiny.safetensors", out, "out.pred", "out.pred_f64", 1e-4);
  CHECK(run_eval("t5", "t5_tiny.safetensors", out, "") == 0);
  compare("t5_tiny.safetensors", out, "out.last_hidden_state", "out.last_hidden_state_f64", 1e-4);
  CHECK(run_eval("clip-text", "clip_text_tiny.safetensors", out, "") == 0);
  compare("clip_text_tiny.safetensors", out, "out.text_embeds", "out.text_embeds_f64", 1e-4);
  CHECK(run_eval("clip-vision", "clip_vision_tiny.safetensors", out, "") == 0);
  compare("clip_vision_tiny.safetensors", out, "out.image_embeds", "out.image_embeds_f64", 1e-4);
  /* a torch.save checkpoint is not a golden-convention input: it has no in.*, so eval says so */
  unlink(out);
  CHECK(run_eval("paella", "paella_tiny.pt", out, "") == 1);
  CHECK(access(out, F_OK) != 0);
  CHECK(run_eval("nonet", "paella_tiny.safetensors", out, "") == 1);
  CHECK(run_eval("paella", "missing.safetensors", out, "") == 1);
  CHECK(run_eval("paella", "paella_tiny.safetensors", out, "--bogus") == 2);
  char err[512];
  snprintf(err, sizeof err, "%s/err", dir);
  unlink(err);
  unlink(out);
  rmdir(dir);
  TEST_END();
}
