/* CLIP tokenizer: all 40 cases of tests/golden/clip_tokenizer.jsonl (77 ids each, plus the
 * token count and the clean/pieces/bpe debug fields where present), HTML unescape and
 * lowercasing edge cases checked against Python 3.11, the heap BPE against a naive
 * reference, loading from a path, invalid UTF-8, threads, and timings. */
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "model/tokenizer.h"
#include "ops/error.h"
#include "tests/test.h"

#define MAX_CASES 64

typedef struct {
  char name[64];
  char *text;
  size_t len;
  int64_t ids[PA_CLIP_CONTEXT];
  int n_tokens;
  json_t *obj; /* the whole line, for the optional debug fields */
} golden_case;

static golden_case cases[MAX_CASES];
static int n_cases;
static const pa_clip_tokenizer *tok;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- golden file --------------------------------------------------------------------- */

static char *hex_decode(const char *hex, size_t *len) {
  size_t n = strlen(hex) / 2;
  char *s = malloc(n + 1);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    s[i] = (char)v;
  }
  s[n] = 0;
  *len = n;
  return s;
}

static int parse_case(json_t *o, golden_case *c) {
  json_t *ids = json_object_get(o, "ids");
  const char *name = json_string_value(json_object_get(o, "name"));
  const char *hex = json_string_value(json_object_get(o, "text_hex"));
  if (!name || !hex || json_array_size(ids) != PA_CLIP_CONTEXT) return -1;
  snprintf(c->name, sizeof c->name, "%s", name);
  c->text = hex_decode(hex, &c->len);
  for (int i = 0; i < PA_CLIP_CONTEXT; i++) c->ids[i] = json_integer_value(json_array_get(ids, i));
  c->n_tokens = (int)json_integer_value(json_object_get(o, "n_tokens"));
  c->obj = o;
  return 0;
}

static void load_goldens(void) {
  FILE *f = fopen(PAELLA_GOLDEN_DIR "/clip_tokenizer.jsonl", "r");
  char line[1 << 16];
  CHECK_MSG(f != NULL, "cannot open clip_tokenizer.jsonl");
  while (f && fgets(line, sizeof line, f) && n_cases < MAX_CASES) {
    json_error_t err;
    json_t *o = json_loads(line, 0, &err);
    CHECK_MSG(o && parse_case(o, &cases[n_cases]) == 0, "bad golden line %d: %s", n_cases + 1, o ? "fields" : err.text);
    if (o) n_cases++;
  }
  if (f) fclose(f);
  CHECK_MSG(n_cases == 40, "%d golden cases", n_cases);
}

/* ---- the 77 ids and the debug fields ------------------------------------------------- */

static void check_ids(const golden_case *c) {
  int64_t ids[PA_CLIP_CONTEXT];
  int rc = pa_clip_tokenize(tok, c->text, c->len, ids);
  CHECK_MSG(rc == PA_OK, "%s: %s", c->name, pa_errmsg());
  int first_diff = -1;
  for (int i = 0; i < PA_CLIP_CONTEXT && first_diff < 0; i++)
    if (ids[i] != c->ids[i]) first_diff = i;
  CHECK_MSG(first_diff < 0, "%s: ids differ at %d: %lld vs %lld", c->name, first_diff,
            first_diff < 0 ? 0LL : (long long)ids[first_diff], first_diff < 0 ? 0LL : (long long)c->ids[first_diff]);
}

/* pa_clip_encode: the full count, the same leading ids, and the "bpe" strings. */
static void check_encode(const golden_case *c) {
  int32_t ids[256];
  int n = -1;
  CHECK_OK(pa_clip_encode(tok, c->text, c->len, ids, 256, &n));
  CHECK_MSG(n == c->n_tokens, "%s: %d tokens, expected %d", c->name, n, c->n_tokens);
  int keep = n < PA_CLIP_CONTEXT - 2 ? n : PA_CLIP_CONTEXT - 2, same = 1;
  for (int i = 0; i < keep; i++) same &= ids[i] == c->ids[1 + i];
  CHECK_MSG(same, "%s: encode ids differ from tokenize", c->name);
  json_t *bpe = json_object_get(c->obj, "bpe");
  if (!bpe) return;
  CHECK_MSG((int)json_array_size(bpe) == n, "%s: %zu bpe symbols vs %d", c->name, json_array_size(bpe), n);
  for (int i = 0; i < n && i < (int)json_array_size(bpe); i++) {
    const char *want = json_string_value(json_array_get(bpe, i)), *got = pa_clip_token_text(tok, ids[i]);
    CHECK_MSG(got && !strcmp(got, want), "%s: bpe[%d] '%s' vs '%s'", c->name, i, got ? got : "(null)", want);
  }
}

