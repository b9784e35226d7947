/* The text and image encoders beyond the golden comparison of test_golden_nets: T5 loaded
 * from the torch.save fixture (tied storages, a strided extra key) gives the safetensors
 * result bit for bit; T5's position buckets; configs inferred from shapes; CLIP's image
 * preprocessing; and the time per prompt of each tiny encoder. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model/clip.h"
#include "model/eval.h"
#include "model/nn.h"
#include "model/t5.h"
#include "tests/golden.h"
#include "tests/test.h"

#define TOL 1e-4

static pa_weights *open_golden(const char *file) {
  char path[512];
  pa_weights *w = NULL;
  snprintf(path, sizeof path, "%s/%s", PAELLA_GOLDEN_DIR, file);
  CHECK_OK(pa_weights_open(path, &w));
  return w;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* T5 encoder output (B, L, D) as a host tensor, or NULL. */
static pa_tensor *t5_run(pa_weights *w, const pa_t5_config *cfg, const pa_tensor *ids) {
  pa_backend *be = pa_cpu_backend();
  pa_t5 *m = NULL;
  pa_tensor *h = NULL, *out = NULL;
  CHECK_OK(pa_t5_load(be, w, cfg, &m));
  if (!m) return NULL;
  h = pa_alloc_f32(be, 3, ids->shape[0], ids->shape[1], (int64_t)cfg->d_model);
  if (h && pa_t5_encode(m, ids, h) == PA_OK) out = pa_download(be, h);
  CHECK_MSG(out != NULL, "t5 encode: %s", pa_errmsg());
  pa_release(be, h);
  pa_t5_free(m);
  return out;
}

/* Bucket boundaries of bidirectional T5 (32 buckets, max distance 128): 0..7 exact, then
 * log-spaced bins starting at 8, 12, 16, 23, 32, 46, 64, 91; keys after the query use
 * buckets 16..31. */
static void test_t5_buckets(void) {
  const int n[] = {0, 1, 7, 8, 11, 12, 15, 16, 22, 23, 31, 32, 45, 46, 63, 64, 90, 91, 127, 128, 5000};
  const int b[] = {0, 1, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15, 15, 15};
  for (size_t i = 0; i < sizeof n / sizeof n[0]; i++) {
    CHECK_MSG(pa_t5_bucket(-n[i], 32, 128) == b[i], "bucket(-%d) = %d, want %d", n[i], pa_t5_bucket(-n[i], 32, 128), b[i]);
    if (n[i] > 0)
      CHECK_MSG(pa_t5_bucket(n[i], 32, 128) == 16 + b[i], "bucket(+%d) = %d", n[i], pa_t5_bucket(n[i], 32, 128));
  }
}

/* q_transposed_view must be the transpose of block 0's q weight (a strided view in the zip). */
static void check_transposed_view(pa_weights *w) {
  const pa_tensor *q = pa_weights_find(w, "encoder.block.0.layer.0.SelfAttention.q.weight");
  const pa_tensor *qt = pa_weights_find(w, "q_transposed_view");
  CHECK(q && qt && q->dtype == PA_F32 && qt->dtype == PA_F32 && q->ndim == 2 && qt->ndim == 2);
  if (!q || !qt || q->ndim != 2 || qt->ndim != 2) return;
  int64_t R = q->shape[0], C = q->shape[1];
  int bad = qt->shape[0] != C || qt->shape[1] != R;
  for (int64_t i = 0; !bad && i < R; i++)
    for (int64_t j = 0; j < C; j++) bad += ((const float *)q->data)[i * C + j] != ((const float *)qt->data)[j * R + i];
  CHECK_MSG(!bad, "q_transposed_view is not the transpose of the q weight");
}

/* Field by field: struct padding is not part of a config. */
static bool t5_same(const pa_t5_config *a, const pa_t5_config *b) {
  return a->vocab_size == b->vocab_size && a->d_model == b->d_model && a->d_kv == b->d_kv &&
         a->d_ff == b->d_ff && a->num_layers == b->num_layers && a->num_heads == b->num_heads &&
         a->num_buckets == b->num_buckets && a->max_distance == b->max_distance && a->eps == b->eps;
}

static bool clip_same(const pa_clip_config *a, const pa_clip_config *b) {
  return a->hidden_size == b->hidden_size && a->intermediate_size == b->intermediate_size &&
         a->num_layers == b->num_layers && a->num_heads == b->num_heads &&
         a->projection_dim == b->projection_dim && a->vocab_size == b->vocab_size &&
         a->max_positions == b->max_positions && a->image_size == b->image_size &&
         a->patch_size == b->patch_size && a->eps == b->eps && a->act == b->act;
}

