/* What the pipeline's files share (model/pipeline.c: opening, requests, one request;
 * model/conditioning.c: prompts and images -> Paella conditioning; model/batch.c: the
 * batching policy and grouped requests). Not a public interface. */
#ifndef PAELLA_MODEL_PIPELINE_INTERNAL_H
#define PAELLA_MODEL_PIPELINE_INTERNAL_H

#include "model/clip.h"
#include "model/paella.h"
#include "model/pipeline.h"
#include "model/prior.h"
#include "model/t5.h"
#include "model/tokenizer.h"
#include "model/vqgan.h"

#define BYT5_MAX_LEN 768

struct pa_pipeline {
  pa_backend *be;
  bool untrained;
  int max_side;
  pa_weights *w_paella, *w_prior, *w_vqgan, *w_t5, *w_clip;
  pa_paella *paella;
  pa_prior *prior;
  pa_vqgan *vqgan;
  pa_t5 *t5;
  pa_clip *clip_text, *clip_vision;
  const pa_clip_tokenizer *tok;
  const pa_embed_cache *cache;
  char t5_id[160], clip_id[160]; /* encoder identities for cache keys */
  long long forwards;            /* Paella forwards run (a batch counts once) */
  char *checksums;               /* pa_pipeline_checksums: computed once, at open */
};

/* One text's embeddings on the host: ByT5 states (1, L, D) and the CLIP text embedding (1, Dc). */
typedef struct {
  pa_tensor *byt5, *clip;
} text_embed;

/* Everything the sampling loop needs, prepared once per request. */
typedef struct {
  int B, h, w, K;
  pa_paella_cond *cond, *cond2, *uncond; /* cond2: second region's prompt, or NULL */
  float *attn_w;                         /* (n_attn) re-weighting of the conditional rows, or NULL */
  int n_attn;
  int64_t *init_noise;                   /* (B, h*w) */
  int64_t *pinned;                       /* (B, h*w) tokens kept where keep[p], or NULL */
  uint8_t *keep;                         /* (h*w) */
  double seconds_prior;                  /* spent in the prior (or the CLIP image encoder) */
  uint64_t *seeds;                       /* (B) the seed of each image */
  pa_progress_fn progress;               /* per denoising step; false cancels */
  void *progress_user;
} sample_ctx;

/* The previews of one request (pa_gen_request.preview_*), the pa_preview_hook's user. */
typedef struct {
  pa_pipeline *p;
  const pa_gen_request *r;
  pa_throttle throttle;
} preview_ctx;


double pl_now(void);
/* conditioning.c */
void pl_text_embed_free(text_embed *e);
/* Each text tokenized once; several texts padded to the longest ByT5 length together. */
int pl_embed_text(pa_pipeline *p, const char *text, text_embed *out);
int pl_embed_texts(pa_pipeline *p, const char *const *texts, int n, text_embed *out);
void pl_mix(float *out, const float *a, const float *b, int64_t n, float t, bool slerp);
int pl_make_cond(pa_pipeline *p, const text_embed *te, const pa_tensor *const *ci, const int *reps, int n,
                 pa_paella_cond **out);
int pl_image_condition(pa_pipeline *p, const pa_gen_request *r, const pa_tensor *clip_text, pa_tensor **out);
/* pipeline.c */
int pl_prepare_tokens(pa_pipeline *p, const pa_gen_request *r, sample_ctx *s, int64_t *tokens, pa_sampler_config *sc);
int pl_sample_tokens(pa_pipeline *p, const pa_gen_request *r, const pa_sampler_config *sc, sample_ctx *s,
                     int64_t *tokens);
int pl_decode_images(pa_pipeline *p, const sample_ctx *s, int64_t *tokens, pa_gen_result *out);

#endif