static void check_clean(const golden_case *c) {
  json_t *want = json_object_get(c->obj, "clean");
  if (!want) return;
  char *got = NULL;
  size_t len = 0;
  CHECK_OK(pa_clip_clean_text(c->text, c->len, &got, &len));
  CHECK_MSG(got && len == json_string_length(want) && !memcmp(got, json_string_value(want), len),
            "%s: clean '%s' vs '%s'", c->name, got ? got : "", json_string_value(want));
  free(got);
}

typedef struct {
  json_t *want;
  size_t i;
  const char *name;
} piece_check;

static int on_piece(void *ctx, const char *piece, size_t len, int special_id) {
  piece_check *p = ctx;
  json_t *w = json_array_get(p->want, p->i++);
  int is_special = w && (!strcmp(json_string_value(w), "<start_of_text>") || !strcmp(json_string_value(w), "<end_of_text>"));
  CHECK_MSG(w && json_string_length(w) == len && !memcmp(json_string_value(w), piece, len),
            "%s: piece %zu '%.*s' vs '%s'", p->name, p->i - 1, (int)len, piece, w ? json_string_value(w) : "(end)");
  CHECK_MSG((special_id != 0) == is_special, "%s: piece %zu special %d", p->name, p->i - 1, special_id);
  return 0;
}

static void check_pieces(const golden_case *c) {
  json_t *want = json_object_get(c->obj, "pieces"), *clean = json_object_get(c->obj, "clean");
  if (!want || !clean) return;
  piece_check p = {want, 0, c->name};
  CHECK_OK(pa_clip_pretokenize(json_string_value(clean), json_string_length(clean), on_piece, &p));
  CHECK_MSG(p.i == json_array_size(want), "%s: %zu pieces vs %zu", c->name, p.i, json_array_size(want));
}

static void test_goldens(void) {
  for (int i = 0; i < n_cases; i++) {
    check_ids(&cases[i]);
    check_encode(&cases[i]);
    check_clean(&cases[i]);
    check_pieces(&cases[i]);
  }
}

/* ---- cleaning: expected values printed by Python 3.11 ------------------------------------
 * " ".join(html.unescape(html.unescape(t)).split()).lower() */

static const char *const clean_cases[][2] = {
    {"&amp;amp;amp;", "&amp;"},
    {"&#x110000;x", "\xEF\xBF\xBDx"},
    {"&#128;&#129;&#150;", "\xE2\x82\xAC\xC2\x81\xE2\x80\x93"},
    {"&#0;|&#13;|", "\xEF\xBF\xBD| |"},
    {"&#xD800;", "\xEF\xBF\xBD"},
    {"&#65534;&#xFDD0;a&#x1FFFF;", "a"},
    {"&#99999999999999999999;", "\xEF\xBF\xBD"},
    {"&notin; &notit; &not", "\xE2\x88\x89 \xC2\xACit; \xC2\xAC"},
    {"&AMP;&Amp;&amp", "&&amp;&"},
    {"&#x;&#;&#xZ", "&#x;&#;&#xz"},
    {"&lt&gt", "<>"},
    {"&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;", "&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;"},
    {"&amp\xC3\xA9", "&\xC3\xA9"},
    {"&nvlt;", "<\xE2\x83\x92"},
    {"&NotEqualTilde;x", "\xE2\x89\x82\xCC\xB8x"},
    {"x&#x41&#65", "xaa"},
    {"  \xC2\xA0 A\xE2\x80\x83" "B \x1C C\xC2\x85 ", "a b c"},
    {"\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3 \xCE\xA3 \xC4\xB0", "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82 \xCF\x83 i\xCC\x87"},
    {"&amp;#65;", "a"},
    {"&\x0D;", "& ;"},
    {"&eacute\xC3\xA9", "\xC3\xA9\xC3\xA9"},
    {"&lt;start_of_text&gt;", "<start_of_text>"},
    {"\xC7\x85 \xE1\xBF\xBC \xEF\xAC\x81", "\xC7\x86 \xE1\xBF\xB3 \xEF\xAC\x81"},
};