static void test_t5_torch_zip(void) {
  pa_weights *st = open_golden("t5_tiny.safetensors"), *pt = open_golden("t5_tiny.bin");
  if (!st || !pt) goto done;
  int rc = PA_OK;
  pa_t5_config cfg = pa_t5_default_config(), inferred = pa_t5_default_config();
  json_t *j = pa_cfg_from_weights(st, &rc);
  CHECK_OK(pa_t5_config_from_json(j, &cfg));
  json_decref(j);
  CHECK_OK(pa_t5_config_infer(pt, &inferred));
  CHECK_MSG(t5_same(&cfg, &inferred), "inferred t5 config differs from the JSON one");
  const pa_tensor *ids = pa_weights_find(st, "in.input_ids"), *ref = pa_weights_find(st, "out.last_hidden_state_f64");
  CHECK(ids && ref);
  if (!ids || !ref) goto done;

  /* The strided extra key is not an encoder weight: refused unless the caller ignores it. */
  pa_t5 *m = NULL;
  CHECK(pa_t5_load(pa_cpu_backend(), pt, &inferred, &m) == PA_ERR_SHAPE);
  CHECK_MSG(strstr(pa_errmsg(), "q_transposed_view") != NULL, "error should name the key: %s", pa_errmsg());
  pa_t5_free(m);
  check_transposed_view(pt);
  pa_weights_reset_used(pt);
  CHECK_OK(pa_weights_mark_used(pt, "q_transposed_view"));

  pa_weights_mark_used(st, "in.input_ids");
  pa_weights_mark_used(st, "out.last_hidden_state");
  pa_weights_mark_used(st, "out.last_hidden_state_f64");
  pa_tensor *a = t5_run(st, &cfg, ids), *b = t5_run(pt, &inferred, ids);
  CHECK_MSG(golden_equal_bytes(a, b), "t5 from t5_tiny.bin differs from t5_tiny.safetensors");
  double e = golden_rel_err(b, ref);
  printf("t5_tiny.bin: last_hidden_state rel err %.3e vs _f64, identical to safetensors: %s\n", e,
         golden_equal_bytes(a, b) ? "yes" : "no");
  CHECK(e <= TOL);
  pa_tensor_free(a);
  pa_tensor_free(b);
done:
  pa_weights_free(st);
  pa_weights_free(pt);
}

/* A published checkpoint holds more than one tower/stack: those keys are ignored, any other
 * extra key is refused. `extra` lists keys to add (a 1-element tensor each), NULL-ended. */
static int load_with_extra(const char *file, const char *net, const char *const *extra) {
  pa_weights *w = open_golden(file);
  if (!w) return PA_ERR_IO;
  for (int i = 0; extra[i]; i++) pa_weights_add(w, extra[i], pa_tensor_new(PA_F32, 1, (const int64_t[]){1}));
  pa_eval_outputs out = {0};
  int rc = pa_eval_net(pa_cpu_backend(), net, w, false, &out);
  pa_eval_outputs_free(&out);
  pa_weights_free(w);
  return rc;
}

static void test_ignored_keys(void) {
  const char *t5_full[] = {"decoder.block.0.layer.0.SelfAttention.q.weight", "decoder.final_layer_norm.weight", "lm_head.weight", NULL};
  const char *t5_bad[] = {"encoder.block.0.layer.0.SelfAttention.bogus", NULL};
  const char *text_full[] = {"vision_model.post_layernorm.weight", "visual_projection.weight", "logit_scale",
                             "text_model.embeddings.position_ids", NULL};
  const char *vision_full[] = {"text_model.final_layer_norm.weight", "text_projection.weight", "logit_scale",
                               "vision_model.embeddings.position_ids", NULL};
  const char *clip_bad[] = {"text_model.encoder.layers.9.mlp.fc1.weight", NULL};
  CHECK_OK(load_with_extra("t5_tiny.safetensors", "t5", t5_full));
  CHECK(load_with_extra("t5_tiny.safetensors", "t5", t5_bad) == PA_ERR_SHAPE);
  CHECK_OK(load_with_extra("clip_text_tiny.safetensors", "clip-text", text_full));
  CHECK_OK(load_with_extra("clip_vision_tiny.safetensors", "clip-vision", vision_full));
  CHECK(load_with_extra("clip_text_tiny.safetensors", "clip-text", clip_bad) == PA_ERR_SHAPE);
}

