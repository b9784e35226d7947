/* The generation pipeline: prompt -> ByT5 + CLIP text embeddings -> prior (or the CLIP image
 * embedding of an input image) -> the v3 token sampler over Paella -> VQGAN decode -> RGB.
 * One process, any backend; `paella generate`, the worker and tests all call pa_generate. */
#ifndef PAELLA_MODEL_PIPELINE_H
#define PAELLA_MODEL_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "model/denoise.h"
#include "model/image.h"
#include "model/sampler.h"
#include "ops/ops.h"

typedef struct pa_pipeline pa_pipeline;

/* Published file names looked up in a models directory (see docs/models.md). */
#define PA_FILE_PAELLA "paella_v3.pt"
#define PA_FILE_PRIOR "prior_v1.pt"
#define PA_FILE_VQGAN "vqgan_f4.pt"
#define PA_DIR_BYT5 "byt5-xl"                          /* pytorch_model.bin or model.safetensors */
#define PA_DIR_CLIP "CLIP-ViT-H-14-laion2B-s32B-b79K"  /* model.safetensors (transformers) */

typedef struct {
  const char *models_dir; /* NULL or "": the embedded default model (model/default_model.h) */
  bool random_weights;    /* with the embedded model: its architecture with random weights
                             (the quality test's baseline; its images are noise) */
  pa_backend *be;
  int max_side;           /* largest width/height accepted (pixels), 0 = 1024 */
} pa_pipeline_options;

int pa_pipeline_open(const pa_pipeline_options *o, pa_pipeline **out);
void pa_pipeline_free(pa_pipeline *p);
/* True for the random-weight twin of the embedded model (random_weights): its images are noise. */
bool pa_pipeline_untrained(const pa_pipeline *p);
/* Image sides must be multiples of this (32 for the published models). */
int pa_pipeline_size_multiple(const pa_pipeline *p);
int pa_pipeline_max_side(const pa_pipeline *p);
/* The SHA-256 of each network's weights as a JSON object {"byt5", "clip", "paella", "prior",
 * "vqgan"} of lowercase hex: of the files read (models_dir), or of the embedded default's
 * bytes; "random" for the random-weight twin. Computed once when the pipeline opens (reading
 * every weight file once more: seconds for the published ~15 GB). Embedded in every image's
 * generation parameters ("models"). */
const char *pa_pipeline_checksums(const pa_pipeline *p);
/* Paella forwards run so far (one per batch, conditional and unconditional counted apart). */
long long pa_pipeline_forwards(const pa_pipeline *p);

typedef enum {
  PA_GEN_TXT2IMG,   /* text to image */
  PA_GEN_IMG2IMG,   /* structural editing: start from the noised tokens of `image` */
  PA_GEN_INPAINT,   /* regenerate where `mask` is white, keep the rest of `image` */
  PA_GEN_OUTPAINT,  /* place `image` at (offset_x, offset_y) on a larger canvas, fill the rest */
  PA_GEN_VARIATION, /* the CLIP image embedding of `image` replaces the prior's output */
} pa_gen_mode;

typedef enum { PA_REGIONS_NONE, PA_REGIONS_LEFT_RIGHT, PA_REGIONS_TOP_BOTTOM } pa_regions;

/* pa_progress_fn (model/denoise.h) is called after every prior and denoising step; returning
 * false cancels the generation (pa_generate then fails with PA_ERR_CANCELED). */

