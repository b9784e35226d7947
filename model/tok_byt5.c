/* ByT5 tokenizer: a token per UTF-8 byte. Ids 0..2 are <pad>, </s> and <unk>, so byte b is
 * id b + 3, and every text ends with </s>. There is no vocabulary and nothing to normalise;
 * the only decisions are truncation (Paella passes max_length=768 with truncation, which
 * keeps </s> as the last token) and padding with 0 to the longest row of a batch. */
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"
#include "ops/error.h"

/* Length of the UTF-8 sequence starting at s[0..avail), or 0 when it is not valid.
 * Implements the well-formed byte sequences table of Unicode ch. 3 (D92). */
static size_t utf8_seq_len(const unsigned char *s, size_t avail, uint32_t *cp) {
  unsigned char b = s[0];
  size_t len;
  uint32_t lo = 0x80, hi = 0xBF, c;
  if (b < 0x80) {
    *cp = b;
    return 1;
  }
  if (b >= 0xC2 && b <= 0xDF) {
    len = 2, c = b & 0x1F;
  } else if (b >= 0xE0 && b <= 0xEF) {
    len = 3, c = b & 0x0F;
    if (b == 0xE0) lo = 0xA0; /* overlong */
    if (b == 0xED) hi = 0x9F; /* surrogates */
  } else if (b >= 0xF0 && b <= 0xF4) {
    len = 4, c = b & 0x07;
    if (b == 0xF0) lo = 0x90; /* overlong */
    if (b == 0xF4) hi = 0x8F; /* past U+10FFFF */
  } else {
    return 0; /* continuation byte, C0/C1 overlong lead or F5..FF */
  }
  if (avail < len || s[1] < lo || s[1] > hi) return 0;
  c = c << 6 | (s[1] & 0x3F);
  for (size_t i = 2; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    c = c << 6 | (s[i] & 0x3F);
  }
  *cp = c;
  return len;
}

int pa_utf8_decode(const char *utf8, size_t len, uint32_t *out, size_t *n_out) {
  const unsigned char *s = (const unsigned char *)utf8;
  size_t n = 0;
  if (!utf8 && len) return pa_fail(PA_ERR_INVALID, "utf8: NULL text");
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    size_t step = utf8_seq_len(s + i, len - i, &cp);
    if (!step) return pa_fail(PA_ERR_INVALID, "invalid UTF-8 at byte %zu (0x%02X)", i, s[i]);
    if (out) out[n] = cp;
    n++;
    i += step;
  }
  if (n_out) *n_out = n;
  return PA_OK;
}

/* The token count of a text of len bytes: the bytes that fit, plus </s>. */
static int byt5_count(size_t len, int max_len) {
  return (int)(len < (size_t)max_len - 1 ? len : (size_t)max_len - 1) + 1;
}

int pa_byt5_tokenize(const char *utf8, size_t len, int max_len, int64_t *ids, int *n) {
  if (max_len < 1) return pa_fail(PA_ERR_INVALID, "byt5: max_len %d < 1", max_len);
  int rc = pa_utf8_decode(utf8, len, NULL, NULL);
  if (rc) return pa_fail_context(rc, "byt5: ");
  int count = byt5_count(len, max_len);
  for (int i = 0; i < count - 1; i++) ids[i] = (int64_t)(unsigned char)utf8[i] + 3;
  ids[count - 1] = PA_BYT5_EOS;
  *n = count;
  return PA_OK;
}

static size_t text_len(const char *const *texts, const size_t *lens, int b) {
  return lens ? lens[b] : (texts[b] ? strlen(texts[b]) : 0);
}

int pa_byt5_tokenize_batch(const char *const *texts, const size_t *lens, int batch, int max_len,
                           int pad_to, int64_t **ids, int *seq_len) {
  int longest = 1, n;
  *ids = NULL;
  if (batch < 1 || max_len < 1)
    return pa_fail(PA_ERR_INVALID, "byt5: batch %d, max_len %d", batch, max_len);
  /* First pass: the width of the batch, so the output is allocated once at its final size. */
  for (int b = 0; b < batch; b++) {
    n = byt5_count(text_len(texts, lens, b), max_len);
    if (n > longest) longest = n;
  }
  int width = pad_to > 0 ? pad_to : longest;
  if (width < longest)
    return pa_fail(PA_ERR_INVALID, "byt5: pad_to %d is shorter than a row of %d tokens", pad_to, longest);
  int64_t *out = calloc((size_t)batch * (size_t)width, sizeof *out); /* zeros are the padding */
  if (!out) return pa_fail(PA_ERR_NOMEM, "byt5: %d x %d ids", batch, width);
  for (int b = 0; b < batch; b++) {
    int rc = pa_byt5_tokenize(texts[b], text_len(texts, lens, b), max_len, out + (size_t)b * width, &n);
    if (rc) {
      free(out);
      return pa_fail_context(rc, "text %d: ", b);
    }
  }
  *ids = out;
  *seq_len = width;
  return PA_OK;
}
