/* ByT5 tokenizer: the two rows of t5_tiny's in.input_ids (made by transformers'
 * ByT5Tokenizer), truncation at Paella's 768 tokens, batch padding and invalid UTF-8. */
#include <string.h>

#include "model/tokenizer.h"
#include "ops/error.h"
#include "ops/weights.h"
#include "tests/test.h"

/* "a photo of a cat \u00e9\u00e8 \U0001F600" and "", as in the golden. */
static const char *const golden_texts[2] = {"a photo of a cat \xC3\xA9\xC3\xA8 \xF0\x9F\x98\x80", ""};

/* The batch as the golden has it: (2, 27), rows padded with 0 to the longest. */
static void test_golden(void) {
  pa_weights *w = NULL;
  int64_t *ids = NULL;
  int seq = 0;
  CHECK_OK(pa_safetensors_open(PAELLA_GOLDEN_DIR "/t5_tiny.safetensors", &w));
  const pa_tensor *want = w ? pa_weights_find(w, "in.input_ids") : NULL;
  CHECK_MSG(want && want->dtype == PA_I64 && want->ndim == 2 && want->shape[0] == 2, "in.input_ids missing");
  CHECK_OK(pa_byt5_tokenize_batch(golden_texts, NULL, 2, PA_BYT5_MAX_LEN, 0, &ids, &seq));
  if (want && ids) {
    CHECK_MSG(seq == want->shape[1], "width %d vs %lld", seq, (long long)want->shape[1]);
    const int64_t *v = want->data;
    for (int i = 0; i < 2 * seq && seq == want->shape[1]; i++)
      CHECK_MSG(ids[i] == v[i], "id %d: %lld vs %lld", i, (long long)ids[i], (long long)v[i]);
  }
  /* The rule by hand: 'a' = 0x61 -> 100, ' ' -> 35, 17 ASCII bytes, e-acute C3 A9 ..., U+1F600 =
   * F0 9F 98 80 -> 243 162 155 131 at 22..25, </s> last; row 1 is [1, 0, ...]. */
  if (ids) {
    CHECK(seq == 27 && ids[0] == 100 && ids[1] == 35 && ids[17] == 0xC3 + 3 && ids[22] == 243 &&
          ids[23] == 162 && ids[24] == 155 && ids[25] == 131 && ids[26] == 1);
    CHECK(ids[27] == 1 && ids[28] == 0 && ids[53] == 0);
  }
  free(ids);
  pa_weights_free(w);
}

static void test_single(void) {
  int64_t ids[PA_BYT5_MAX_LEN];
  int n = 0;
  CHECK_OK(pa_byt5_tokenize("", 0, PA_BYT5_MAX_LEN, ids, &n));
  CHECK(n == 1 && ids[0] == PA_BYT5_EOS);
  CHECK_OK(pa_byt5_tokenize("\x00\xC3\xBF", 3, PA_BYT5_MAX_LEN, ids, &n)); /* NUL is a byte like any other */
  CHECK(n == 4 && ids[0] == 3 && ids[1] == 0xC3 + 3 && ids[2] == 0xBF + 3 && ids[3] == 1);
  CHECK(pa_byt5_tokenize("x", 1, 0, ids, &n) == PA_ERR_INVALID);
  CHECK_OK(pa_byt5_tokenize("xyz", 3, 1, ids, &n)); /* room for </s> only */
  CHECK(n == 1 && ids[0] == 1);
}

/* 1000 bytes keep the first 767, then </s>; 767 bytes fit exactly. */
static void test_truncation(void) {
  static char text[1000];
  int64_t ids[PA_BYT5_MAX_LEN + 8];
  int n = 0, ok = 1;
  for (int i = 0; i < 1000; i++) text[i] = (char)('a' + i % 26);
  CHECK_OK(pa_byt5_tokenize(text, 1000, PA_BYT5_MAX_LEN, ids, &n));
  CHECK(n == 768 && ids[767] == PA_BYT5_EOS);
  for (int i = 0; i < 767; i++) ok &= ids[i] == text[i] + 3;
  CHECK(ok);
  CHECK_OK(pa_byt5_tokenize(text, 767, PA_BYT5_MAX_LEN, ids, &n));
  CHECK(n == 768 && ids[766] == text[766] + 3 && ids[767] == 1);
  CHECK_OK(pa_byt5_tokenize(text, 766, PA_BYT5_MAX_LEN, ids, &n));
  CHECK(n == 767 && ids[766] == 1);
}

static void test_batch(void) {
  const char *texts[3] = {"ab", "", "abcdef"};
  size_t lens[3] = {2, 0, 6};
  int64_t *ids = NULL;
  int seq = 0;
  CHECK_OK(pa_byt5_tokenize_batch(texts, lens, 3, PA_BYT5_MAX_LEN, 10, &ids, &seq));
  CHECK(seq == 10 && ids && ids[0] == 'a' + 3 && ids[2] == 1 && ids[3] == 0 && ids[10] == 1 &&
        ids[11] == 0 && ids[26] == 1 && ids[29] == 0);
  free(ids);
  CHECK_OK(pa_byt5_tokenize_batch(texts, lens, 3, 4, 0, &ids, &seq)); /* truncated to 4 */
  CHECK(seq == 4 && ids && ids[8] == 'a' + 3 && ids[10] == 'c' + 3 && ids[11] == 1);
  free(ids);
  CHECK(pa_byt5_tokenize_batch(texts, lens, 3, PA_BYT5_MAX_LEN, 5, &ids, &seq) == PA_ERR_INVALID && !ids);
  texts[1] = "bad \xC3";
  lens[1] = 5;
  CHECK(pa_byt5_tokenize_batch(texts, lens, 3, PA_BYT5_MAX_LEN, 0, &ids, &seq) == PA_ERR_INVALID && !ids);
  CHECK_MSG(strstr(pa_errmsg(), "text 1") && strstr(pa_errmsg(), "UTF-8"), "message: %s", pa_errmsg());
}

static void test_invalid(void) {
  static const char *const bad[] = {"\x80", "\xC3", "\xC1\xBF", "\xE0\x9F\xBF", "\xED\xBF\xBF", "\xF4\x90\x80\x80", "\xFE"};
  int64_t ids[64];
  int n;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK_MSG(pa_byt5_tokenize(bad[i], strlen(bad[i]), 64, ids, &n) == PA_ERR_INVALID, "bad %zu accepted", i);
  /* The extremes of each length are valid. */
  const char *good = "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80\xF4\x8F\xBF\xBF";
  CHECK_OK(pa_byt5_tokenize(good, strlen(good), 64, ids, &n));
}

int main(void) {
  test_golden();
  test_single();
  test_truncation();
  test_batch();
  test_invalid();
  TEST_END();
}
