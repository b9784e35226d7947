/* The loaders accept exactly the published checkpoints' key sets and shapes
 * (tests/golden/manifest_real.json), infer the published configurations from them, and
 * reject a missing key, a wrong shape or an extra key with a message naming it. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "model/paella.h"
#include "model/prior.h"
#include "model/vqgan.h"
#include "tests/test.h"

/* A weight store with the manifest's names and shapes; big tensors carry no data (the loaders
 * only read the data of tiny ones: BatchNorm statistics, ResBlock gammas). */
static pa_weights *from_manifest(json_t *model, const char *skip, const char *extra, int bad_dim) {
  pa_weights *w = pa_weights_new("manifest");
  json_t *sd = json_object_get(model, "state_dict"), *e;
  size_t i;
  json_array_foreach(sd, i, e) {
    const char *name = json_string_value(json_object_get(e, "name"));
    if (skip && !strcmp(name, skip)) continue;
    json_t *shape = json_object_get(e, "shape");
    int64_t s[PA_MAX_DIMS];
    int nd = (int)json_array_size(shape);
    for (int d = 0; d < nd; d++) s[d] = json_integer_value(json_array_get(shape, d));
    if (bad_dim && i == 10) s[0] += 1;
    bool is_int = !strcmp(json_string_value(json_object_get(e, "dtype")), "int64");
    pa_tensor *t = pa_tensor_wrap(is_int ? PA_I64 : PA_F32, nd, s, NULL);
    int64_t n = pa_numel(t);
    if (n <= 4096) {
      pa_tensor_free(t);
      t = pa_tensor_new(is_int ? PA_I64 : PA_F32, nd, s);
      if (!is_int)
        for (int64_t k = 0; k < n; k++) ((float *)t->data)[k] = 1.0f; /* positive variances */
    }
    pa_weights_add(w, name, t);
  }
  if (extra) pa_weights_add(w, extra, pa_tensor_new(PA_F32, 1, (const int64_t[]){1}));
  return w;
}

static bool same_paella(const pa_paella_config *a, const pa_paella_config *b) {
  bool same = a->c_in == b->c_in && a->c_out == b->c_out && a->num_labels == b->num_labels &&
              a->c_r == b->c_r && a->patch_size == b->patch_size && a->c_cond == b->c_cond &&
              a->levels == b->levels && a->clip_embd == b->clip_embd && a->byt5_embd == b->byt5_embd &&
              a->clip_seq_len == b->clip_seq_len && a->kernel_size == b->kernel_size && a->self_attn == b->self_attn;
  for (int i = 0; same && i < a->levels; i++)
    same = a->c_hidden[i] == b->c_hidden[i] && a->nhead[i] == b->nhead[i] && a->blocks[i] == b->blocks[i] &&
           !strcmp(a->level_config[i], b->level_config[i]);
  return same;
}

static void test_paella(json_t *m) {
  pa_weights *w = from_manifest(m, NULL, NULL, 0);
  pa_paella_config got, want = pa_paella_default_config();
  CHECK_OK(pa_paella_config_infer(w, &got));
  CHECK(same_paella(&got, &want));
  pa_paella *p = NULL;
  CHECK_OK(pa_paella_load(pa_cpu_backend(), w, &want, &p));
  CHECK(pa_weights_first_unused(w, NULL) == NULL);
  pa_paella_free(p);
  pa_weights_free(w);
  printf("paella_v3: %lld keys accepted\n", (long long)json_array_size(json_object_get(m, "state_dict")));

  w = from_manifest(m, "down_blocks.1.3.kv_mapper.1.bias", NULL, 0);
  CHECK(pa_paella_load(pa_cpu_backend(), w, &want, &p) == PA_ERR_NOTFOUND);
  CHECK(strstr(pa_errmsg(), "down_blocks.1.3.kv_mapper.1.bias") != NULL);
  pa_weights_free(w);
  w = from_manifest(m, NULL, "down_blocks.9.9.weight", 0);
  CHECK(pa_paella_load(pa_cpu_backend(), w, &want, &p) == PA_ERR_SHAPE);
  CHECK(strstr(pa_errmsg(), "unexpected tensor 'down_blocks.9.9.weight'") != NULL);
  pa_weights_free(w);
  w = from_manifest(m, NULL, NULL, 1);
  CHECK(pa_paella_load(pa_cpu_backend(), w, &want, &p) == PA_ERR_SHAPE);
  printf("wrong shape: %s\n", pa_errmsg());
  CHECK(strstr(pa_errmsg(), "expected shape") && strstr(pa_errmsg(), "found"));
  pa_weights_free(w);
}

static void test_vqgan(json_t *m) {
  pa_weights *w = from_manifest(m, NULL, NULL, 0);
  pa_vqgan_config got, want = pa_vqgan_default_config();
  CHECK_OK(pa_vqgan_config_infer(w, &got));
  CHECK(got.levels == want.levels && got.bottleneck_blocks == want.bottleneck_blocks &&
        got.c_hidden == want.c_hidden && got.c_latent == want.c_latent &&
        got.codebook_size == want.codebook_size && got.scale_factor == want.scale_factor);
  pa_vqgan *v = NULL;
  CHECK_OK(pa_vqgan_load(pa_cpu_backend(), w, &want, &v));
  CHECK(v && pa_vqgan_factor(v) == 4);
  pa_vqgan_free(v);
  pa_weights_free(w);
}

static void test_prior(json_t *m) {
  pa_weights *w = from_manifest(m, NULL, NULL, 0);
  pa_prior_config got, want = pa_prior_default_config();
  CHECK_OK(pa_prior_config_infer(w, &got));
  CHECK(got.clip_r == want.clip_r && got.c_hidden == want.c_hidden && got.c_r == want.c_r &&
        got.num_blocks == want.num_blocks);
  pa_prior *p = NULL;
  CHECK_OK(pa_prior_load(pa_cpu_backend(), w, &want, &p));
  pa_prior_free(p);
  pa_weights_free(w);
}

int main(void) {
  json_error_t err;
  json_t *root = json_load_file(PAELLA_GOLDEN_DIR "/manifest_real.json", 0, &err);
  CHECK(root != NULL);
  if (!root) TEST_END();
  json_t *models = json_object_get(root, "models");
  test_paella(json_object_get(models, "paella_v3"));
  test_vqgan(json_object_get(models, "vqgan"));
  test_prior(json_object_get(models, "prior"));
  json_decref(root);
  TEST_END();
}