/* Shapes alone give every size but the head count (ViT-H-14's 16 by default). */
static void test_clip_infer(const char *file, bool vision) {
  pa_weights *w = open_golden(file);
  if (!w) return;
  int rc = PA_OK;
  pa_clip_config js = vision ? pa_clip_vision_default_config() : pa_clip_text_default_config(), inf = js;
  json_t *j = pa_cfg_from_weights(w, &rc);
  CHECK_OK(pa_clip_config_from_json(j, vision, &js));
  json_decref(j);
  CHECK_OK(pa_clip_config_infer(w, vision, &inf));
  CHECK(inf.num_heads == 16 && js.num_heads == 4);
  inf.num_heads = js.num_heads;
  CHECK_MSG(clip_same(&js, &inf), "%s: inferred config differs from the JSON one", file);
  pa_weights_free(w);
}

/* CLIP's last_hidden_state has no _f64 twin in the goldens: compare with PyTorch's float32. */
static void test_clip_hidden(const char *file, const char *net) {
  pa_weights *w = open_golden(file);
  pa_eval_outputs out = {0};
  if (!w) return;
  CHECK_OK(pa_eval_net(pa_cpu_backend(), net, w, false, &out));
  const pa_tensor *ref = pa_weights_find(w, "out.last_hidden_state"), *y = NULL;
  for (int i = 0; i < out.n; i++)
    if (!strcmp(out.items[i].name, "out.last_hidden_state")) y = out.items[i].tensor;
  double e = golden_rel_err(y, ref);
  printf("%s: last_hidden_state rel err %.3e vs torch float32\n", file, e);
  CHECK(e <= 1e-5);
  pa_eval_outputs_free(&out);
  pa_weights_free(w);
}

/* ---- preprocessing ----------------------------------------------------------------------- */

static float expect_norm(double v, int ch) { return (float)((v - pa_clip_mean[ch]) / pa_clip_std[ch]); }

static void test_preprocess_constant(void) {
  enum { H = 300, W = 517 };
  static uint8_t u8[H * W * 3];
  static float f32[H * W * 3];
  const uint8_t rgb[3] = {200, 17, 99};
  for (int i = 0; i < H * W * 3; i++) f32[i] = (u8[i] = rgb[i % 3]) / 255.0f;
  pa_tensor *a = NULL, *b = NULL;
  CHECK_OK(pa_clip_preprocess_u8(u8, H, W, PA_CLIP_IMAGE_SIZE, &a));
  CHECK_OK(pa_clip_preprocess_f32(f32, H, W, PA_CLIP_IMAGE_SIZE, &b));
  if (!a || !b) goto done;
  CHECK(a->ndim == 4 && a->shape[0] == 1 && a->shape[1] == 224 && a->shape[2] == 224 && a->shape[3] == 3);
  CHECK(pa_same_shape(a, b));
  double worst_u8 = 0, worst_f = 0;
  for (int64_t i = 0; i < pa_numel(a); i++) {
    int ch = (int)(i % 3);
    worst_u8 = fmax(worst_u8, fabs(((float *)a->data)[i] - expect_norm(rgb[ch] / 255.0, ch)));
    worst_f = fmax(worst_f, fabs(((float *)b->data)[i] - expect_norm(f32[ch], ch)));
  }
  CHECK_MSG(worst_u8 == 0.0, "constant u8 image changed by %g", worst_u8);
  CHECK_MSG(worst_f <= 1e-5, "constant float image changed by %g", worst_f);
done:
  pa_tensor_free(a);
  pa_tensor_free(b);
}

/* No resampling when the short side is already 224: the crop is then a pure window at
 * floor((long - 224) / 2), seen through a ramp along the long side. */
static void test_preprocess_crop(bool tall) {
  enum { L = 301 };
  int H = tall ? L : 224, W = tall ? 224 : L;
  static float img[L * 224 * 3];
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      for (int ch = 0; ch < 3; ch++) img[(y * W + x) * 3 + ch] = (float)(tall ? y : x) / L;
  pa_tensor *t = NULL;
  CHECK_OK(pa_clip_preprocess_f32(img, H, W, 224, &t));
  if (!t) return;
  int off = (L - 224) / 2, bad = 0;
  for (int y = 0; y < 224; y++)
    for (int x = 0; x < 224; x++) {
      int along = (tall ? y : x) + off;
      for (int ch = 0; ch < 3; ch++)
        bad += fabsf(((float *)t->data)[(y * 224 + x) * 3 + ch] - expect_norm((float)along / L, ch)) > 1e-5f;
    }
  CHECK_MSG(!bad, "%s crop: %d values off the centred window", tall ? "tall" : "wide", bad);
  pa_tensor_free(t);
}