typedef struct {
  pa_gen_mode mode;
  const char *prompt;
  const char *negative_prompt; /* NULL or "": the empty prompt, as upstream's unconditional */
  const char *prompt2;         /* second prompt: interpolation target or the second region */
  int width, height, batch;    /* pixels; image b of the batch uses seed + b */
  uint64_t seed;
  pa_sampler_config sampler;
  int prior_steps;             /* 0 = no prior (no CLIP image conditioning) */
  float prior_cfg;
  bool prior_ddim;
  const pa_image *image, *mask;
  int offset_x, offset_y;      /* outpainting: pixels, multiples of the token size (4) */
  float strength;              /* img2img: noise level to start from (t_start), 0..1 */
  float attn_weight[3];        /* attention re-weighting of the ByT5, CLIP and CLIP-image tokens */
  pa_regions regions;          /* with prompt2: prompt left/top, prompt2 right/bottom */
  bool interpolate;            /* with prompt2: mix the two prompts' embeddings by interp_t */
  float interp_t;
  bool slerp;
  pa_progress_fn progress;
  void *progress_user;
  /* Previews while denoising: every preview_every steps (0 = none), at most one per
   * preview_interval seconds (pa_throttle), image 0 of the batch decoded by the VQGAN from the
   * current tokens and scaled down so that its longer side is at most preview_max_side pixels
   * (0: full size). `preview` gets the image (valid during the call only). A request with
   * previews is not batched with others (pa_gen_batchable). */
  int preview_every;
  double preview_interval;
  int preview_max_side;
  void (*preview)(void *user, int step, int total, const pa_image *img);
  void *preview_user;
} pa_gen_request;

/* At most one event per `interval` seconds: pa_throttle_take is true (and records `now`) for
 * the first call and for every call at least `interval` after the last one it let through. */
typedef struct {
  double interval, last;
  bool taken;
} pa_throttle;
bool pa_throttle_take(pa_throttle *t, double now);

/* Defaults: 256x256, batch 1, seed 0, the v3 sampler defaults, prior 60 DDPM steps, cfg 3. */
pa_gen_request pa_gen_request_default(void);
/* Validates a request against the pipeline (sizes, images, mask, modes) without running. */
int pa_gen_request_check(const pa_pipeline *p, const pa_gen_request *r);

/* An optional cache of text embeddings (the worker shares one through Redis). Keys are the
 * encoder's identity plus the exact token ids; values are host F32 tensors. */
typedef struct {
  void *user;
  /* true with *out (a new host tensor, caller frees) on a hit */
  bool (*lookup)(void *user, const char *encoder, const int64_t *ids, int n, pa_tensor **out);
  void (*store)(void *user, const char *encoder, const int64_t *ids, int n, const pa_tensor *value);
} pa_embed_cache;

/* The cache is used by every later pa_generate; NULL disables it. Not owned. */
void pa_pipeline_set_cache(pa_pipeline *p, const pa_embed_cache *cache);

typedef struct {
  pa_image **images; /* batch images */
  int n;
  int64_t *tokens;   /* (n, h, w) final token grid */
  int grid_h, grid_w;
  double seconds_encode; /* tokenizers + text encoders */
  double seconds_prior;  /* the prior (or the CLIP image encoder for variations) */
  double seconds_denoise, seconds_decode;
} pa_gen_result;

int pa_generate(pa_pipeline *p, const pa_gen_request *r, pa_gen_result *out);
/* Several requests (a worker's claimed batch); out[i] for reqs[i]. Consecutive text-to-image
 * requests that agree on size, sampler and prior settings and on their ByT5 lengths (prompt and
 * negative prompt) run as one batch of up to PA_GEN_MAX_GROUP requests - every image the same
 * as its own pa_generate would give, up to floating-point reassociation; the others run one by
 * one. Stops at the first failure, returning its index in *failed (-1 when all succeeded); the
 * results before it are valid. */
#define PA_GEN_MAX_GROUP 16
/* The batching policy (the worker groups claimed jobs with it too): plain text-to-image
 * requests with the same size, sampler and prior settings share every forward; prompt
 * lengths and negative prompts may differ. */
bool pa_gen_batchable(const pa_gen_request *a, const pa_gen_request *b);
int pa_generate_many(pa_pipeline *p, const pa_gen_request *reqs, int n, pa_gen_result *out, int *failed);
void pa_gen_result_free(pa_gen_result *r);

/* The VQGAN token grid of an image (h = H/4, w = W/4), for tests and editing modes. */
int pa_pipeline_encode_image(pa_pipeline *p, const pa_image *img, int64_t *tokens);

#endif