static void test_clean_cases(void) {
  for (size_t i = 0; i < sizeof clean_cases / sizeof clean_cases[0]; i++) {
    char *got = NULL;
    size_t len = 0;
    CHECK_OK(pa_clip_clean_text(clean_cases[i][0], strlen(clean_cases[i][0]), &got, &len));
    CHECK_MSG(got && !strcmp(got, clean_cases[i][1]), "clean case %zu: '%s' vs '%s'", i, got ? got : "", clean_cases[i][1]);
    free(got);
  }
  /* A NUL inside an entity name: html.unescape("&lt\0x") is "<\0x" (prefix "lt", rest kept). */
  char *got = NULL;
  size_t len = 0;
  CHECK_OK(pa_clip_clean_text("&lt\0x", 5, &got, &len));
  CHECK_MSG(got && len == 3 && !memcmp(got, "<\0x", 3), "NUL in entity: %zu bytes", len);
  free(got);
}

/* ---- pre-tokenizer corner cases (regex IGNORECASE oddities) ---------------------------- */

typedef struct {
  char buf[256];
  size_t len;
} piece_join;

/* Joins pieces with '|' and marks specials with '*'. */
static int join_piece(void *ctx, const char *piece, size_t len, int special_id) {
  piece_join *j = ctx;
  j->len += (size_t)snprintf(j->buf + j->len, sizeof j->buf - j->len, "%s%.*s%s", j->len ? "|" : "",
                             (int)len, piece, special_id ? "*" : "");
  return 0;
}

static void check_split(const char *clean, const char *want) {
  piece_join j = {{0}, 0};
  CHECK_OK(pa_clip_pretokenize(clean, strlen(clean), join_piece, &j));
  CHECK_MSG(!strcmp(j.buf, want), "split '%s': '%s' vs '%s'", clean, j.buf, want);
}

static void test_pretokenizer(void) {
  check_split("'\xC5\xBFun", "'\xC5\xBF|un");                 /* U+017F matches the s of 's */
  check_split("<\xC5\xBFtart_of_text>x", "<\xC5\xBFtart_of_text>*|x"); /* ... and of the literal */
  check_split("a\xCD\x85" "a \xCD\x85", "a|a");                /* U+0345 matches nothing */
  check_split("photo!<end_of_text>", "photo|!<|end|_|of|_|text|>");
  check_split("x2024 \xE2\x85\xAB", "x|2|0|2|4|\xE2\x85\xAB"); /* one number at a time */
  check_split("<end_of_text<end_of_text>", "<|end|_|of|_|text|<end_of_text>*");
  check_split("'re've'll'd'm't'x''", "'re|'ve|'ll|'d|'m|'t|'|x|''");
  check_split("", "");
}

/* ---- BPE: heap version vs the textbook loop ---------------------------------------------- */

/* Upstream's loop on ids: merge every occurrence of the lowest-ranked pair, left to right. */
static int naive_bpe(const unsigned char *bytes, int n, const int *byte_id, int *out) {
  int m = n;
  for (int i = 0; i < n; i++) out[i] = byte_id[bytes[i]];
  out[n - 1] += 256;
  for (;;) {
    int best = -1;
    for (int i = 0; i + 1 < m; i++) {
      int r = pa_clip_merge_rank(tok, out[i], out[i + 1]);
      if (r >= 0 && (best < 0 || r < best)) best = r;
    }
    if (best < 0) return m;
    int o = 0;
    for (int i = 0; i < m; i++) {
      if (i + 1 < m && pa_clip_merge_rank(tok, out[i], out[i + 1]) == best) out[o++] = 512 + best, i++;
      else out[o++] = out[i];
    }
    m = o;
  }
}

/* The base ids of the bytes, found through the vocabulary strings (independent of B2U). */
static void byte_ids(int byte_id[256]) {
  for (int id = 0; id < 256; id++) {
    const unsigned char *s = (const unsigned char *)pa_clip_token_text(tok, id);
    unsigned cp = s[0] < 0x80 ? s[0] : (unsigned)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    int b = cp >= 0x100 ? -1 : (int)cp;
    if (b < 0) { /* U+0100 + k is the k-th byte outside the printable set */
      int k = (int)cp - 0x100;
      for (b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (!printable && k-- == 0) break;
      }
    }
    byte_id[b] = id;
  }
}