/* Downscaling a mirror-symmetric image (448 x 600 -> 224 x 300, crop at 38) keeps it
 * symmetric about the crop's centre; the 8-bit path stays within its roundings. */
static void test_preprocess_symmetry(void) {
  enum { H = 448, W = 600 };
  static float f32[H * W * 3];
  static uint8_t u8[H * W * 3];
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      for (int ch = 0; ch < 3; ch++) {
        double d = fabs(x + 0.5 - W / 2.0);
        u8[(y * W + x) * 3 + ch] = (uint8_t)(((int)d * 7 + y * 3 + ch * 50) % 256);
        f32[(y * W + x) * 3 + ch] = u8[(y * W + x) * 3 + ch] / 255.0f;
      }
  pa_tensor *a = NULL, *b = NULL;
  CHECK_OK(pa_clip_preprocess_f32(f32, H, W, 224, &a));
  CHECK_OK(pa_clip_preprocess_u8(u8, H, W, 224, &b));
  if (!a || !b) goto done;
  const float *o = a->data, *q = b->data;
  double asym = 0, diff = 0;
  for (int y = 0; y < 224; y++)
    for (int x = 0; x < 224; x++)
      for (int ch = 0; ch < 3; ch++) {
        asym = fmax(asym, fabs(o[(y * 224 + x) * 3 + ch] - o[(y * 224 + 223 - x) * 3 + ch]));
        diff = fmax(diff, fabs(o[(y * 224 + x) * 3 + ch] - q[(y * 224 + x) * 3 + ch]) * pa_clip_std[ch]);
      }
  CHECK_MSG(asym <= 1e-5, "downscaled symmetric image is asymmetric by %g", asym);
  CHECK_MSG(diff <= 2.5 / 255, "8-bit and float paths differ by %g (> 2 levels)", diff * 255);
done:
  pa_tensor_free(a);
  pa_tensor_free(b);
}

/* The 8-bit path against Pillow 9.4 (Image.resize(BICUBIC), then the floor-centred crop),
 * on pseudo-random images: downscale, upscale and a tall image. Reference: byte sum and a
 * rolling hash of the cropped (224, 224, 3) bytes, and the first two pixels. */
static void test_preprocess_pillow(void) {
  static const struct {
    int H, W;
    unsigned seed;
    long sum;
    uint32_t hash;
    uint8_t first[6];
  } cases[] = {
      {300, 451, 1, 19224728, 1334802140u, {189, 155, 158, 148, 80, 118}},
      {100, 150, 2, 19190194, 485114822u, {88, 131, 181, 160, 78, 151}},
      {449, 224, 3, 19171693, 1001089637u, {255, 186, 25, 179, 114, 226}},
  };
  static uint8_t img[449 * 451 * 3];
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    unsigned s = cases[c].seed;
    for (int i = 0; i < cases[c].H * cases[c].W * 3; i++) {
      s = (s * 1103515245u + 12345u) & 0x7fffffffu;
      img[i] = (uint8_t)(s >> 16);
    }
    pa_tensor *t = NULL;
    CHECK_OK(pa_clip_preprocess_u8(img, cases[c].H, cases[c].W, 224, &t));
    if (!t) continue;
    long sum = 0;
    uint32_t hash = 0;
    int first_bad = 0;
    for (int64_t i = 0; i < pa_numel(t); i++) {
      int ch = (int)(i % 3);
      long v = lround((((float *)t->data)[i] * (double)pa_clip_std[ch] + pa_clip_mean[ch]) * 255.0);
      sum += v;
      hash = hash * 31u + (uint32_t)v;
      if (i < 6) first_bad += v != cases[c].first[i];
    }
    CHECK_MSG(sum == cases[c].sum && hash == cases[c].hash && !first_bad,
              "%dx%d: sum %ld hash %u differ from Pillow's %ld %u", cases[c].H, cases[c].W, sum, hash,
              cases[c].sum, cases[c].hash);
    pa_tensor_free(t);
  }
}

/* ---- timing ------------------------------------------------------------------------------ */

