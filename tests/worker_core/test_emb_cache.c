/* The shared embedding cache: an exact float32 round trip, hits across two instances (two workers) on one
 * Redis, the in-process LRU bounds, a dead Redis read as misses, and the pipeline's use of it. */
#include "harness.h"
#include "model/pipeline.h"
#include "ops/backend.h"
#include "ops/tensor.h"
#include "tests/test.h"
#include "worker/cache.h"

static pa_emb_cache *open_cache(const char *url, size_t entries) {
  pa_emb_cache_options o = {.redis_url = url, .ttl_s = 60, .max_entries = entries};
  pa_emb_cache *c = NULL;
  CHECK_OK(pa_emb_cache_open(&o, &c));
  if (!c) exit(1);
  return c;
}

static pa_tensor *ramp(int n) {
  pa_tensor *t = pa_tensor_new(PA_F32, 3, (const int64_t[]){1, n, 4});
  for (int i = 0; i < n * 4; i++) ((float *)t->data)[i] = 0.1f * (float)i - 1.0f;
  return t;
}

static void test_two_instances(redisContext *rc, const char *url) {
  pa_emb_cache *a = open_cache(url, 16), *b = open_cache(url, 16);
  const pa_embed_cache *ha = pa_emb_cache_hook(a), *hb = pa_emb_cache_hook(b);
  int64_t ids[3] = {5, 6, 7}, other[3] = {5, 6, 8};
  pa_tensor *v = ramp(3), *got = NULL;
  CHECK(!ha->lookup(ha->user, "t5", ids, 3, &got) && !got);
  ha->store(ha->user, "t5", ids, 3, v);
  char key[76];
  pa_emb_cache_key("t5", ids, 3, key);
  CHECK(strlen(key) == 75 && !strncmp(key, "paella:emb:", 11));
  long long ttl = h_int(rc, "TTL %s", key);
  CHECK(ttl > 0 && ttl <= 60);
  CHECK(hb->lookup(hb->user, "t5", ids, 3, &got)); /* from Redis: another worker's entry */
  CHECK(got && got->ndim == 3 && got->shape[1] == 3 && got->shape[2] == 4);
  for (int i = 0; got && i < 12; i++)
    CHECK(((float *)got->data)[i] == ((float *)v->data)[i]); /* exact: a hit draws what a miss draws */
  pa_tensor_free(got);
  got = NULL;
  CHECK(hb->lookup(hb->user, "t5", ids, 3, &got)); /* now from b's LRU */
  pa_tensor_free(got);
  got = NULL;
  CHECK(!hb->lookup(hb->user, "t5", other, 3, &got));   /* other tokens */
  CHECK(!hb->lookup(hb->user, "clip", ids, 3, &got));   /* other encoder */
  pa_emb_cache_stats s;
  pa_emb_cache_get_stats(b, &s);
  CHECK(s.hits == 2 && s.local_hits == 1 && s.misses == 2 && s.errors == 0);
  pa_emb_cache_get_stats(a, &s);
  CHECK(s.hits == 0 && s.misses == 1 && s.stores == 1);
  /* a corrupt value reads as a miss */
  int64_t ids2[1] = {9};
  pa_emb_cache_key("t5", ids2, 1, key);
  freeReplyObject(redisCommand(rc, "SET %s garbage", key));
  CHECK(!hb->lookup(hb->user, "t5", ids2, 1, &got) && !got);
  pa_tensor_free(v);
  pa_emb_cache_free(a);
  pa_emb_cache_free(b);
}

static void test_lru_bounds(void) {
  pa_emb_cache *c = open_cache(NULL, 2);
  const pa_embed_cache *h = pa_emb_cache_hook(c);
  pa_tensor *v = ramp(2), *got = NULL;
  for (int64_t i = 0; i < 3; i++) h->store(h->user, "e", &i, 1, v);
  pa_emb_cache_stats s;
  pa_emb_cache_get_stats(c, &s);
  CHECK(s.lru_entries == 2);
  int64_t k0 = 0, k2 = 2;
  CHECK(!h->lookup(h->user, "e", &k0, 1, &got)); /* the oldest was evicted */
  CHECK(h->lookup(h->user, "e", &k2, 1, &got));
  pa_tensor_free(got);
  pa_tensor_free(v);
  pa_emb_cache_free(c);
}

static void test_redis_down(void) {
  pa_emb_cache *c = open_cache("redis://127.0.0.1:1/0", 4);
  const pa_embed_cache *h = pa_emb_cache_hook(c);
  pa_tensor *v = ramp(1), *got = NULL;
  int64_t id = 1, id2 = 2;
  h->store(h->user, "e", &id, 1, v); /* no Redis: stays local, no failure */
  CHECK(h->lookup(h->user, "e", &id, 1, &got));
  pa_tensor_free(got);
  got = NULL;
  CHECK(!h->lookup(h->user, "e", &id2, 1, &got));
  pa_emb_cache_stats s;
  pa_emb_cache_get_stats(c, &s);
  CHECK(s.errors >= 1);
  pa_tensor_free(v);
  pa_emb_cache_free(c);
}

/* Two pipelines (two workers) with their own caches on one Redis: the second one's text
 * encodings all come from the first one's entries. */
static void test_pipeline(const char *url) {
  pa_pipeline_options po = {.be = pa_cpu_backend()};
  pa_pipeline *p1 = NULL, *p2 = NULL;
  CHECK_OK(pa_pipeline_open(&po, &p1));
  CHECK_OK(pa_pipeline_open(&po, &p2));
  if (!p1 || !p2) return;
  pa_emb_cache *a = open_cache(url, 64), *b = open_cache(url, 64);
  pa_pipeline_set_cache(p1, pa_emb_cache_hook(a));
  pa_pipeline_set_cache(p2, pa_emb_cache_hook(b));
  pa_gen_request r = pa_gen_request_default();
  r.prompt = "a cached otter";
  r.width = r.height = 32;
  r.sampler.steps = 2;
  r.sampler.renoise_steps = 1;
  r.sampler.cond_steps = 2;
  r.prior_steps = 1;
  pa_gen_result out;
  CHECK_OK(pa_generate(p1, &r, &out));
  pa_gen_result_free(&out);
  CHECK_OK(pa_generate(p2, &r, &out));
  pa_gen_result_free(&out);
  pa_emb_cache_stats sa, sb;
  pa_emb_cache_get_stats(a, &sa);
  pa_emb_cache_get_stats(b, &sb);
  CHECK_MSG(sa.misses > 0 && sa.hits == 0, "first worker: %llu hits %llu misses", (unsigned long long)sa.hits,
            (unsigned long long)sa.misses);
  CHECK_MSG(sb.hits == sa.misses && sb.misses == 0, "second worker: %llu hits %llu misses",
            (unsigned long long)sb.hits, (unsigned long long)sb.misses);
  pa_pipeline_free(p1);
  pa_pipeline_free(p2);
  pa_emb_cache_free(a);
  pa_emb_cache_free(b);
}

int main(void) {
  h_redis_start();
  redisContext *rc = h_connect();
  char url[64];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", h_.port);
  test_two_instances(rc, url);
  test_lru_bounds();
  test_redis_down();
  test_pipeline(url);
  redisFree(rc);
  TEST_END();
}