/* Random words over small alphabets (letters only, so each word is one piece). */
static void test_bpe_random(void) {
  static const char *const alphabets[][4] = {
      {"a"}, {"a", "b"}, {"e", "h", "t"}, {"o", "l", "n", "s"}, {"a", "\xC3\xA9", "n"}};
  int byte_id[256], want[512];
  int32_t got[512];
  unsigned seed = 12345;
  byte_ids(byte_id);
  for (int trial = 0; trial < 3000; trial++) {
    const char *const *alpha = alphabets[trial % 5];
    int n_alpha = 0, len = 0, n = 0;
    while (n_alpha < 4 && alpha[n_alpha]) n_alpha++;
    unsigned char word[128];
    int units = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 48;
    for (int u = 0; u < units; u++) {
      const char *unit = alpha[((seed = seed * 1103515245u + 12345u) >> 16) % (unsigned)n_alpha];
      memcpy(word + len, unit, strlen(unit));
      len += (int)strlen(unit);
    }
    int m = naive_bpe(word, len, byte_id, want);
    CHECK_OK(pa_clip_encode(tok, (const char *)word, (size_t)len, got, 512, &n));
    int same = n == m;
    for (int i = 0; same && i < m; i++) same = got[i] == want[i];
    CHECK_MSG(same, "BPE of '%.*s': %d vs %d ids", len, word, n, m);
  }
}

/* ---- loading from a path --------------------------------------------------------------- */

#define VOCAB_GZ PAELLA_SOURCE_DIR "/model/data/bpe_simple_vocab_16e6.txt.gz"

/* Same ids for every golden case as the embedded tokenizer. */
static void check_same_as_embedded(const pa_clip_tokenizer *t, const char *what) {
  int same = 1;
  for (int i = 0; i < n_cases; i++) {
    int64_t ids[PA_CLIP_CONTEXT];
    CHECK_OK(pa_clip_tokenize(t, cases[i].text, cases[i].len, ids));
    for (int k = 0; k < PA_CLIP_CONTEXT; k++) same &= ids[k] == cases[i].ids[k];
  }
  CHECK_MSG(same, "%s: ids differ from the goldens", what);
  for (int id = 0; id < PA_CLIP_VOCAB; id++) same &= !strcmp(pa_clip_token_text(t, id), pa_clip_token_text(tok, id));
  CHECK_MSG(same, "%s: vocabulary differs", what);
}

/* Writes the first `limit` bytes of the merges file, decompressed or not. */
static int write_copy(const char *path, int decompress, long limit) {
  gzFile in = decompress ? gzopen(VOCAB_GZ, "rb") : NULL;
  FILE *raw = decompress ? NULL : fopen(VOCAB_GZ, "rb"), *out = fopen(path, "wb");
  char buf[65536];
  long total = 0;
  int n;
  if ((!in && !raw) || !out) return -1;
  while (total < limit && (n = in ? gzread(in, buf, sizeof buf) : (int)fread(buf, 1, sizeof buf, raw)) > 0) {
    if (n > limit - total) n = (int)(limit - total);
    fwrite(buf, 1, (size_t)n, out);
    total += n;
  }
  if (in) gzclose(in);
  if (raw) fclose(raw);
  return fclose(out);
}

static void test_load(void) {
  pa_clip_tokenizer *t = NULL;
  const char *plain = PAELLA_BINARY_DIR "/tok_test_merges.txt", *cut = PAELLA_BINARY_DIR "/tok_test_cut.gz";
  CHECK_OK(pa_clip_tokenizer_load(VOCAB_GZ, &t));
  if (t) check_same_as_embedded(t, "gzip file");
  pa_clip_tokenizer_free(t);
  t = NULL;
  CHECK(write_copy(plain, 1, 1L << 30) == 0);
  CHECK_OK(pa_clip_tokenizer_load(plain, &t));
  if (t) check_same_as_embedded(t, "plain merges");
  pa_clip_tokenizer_free(t);
  t = NULL;
  CHECK(pa_clip_tokenizer_load("/nonexistent/merges.txt", &t) == PA_ERR_IO && !t);
  CHECK(write_copy(cut, 0, 500000) == 0);
  CHECK_MSG(pa_clip_tokenizer_load(cut, &t) == PA_ERR_FORMAT && !t, "truncated gzip: %s", pa_errmsg());
  CHECK(write_copy(plain, 1, 100000) == 0); /* too few merges */
  CHECK_MSG(pa_clip_tokenizer_load(plain, &t) == PA_ERR_FORMAT && !t, "short merges: %s", pa_errmsg());
  remove(plain);
  remove(cut);
}

/* ---- invalid input ------------------------------------------------------------------- */

