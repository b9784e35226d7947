/* Every network of `paella eval` against its golden file: each out.X with a float64 twin
 * out.X_f64 must be within 1e-4 max-norm relative error, each integer output and each
 * exact copy (codebook lookups) bit-identical. */
#include <stdio.h>
#include <string.h>

#include "model/eval.h"
#include "tests/golden.h"
#include "tests/test.h"

#define TOL 1e-4

static const pa_tensor *find_out(const pa_eval_outputs *o, const char *name) {
  for (int i = 0; i < o->n; i++)
    if (!strcmp(o->items[i].name, name)) return o->items[i].tensor;
  return NULL;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

/* exact: golden names compared bit for bit (beside every integer output) */
static void check_file(const char *file, const char *net, const char *const *exact, int min_checked) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", PAELLA_GOLDEN_DIR, file);
  pa_weights *g = NULL;
  pa_eval_outputs out = {0};
  CHECK_OK(pa_weights_open(path, &g));
  if (!g) return;
  CHECK_OK(pa_eval_net(pa_cpu_backend(), net, g, true, &out));
  printf("%s (%s):\n", file, net);
  int checked = 0;
  for (int i = 0; i < pa_weights_count(g); i++) {
    const char *name = pa_weights_name(g, i);
    const pa_tensor *ref = pa_weights_tensor(g, i);
    if (strncmp(name, "out.", 4)) continue;
    char base[128];
    if (ends_with(name, "_f64")) {
      snprintf(base, sizeof base, "%.*s", (int)strlen(name) - 4, name);
      const pa_tensor *y = find_out(&out, base);
      double e = golden_rel_err(y, ref);
      printf("  %-36s rel err %.3e\n", base, e);
      CHECK_MSG(e <= TOL, "%s %s: %.3e", file, base, e);
      checked++;
      continue;
    }
    bool want_exact = ref->dtype == PA_I64 || ref->dtype == PA_I32;
    for (int k = 0; exact && exact[k]; k++) want_exact |= !strcmp(exact[k], name);
    if (!want_exact) continue;
    const pa_tensor *y = find_out(&out, name);
    pa_tensor *yc = y && y->dtype != ref->dtype ? pa_tensor_to_dtype(y, ref->dtype) : NULL;
    bool same = golden_equal_bytes(yc ? yc : y, ref);
    printf("  %-36s %s\n", name, same ? "exact" : "MISMATCH");
    CHECK_MSG(same, "%s %s not bit-identical", file, name);
    pa_tensor_free(yc);
    checked++;
  }
  CHECK_MSG(checked >= min_checked, "%s: only %d outputs checked", file, checked);
  pa_eval_outputs_free(&out);
  pa_weights_free(g);
}

int main(void) {
  check_file("vqgan_tiny.safetensors", "vqgan", (const char *const[]){"out.codebook_lookup", NULL}, 17);
  check_file("prior_tiny.safetensors", "prior", NULL, 10);
  check_file("t5_tiny.safetensors", "t5", NULL, 1);
  check_file("clip_text_tiny.safetensors", "clip-text", NULL, 1);
  check_file("clip_vision_tiny.safetensors", "clip-vision", NULL, 1);
  TEST_END();
}