/* One prompt (row 0 of the golden input) per call, after a warm-up. */
static void time_t5(void) {
  pa_weights *w = open_golden("t5_tiny.safetensors");
  if (!w) return;
  pa_backend *be = pa_cpu_backend();
  pa_t5_config cfg = pa_t5_default_config();
  pa_t5 *m = NULL;
  pa_tensor *h = NULL;
  CHECK_OK(pa_t5_config_infer(w, &cfg));
  for (int i = 0; i < pa_weights_count(w); i++)
    if (!strncmp(pa_weights_name(w, i), "in.", 3) || !strncmp(pa_weights_name(w, i), "out.", 4))
      pa_weights_mark_used(w, pa_weights_name(w, i));
  const pa_tensor *ids = pa_weights_find(w, "in.input_ids");
  pa_tensor one = pa_view_rows(ids, 0, 1); // (1, L)
  CHECK_OK(pa_t5_load(be, w, &cfg, &m));
  if (m && (h = pa_alloc_f32(be, 3, (int64_t)1, one.shape[1], (int64_t)cfg.d_model))) {
    int n = 200;
    CHECK_OK(pa_t5_encode(m, &one, h));
    double t0 = now_s();
    clock_t c0 = clock();
    for (int i = 0; i < n; i++) pa_t5_encode(m, &one, h);
    printf("t5_tiny: %.1f us per prompt (L=%lld), %.1f us CPU\n", (now_s() - t0) / n * 1e6,
           (long long)one.shape[1], (double)(clock() - c0) / CLOCKS_PER_SEC / n * 1e6);
  }
  pa_release(be, h);
  pa_t5_free(m);
  pa_weights_free(w);
}

static void time_clip(const char *file, bool vision) {
  pa_weights *w = open_golden(file);
  if (!w) return;
  pa_backend *be = pa_cpu_backend();
  pa_clip_config cfg;
  pa_clip *m = NULL;
  pa_tensor *h = NULL, *e = NULL, *px = NULL, *px_nhwc = NULL;
  int rc = PA_OK;
  json_t *j = pa_cfg_from_weights(w, &rc);
  cfg = vision ? pa_clip_vision_default_config() : pa_clip_text_default_config();
  CHECK_OK(pa_clip_config_from_json(j, vision, &cfg));
  json_decref(j);
  for (int i = 0; i < pa_weights_count(w); i++)
    if (!strncmp(pa_weights_name(w, i), "in.", 3) || !strncmp(pa_weights_name(w, i), "out.", 4))
      pa_weights_mark_used(w, pa_weights_name(w, i));
  CHECK_OK(pa_clip_load(be, w, &cfg, vision, &m));
  const pa_tensor *in = pa_weights_find(w, vision ? "in.pixel_values" : "in.input_ids");
  if (!m || !in) goto done;
  pa_tensor one = pa_view_rows(in, 0, 1);
  int64_t L = vision ? 1 + (cfg.image_size / cfg.patch_size) * (cfg.image_size / cfg.patch_size) : one.shape[1];
  h = pa_alloc_f32(be, 3, (int64_t)1, L, (int64_t)cfg.hidden_size);
  e = pa_alloc_f32(be, 2, (int64_t)1, (int64_t)cfg.projection_dim);
  if (vision && (px_nhwc = pa_nchw_to_nhwc(&one))) px = pa_upload(be, px_nhwc);
  if (!h || !e || (vision && !px)) goto done;
  int n = 200;
#define RUN() (vision ? pa_clip_vision_forward(m, px, h, e) : pa_clip_text_forward(m, &one, h, e))
  CHECK_OK(RUN());
  double t0 = now_s();
  clock_t c0 = clock();
  for (int i = 0; i < n; i++) RUN();
#undef RUN
  printf("%s: %.1f us per %s, %.1f us CPU\n", file, (now_s() - t0) / n * 1e6, vision ? "image" : "prompt",
         (double)(clock() - c0) / CLOCKS_PER_SEC / n * 1e6);
done:
  pa_tensor_free(px_nhwc);
  pa_release(be, px);
  pa_release(be, h);
  pa_release(be, e);
  pa_clip_free(m);
  pa_weights_free(w);
}

int main(void) {
  test_t5_buckets();
  test_t5_torch_zip();
  test_ignored_keys();
  test_clip_infer("clip_text_tiny.safetensors", false);
  test_clip_infer("clip_vision_tiny.safetensors", true);
  test_clip_hidden("clip_text_tiny.safetensors", "clip-text");
  test_clip_hidden("clip_vision_tiny.safetensors", "clip-vision");
  test_preprocess_constant();
  test_preprocess_crop(false);
  test_preprocess_crop(true);
  test_preprocess_symmetry();
  test_preprocess_pillow();
  time_t5();
  time_clip("clip_text_tiny.safetensors", false);
  time_clip("clip_vision_tiny.safetensors", true);
  TEST_END();
}
