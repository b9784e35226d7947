/* Paella configurations other than the goldens' (level counts, patch size 1, kernel 5,
 * F blocks, odd c_r, no self-attention, optional conditioning), built by the network's own
 * loader over synthetic weights: the forward runs, is deterministic, gives finite logits of
 * the right shape, and each batch item is independent of the others. */
#include <stdio.h>
#include <string.h>

#include "model/paella.h"
#include "tests/test.h"

static pa_paella_config base(void) {
  pa_paella_config c = pa_paella_default_config();
  c.c_in = 8, c.c_out = 8, c.num_labels = 32, c.c_r = 16, c.patch_size = 2, c.c_cond = 16;
  c.levels = 2, c.c_hidden[0] = 16, c.c_hidden[1] = 24, c.nhead[0] = -1, c.nhead[1] = 3;
  c.blocks[0] = 1, c.blocks[1] = 1, c.clip_embd = 12, c.byt5_embd = 20, c.clip_seq_len = 2;
  strcpy(c.level_config[0], "CT");
  strcpy(c.level_config[1], "CTA");
  return c;
}

static void fill(pa_tensor *t, float scale) {
  float *d = t->data;
  for (int64_t i = 0; i < pa_numel(t); i++) d[i] = scale * (float)((i * 7919) % 13 - 6) / 6.0f;
}

/* Runs a batch of 2 and each item alone; returns max |batch - single| over the logits. */
static double run(const char *label, pa_paella_config cfg, int H, int W, bool clip, bool clip_image) {
  pa_backend *be = pa_cpu_backend();
  pa_weights *w = pa_weights_new(label);
  pa_weights_set_autocreate(w, 42, 0.1f);
  pa_paella *m = NULL;
  CHECK_OK(pa_paella_load(be, w, &cfg, &m));
  if (!m) {
    pa_weights_free(w);
    return INFINITY;
  }
  pa_tensor *byt5 = pa_tensor_new(PA_F32, 3, (const int64_t[]){2, 5, cfg.byt5_embd});
  pa_tensor *cl = pa_tensor_new_2d(PA_F32, 2, cfg.clip_embd), *ci = pa_tensor_new_2d(PA_F32, 2, cfg.clip_embd);
  pa_tensor *x = pa_tensor_new(PA_I64, 3, (const int64_t[]){2, H, W});
  pa_tensor *lg = pa_tensor_new(PA_F32, 4, (const int64_t[]){2, H, W, cfg.num_labels});
  pa_tensor *lg1 = pa_tensor_new(PA_F32, 4, (const int64_t[]){1, H, W, cfg.num_labels});
  fill(byt5, 1.0f);
  fill(cl, 0.5f);
  fill(ci, -0.5f);
  for (int64_t i = 0; i < pa_numel(x); i++) ((int64_t *)x->data)[i] = (i * 31) % cfg.num_labels;
  float r[2] = {0.9f, 0.35f};
  pa_paella_cond *c = NULL;
  CHECK_OK(pa_paella_cond_new(m, byt5, clip ? cl : NULL, clip_image ? ci : NULL, &c));
  CHECK_OK(pa_paella_forward(m, c, x, r, NULL, lg));
  bool finite = true;
  for (int64_t i = 0; i < pa_numel(lg); i++) finite &= isfinite(((float *)lg->data)[i]);
  CHECK_MSG(finite, "%s: non-finite logits", label);
  /* item 1 alone */
  pa_tensor b1 = pa_view_rows(byt5, 1, 2), c1 = pa_view_rows(cl, 1, 2), i1 = pa_view_rows(ci, 1, 2), x1 = pa_view_rows(x, 1, 2);
  pa_paella_cond *cs = NULL;
  CHECK_OK(pa_paella_cond_new(m, &b1, clip ? &c1 : NULL, clip_image ? &i1 : NULL, &cs));
  CHECK_OK(pa_paella_forward(m, cs, &x1, r + 1, NULL, lg1));
  double diff = 0, mag = 0;
  int64_t n1 = pa_numel(lg1);
  for (int64_t i = 0; i < n1; i++) {
    diff = fmax(diff, fabs(((float *)lg->data)[n1 + i] - ((float *)lg1->data)[i]));
    mag = fmax(mag, fabs(((float *)lg1->data)[i]));
  }
  printf("  %-28s logits max|.| %.3f, batch-vs-single diff %.2e\n", label, mag, diff);
  CHECK_MSG(mag > 1e-3, "%s: logits are all ~0", label);
  pa_paella_cond_free(m, c);
  pa_paella_cond_free(m, cs);
  pa_paella_free(m);
  pa_weights_free(w);
  pa_tensor_free(byt5);
  pa_tensor_free(cl);
  pa_tensor_free(ci);
  pa_tensor_free(x);
  pa_tensor_free(lg);
  pa_tensor_free(lg1);
  return mag > 0 ? diff / mag : diff;
}

int main(void) {
  pa_paella_config c;
  c = base();
  CHECK(run("2 levels", c, 8, 12, true, true) < 1e-5);
  c = base();
  c.patch_size = 1, c.kernel_size = 5, c.c_r = 15;
  CHECK(run("patch 1, kernel 5, odd c_r", c, 4, 6, true, false) < 1e-5);
  c = base();
  c.levels = 4, c.c_hidden[2] = 24, c.c_hidden[3] = 32, c.nhead[2] = 2, c.nhead[3] = 4;
  c.blocks[2] = 2, c.blocks[3] = 1;
  strcpy(c.level_config[2], "CTF");
  strcpy(c.level_config[3], "CFTA");
  CHECK(run("4 levels with F blocks", c, 16, 16, true, true) < 1e-5);
  c = base();
  c.self_attn = false, c.levels = 1, c.nhead[0] = 4, c.blocks[0] = 2;
  strcpy(c.level_config[0], "CTA");
  CHECK(run("1 level, cross-attn only", c, 4, 4, false, false) < 1e-5);
  /* bad configurations are refused up front */
  c = base();
  strcpy(c.level_config[1], "CTX");
  pa_paella *m = NULL;
  pa_weights *w = pa_weights_new("bad");
  pa_weights_set_autocreate(w, 1, 0.1f);
  CHECK(pa_paella_load(pa_cpu_backend(), w, &c, &m) == PA_ERR_INVALID);
  c = base();
  c.nhead[1] = 5; /* does not divide 24 */
  CHECK(pa_paella_load(pa_cpu_backend(), w, &c, &m) == PA_ERR_INVALID);
  pa_weights_free(w);
  TEST_END();
}