static void test_invalid_utf8(void) {
  static const char *const bad[] = {"\x80", "a\xC3", "\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80",
                                    "\xF4\x90\x80\x80", "\xF8\x88\x80\x80\x80", "ok\xFF", "\xE2\x82"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int64_t ids[PA_CLIP_CONTEXT];
    int32_t enc[8];
    int n;
    char *clean = NULL;
    size_t len = strlen(bad[i]);
    CHECK_MSG(pa_clip_tokenize(tok, bad[i], len, ids) == PA_ERR_INVALID, "bad UTF-8 %zu accepted", i);
    CHECK(pa_clip_encode(tok, bad[i], len, enc, 8, &n) == PA_ERR_INVALID);
    CHECK(pa_clip_clean_text(bad[i], len, &clean, &len) == PA_ERR_INVALID && !clean);
  }
  int64_t ids[PA_CLIP_CONTEXT];
  CHECK(pa_clip_tokenize(tok, "a\0b", 3, ids) == PA_OK); /* NUL is a valid character */
  CHECK(strstr(pa_errmsg(), "UTF-8") != NULL);           /* the last failure named the problem */
}

/* A long text, and a single 1 MB piece, which a quadratic BPE could not finish. */
static void test_long_input(void) {
  size_t n = 1 << 20;
  char *s = malloc(n);
  int32_t ids[8];
  int count = 0;
  for (size_t i = 0; i < n; i++) s[i] = "abcdefghijklmnopqrstuvwxyz"[(i * 7 + i / 3) % 26];
  double t0 = now_s();
  CHECK_OK(pa_clip_encode(tok, s, n, ids, 8, &count));
  double t1 = now_s();
  CHECK_MSG(count > 100000 && t1 - t0 < 5.0, "1 MB piece: %d ids in %.3f s", count, t1 - t0);
  printf("1 MB single-piece text: %d BPE ids in %.1f ms\n", count, 1e3 * (t1 - t0));
  for (size_t i = 0; i < n; i += 6) s[i] = ' ';
  int64_t tok_ids[PA_CLIP_CONTEXT];
  t0 = now_s();
  CHECK_OK(pa_clip_tokenize(tok, s, n, tok_ids));
  printf("1 MB text of short words: tokenize in %.1f ms\n", 1e3 * (now_s() - t0));
  CHECK(tok_ids[0] == PA_CLIP_SOT && tok_ids[PA_CLIP_CONTEXT - 1] == PA_CLIP_EOT);
  free(s);
}

/* ---- threads: the shared tokenizer from many threads at once --------------------------- */

static void *thread_run(void *arg) {
  const pa_clip_tokenizer *t = NULL;
  long bad = 0;
  (void)arg;
  if (pa_clip_tokenizer_get(&t)) return (void *)1L;
  for (int rep = 0; rep < 20; rep++)
    for (int i = 0; i < n_cases; i++) {
      int64_t ids[PA_CLIP_CONTEXT];
      if (pa_clip_tokenize(t, cases[i].text, cases[i].len, ids)) bad++;
      for (int k = 0; k < PA_CLIP_CONTEXT; k++) bad += ids[k] != cases[i].ids[k];
    }
  return (void *)bad;
}

static void test_threads(void) {
  pthread_t th[8];
  for (int i = 0; i < 8; i++) CHECK(pthread_create(&th[i], NULL, thread_run, NULL) == 0);
  for (int i = 0; i < 8; i++) {
    void *bad = NULL;
    pthread_join(th[i], &bad);
    CHECK_MSG(bad == NULL, "thread %d: %ld mismatches", i, (long)bad);
  }
}

static void report_speed(void) {
  int64_t ids[PA_CLIP_CONTEXT];
  int reps = 500;
  double t0 = now_s();
  for (int r = 0; r < reps; r++)
    for (int i = 0; i < n_cases; i++) pa_clip_tokenize(tok, cases[i].text, cases[i].len, ids);
  double dt = now_s() - t0;
  printf("CLIP tokenize: %.2f us per prompt (average over the %d golden cases x %d)\n",
         1e6 * dt / (reps * n_cases), n_cases, reps);
}

int main(void) {
  load_goldens();
  double t0 = now_s();
  CHECK_OK(pa_clip_tokenizer_get(&tok));
  printf("CLIP tokenizer init (embedded gzip -> tables): %.1f ms\n", 1e3 * (now_s() - t0));
  if (!tok) TEST_END();
  test_goldens();
  test_clean_cases();
  test_pretokenizer();
  test_bpe_random();
  test_invalid_utf8();
  test_long_input();
  test_threads();
  test_load();
  report_speed();
  for (int i = 0; i < n_cases; i++) {
    free(cases[i].text);
    json_decref(cases[i].obj);
  }
  TEST_END();
}
