/* CLIP byte-level BPE tokenizer, as OpenCLIP runs it for ViT-H-14 (open_clip/tokenizer.py,
 * `tokenize(texts, context_length=77)`), written from the specification in
 * tests/golden/README.md ("The algorithm the C tokenizer must implement"):
 *
 *   clean     html.unescape twice, strip, collapse whitespace, Python str.lower()
 *   split     the pre-tokenizer regex, as a first-match scan over Unicode categories
 *   bytes     each piece's UTF-8 bytes as base symbols, "</w>" on the last one
 *   BPE       merges by rank from bpe_simple_vocab_16e6.txt.gz, run on ids
 *   assemble  [SOT] + ids[:75] + [EOT], padded with 0 to 77
 *
 * Known difference from upstream: ftfy.fix_text is NOT applied (upstream runs it first).
 * ftfy changes the tokens of these inputs, which this port therefore tokenizes differently:
 * curly quotes (U+2018-U+201B, U+02BC -> ', U+201C-U+201F -> "), fullwidth ASCII and
 * halfwidth katakana, ligatures (U+FB00-U+FB06, U+0132/3, U+0149, U+01C4-U+01CC,
 * U+01F1-U+01F3), NFC normalization of decomposed text, mojibake (e.g. "cafÃ©", C1 controls
 * read as Windows-1252), deletion of control characters (U+0000-U+0008, U+000B,
 * U+000E-U+001F, U+007F, U+206A-U+206F, U+FEFF, U+FFF9-U+FFFC, ANSI escapes), HTML entities
 * nested three or more levels deep, and all-caps entity names such as "&EACUTE;" (ftfy
 * decodes them when the text has no '<'). Everything else, including every golden case,
 * gives upstream's ids. docs/tokenizers.md has the details.
 *
 * Unicode data comes from ICU (categories via u_charType, lowercasing via u_strToLower in
 * the root locale, which matches Python's str.lower including U+0130 and final sigma).
 * The merges file is linked into the library (model/CMakeLists.txt) and indexed once. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <zlib.h>

#include "model/tokenizer.h"
#include "ops/error.h"

typedef struct {
  const char *name;
  uint32_t cp[2];
} html_entity;

#include "model/html_entities.inc"

/* The gzip merges file, placed in .rodata by the .incbin rule of model/CMakeLists.txt. */
extern const unsigned char pa_clip_vocab_gz[];
extern const unsigned char pa_clip_vocab_gz_end[];

#define CLIP_MAX_TOKENS (PA_CLIP_CONTEXT - 2) /* BPE ids between SOT and EOT */
#define PAIR_SLOTS (1u << 17)                 /* open addressing, load 0.37 */
#define PAIR_EMPTY UINT64_MAX
#define MAX_TEXT_CODEPOINTS (INT32_MAX / 4)   /* ICU takes int32_t lengths */

struct pa_clip_tokenizer {
  uint8_t byte_id[256];                                 /* byte -> id of its symbol */
  int32_t merge_left[PA_CLIP_MERGES];                   /* rank -> left id */
  int32_t merge_right[PA_CLIP_MERGES];                  /* rank -> right id */
  uint64_t pair_key[PAIR_SLOTS];                        /* left << 32 | right */
  int32_t pair_rank[PAIR_SLOTS];
  uint32_t text_off[PA_CLIP_VOCAB];                     /* id -> offset in text */
  char *text;                                           /* NUL-terminated vocab strings */
};

/* ========================================================================================
 * UTF-8 output
 * ======================================================================================== */

static size_t utf8_put(uint32_t c, unsigned char *out) {
  if (c < 0x80) {
    out[0] = (unsigned char)c;
    return 1;
  }
  if (c < 0x800) {
    out[0] = (unsigned char)(0xC0 | c >> 6);
    out[1] = (unsigned char)(0x80 | (c & 0x3F));
    return 2;
  }
  if (c < 0x10000) {
    out[0] = (unsigned char)(0xE0 | c >> 12);
    out[1] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
    out[2] = (unsigned char)(0x80 | (c & 0x3F));
    return 3;
  }
  out[0] = (unsigned char)(0xF0 | c >> 18);
  out[1] = (unsigned char)(0x80 | (c >> 12 & 0x3F));
  out[2] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
  out[3] = (unsigned char)(0x80 | (c & 0x3F));
  return 4;
}

/* Code points -> malloc'd NUL-terminated UTF-8. */
static int utf32_to_utf8(const uint32_t *cp, size_t n, char **out, size_t *out_len) {
  unsigned char *s = malloc(4 * n + 1);
  size_t len = 0;
  if (!s) return pa_fail(PA_ERR_NOMEM, "clip: %zu code points", n);
  for (size_t i = 0; i < n; i++) len += utf8_put(cp[i], s + len);
  s[len] = 0;
  *out = (char *)s;
  if (out_len) *out_len = len;
  return PA_OK;
}

/* UTF-8 -> malloc'd code points (with one spare slot so an empty text still allocates). */
static int utf8_to_utf32(const char *utf8, size_t len, uint32_t **out, size_t *n) {
  uint32_t *cp = malloc((len + 1) * sizeof *cp);
  if (!cp) return pa_fail(PA_ERR_NOMEM, "clip: text of %zu bytes", len);
  int rc = pa_utf8_decode(utf8, len, cp, n);
  if (rc == PA_OK && *n > MAX_TEXT_CODEPOINTS)
    rc = pa_fail(PA_ERR_INVALID, "clip: text of %zu code points is too long", *n);
  if (rc) {
    free(cp);
    return pa_fail_context(rc, "clip: ");
  }
  *out = cp;
  return PA_OK;
}

/* ========================================================================================
 * Step 2: Python's html.unescape, one pass. At each '&' it tries, in order, a decimal
 * reference, a hexadecimal one and a name of 1-32 characters; each may end with ';'.
 * Every replacement is shorter than the reference it replaces (asserted by the generator
 * of html_entities.inc), so the output never needs more room than the input.
 * ======================================================================================== */

/* What html.unescape makes of the numeric reference with value v (v saturated past
 * U+10FFFF): false when the reference is dropped, else the code point in *out. */
static bool html_numeric_value(uint32_t v, uint32_t *out) {
  if (v == 0 || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF) {
    *out = 0xFFFD;
    return true;
  }
  if (v >= 0x80 && v <= 0x9F) { /* checked before the dropped ranges below, as Python does */
    *out = html_c1_charrefs[v - 0x80];
    return true;
  }
  /* html._invalid_codepoints (the generator checks this list against Python); 0x0D is
   * among Python's special cases and maps to itself. */
  if ((v >= 0x01 && v <= 0x08) || v == 0x0B || (v >= 0x0E && v <= 0x1F) ||
      (v >= 0x7F && v <= 0x9F) || (v >= 0xFDD0 && v <= 0xFDEF) || (v & 0xFFFE) == 0xFFFE)
    return false;
  *out = v;
  return true;
}

static int hex_digit(uint32_t c, bool hex) {
  if (c >= '0' && c <= '9') return (int)(c - '0');
  if (hex && c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
  if (hex && c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
  return -1;
}

/* "&#123;" or "&#x7B;" at s[0] (s[1] == '#'): the length matched, 0 if none. */
static size_t html_numeric(const uint32_t *s, size_t n, uint32_t *rep, size_t *n_rep) {
  bool hex = n > 2 && (s[2] == 'x' || s[2] == 'X');
  size_t i = hex ? 3 : 2, start = i;
  uint32_t v = 0;
  int d;
  for (; i < n && (d = hex_digit(s[i], hex)) >= 0; i++) {
    v = v * (hex ? 16 : 10) + (uint32_t)d;
    if (v > 0x10FFFF) v = 0x110000; /* any number of digits: saturate, it is invalid anyway */
  }
  if (i == start) return 0;
  if (i < n && s[i] == ';') i++;
  *n_rep = html_numeric_value(v, rep) ? 1 : 0;
  return i;
}

static int entity_cmp(const void *key, const void *elem) {
  return strcmp(key, ((const html_entity *)elem)->name);
}

static const html_entity *entity_find(const char *name) {
  return bsearch(name, html_entities, sizeof html_entities / sizeof html_entities[0],
                 sizeof html_entities[0], entity_cmp);
}

static bool html_name_char(uint32_t c) {
  return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' &&
         c != '#' && c != ';';
}

/* "&name;" at s[0]: the whole name (with its ';') if it is an entity, else its longest
 * prefix of 2+ characters that is one (a legacy name without ';'), followed by the rest of
 * the name verbatim. Returns the length matched, 0 to leave the text as it is. */
static size_t html_named(const uint32_t *s, size_t n, uint32_t *rep, size_t *n_rep) {
  char name[40];
  size_t len = 0;
  while (1 + len < n && len < 32 && html_name_char(s[1 + len])) len++;
  if (len == 0) return 0;
  if (1 + len < n && s[1 + len] == ';') len++;
  /* Entity names are printable ASCII; 0x01 stands for anything else (NUL included, which
   * would end the C string early) and matches nothing. */
  for (size_t i = 0; i < len; i++) name[i] = s[1 + i] > 0x20 && s[1 + i] < 0x7F ? (char)s[1 + i] : 1;
  /* The whole name, then its prefixes from len - 1 down to 2 characters. */
  for (size_t x = len; x >= 2 || x == len; x--) {
    name[x] = 0;
    const html_entity *e = entity_find(name);
    if (!e) continue;
    size_t k = 0;
    rep[k++] = e->cp[0];
    if (e->cp[1]) rep[k++] = e->cp[1];
    for (size_t i = x; i < len; i++) rep[k++] = s[1 + i];
    *n_rep = k;
    return 1 + len;
  }
  return 0;
}

/* One html.unescape pass over in[0..n) into out (room for n code points). */
static size_t html_unescape(const uint32_t *in, size_t n, uint32_t *out) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    uint32_t rep[40];
    size_t n_rep = 0, used = 0;
    if (in[i] == '&') {
      if (i + 1 < n && in[i + 1] == '#')
        used = html_numeric(in + i, n - i, rep, &n_rep);
      else
        used = html_named(in + i, n - i, rep, &n_rep);
    }
    if (!used) {
      out[o++] = in[i++];
      continue;
    }
    memcpy(out + o, rep, n_rep * sizeof *rep);
    o += n_rep;
    i += used;
  }
  return o;
}

/* ========================================================================================
 * Steps 3-5: whitespace and case
 * ======================================================================================== */

/* Python's str.isspace: these 29 code points exactly (not U+200B, U+180E, U+2060, U+FEFF). */
static bool py_isspace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

/* " ".join(text.split()), in place: strips the ends and turns every run into one space. */
static size_t collapse_whitespace(uint32_t *s, size_t n) {
  size_t o = 0;
  bool pending_space = false;
  for (size_t i = 0; i < n; i++) {
    if (py_isspace(s[i])) {
      pending_space = o > 0;
      continue;
    }
    if (pending_space) s[o++] = ' ';
    pending_space = false;
    s[o++] = s[i];
  }
  return o;
}

/* Python str.lower() through ICU's root-locale full lowercasing (context-sensitive final
 * sigma, U+0130 -> "i\u0307"). Returns a new malloc'd array. */
static int lowercase(const uint32_t *in, size_t n, uint32_t **out, size_t *n_out) {
  UErrorCode err = U_ZERO_ERROR;
  int32_t n16 = 0, n_low = 0, n32 = 0;
  int rc = PA_OK;
  UChar *s16 = malloc((2 * n + 1) * sizeof *s16), *low = NULL;
  uint32_t *res = NULL;
  if (!s16) goto nomem;
  u_strFromUTF32(s16, (int32_t)(2 * n + 1), &n16, (const UChar32 *)in, (int32_t)n, &err);
  if (U_FAILURE(err)) goto icu_fail;
  n_low = u_strToLower(NULL, 0, s16, n16, "", &err); /* preflight: the length it needs */
  if (err == U_BUFFER_OVERFLOW_ERROR) err = U_ZERO_ERROR;
  if (U_FAILURE(err)) goto icu_fail;
  low = malloc(((size_t)n_low + 1) * sizeof *low);
  res = malloc(((size_t)n_low + 1) * sizeof *res); /* never more code points than units */
  if (!low || !res) goto nomem;
  u_strToLower(low, n_low + 1, s16, n16, "", &err);
  if (U_FAILURE(err)) goto icu_fail;
  u_strToUTF32((UChar32 *)res, n_low + 1, &n32, low, n_low, &err);
  if (U_FAILURE(err)) goto icu_fail;
  *out = res;
  *n_out = (size_t)n32;
  res = NULL;
  goto done;
icu_fail:
  rc = pa_fail(PA_ERR_INVALID, "clip: lowercasing failed: %s", u_errorName(err));
  goto done;
nomem:
  rc = pa_fail(PA_ERR_NOMEM, "clip: lowercasing %zu code points", n);
done:
  free(s16);
  free(low);
  free(res);
  return rc;
}

/* Steps 2-5 on code points; *out is malloc'd. Consumes (frees) text. */
static int clean_cp(uint32_t *text, size_t n, uint32_t **out, size_t *n_out) {
  uint32_t *tmp = malloc((n + 1) * sizeof *tmp);
  if (!tmp) {
    free(text);
    return pa_fail(PA_ERR_NOMEM, "clip: text of %zu code points", n);
  }
  /* Twice, as upstream: "&amp;lt;" becomes "<", but "&amp;amp;amp;" stays "&amp;". */
  n = html_unescape(text, n, tmp);
  n = html_unescape(tmp, n, text);
  free(tmp);
  n = collapse_whitespace(text, n);
  int rc = lowercase(text, n, out, n_out);
  free(text);
  return rc;
}

static int clean_utf8(const char *utf8, size_t len, uint32_t **out, size_t *n_out) {
  uint32_t *text = NULL;
  size_t n = 0;
  int rc = utf8_to_utf32(utf8, len, &text, &n);
  return rc ? rc : clean_cp(text, n, out, n_out);
}

int pa_clip_clean_text(const char *utf8, size_t len, char **out, size_t *out_len) {
  uint32_t *clean = NULL;
  size_t n = 0;
  int rc = clean_utf8(utf8, len, &clean, &n);
  if (rc) return rc;
  rc = utf32_to_utf8(clean, n, out, out_len);
  free(clean);
  return rc;
}

/* ========================================================================================
 * Step 6: the pre-tokenizer. Upstream's pattern, with re.IGNORECASE,
 *   <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * is scanned from each position with the first matching alternative winning. On lowercase
 * text the flag only lets U+017F (long s) stand for 's' and makes U+0345 match nothing.
 * ======================================================================================== */

#define LONG_S 0x017F
#define YPOGEGRAMMENI 0x0345

static bool is_letter(uint32_t c) {
  int8_t t = u_charType((UChar32)c);
  return t >= U_UPPERCASE_LETTER && t <= U_OTHER_LETTER;
}

static bool is_number(uint32_t c) {
  int8_t t = u_charType((UChar32)c);
  return t >= U_DECIMAL_DIGIT_NUMBER && t <= U_OTHER_NUMBER;
}

/* Whether the ASCII literal lit starts at s[i], with case folding of the lowercase text. */
static bool match_literal(const uint32_t *s, size_t n, size_t i, const char *lit) {
  for (; *lit; lit++, i++) {
    if (i >= n) return false;
    if (s[i] != (unsigned char)*lit && !(*lit == 's' && s[i] == LONG_S)) return false;
  }
  return true;
}

static size_t match_contraction(const uint32_t *s, size_t n, size_t i) {
  static const char *const suffixes[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (size_t k = 0; k < sizeof suffixes / sizeof suffixes[0]; k++)
    if (match_literal(s, n, i, suffixes[k])) return strlen(suffixes[k]);
  return 0;
}

/* The length of the match at s[i] (0: none, skip this code point); *special gets the id of
 * a special string or 0. */
static size_t pretok_match(const uint32_t *s, size_t n, size_t i, int *special) {
  size_t j = i;
  *special = 0;
  if (s[i] == '<' && match_literal(s, n, i, "<start_of_text>")) {
    *special = PA_CLIP_SOT;
    return 15;
  }
  if (s[i] == '<' && match_literal(s, n, i, "<end_of_text>")) {
    *special = PA_CLIP_EOT;
    return 13;
  }
  if (s[i] == '\'' && (j = match_contraction(s, n, i)) > 0) return j;
  if (is_letter(s[i])) {
    for (j = i; j < n && is_letter(s[j]); j++) {}
    return j - i;
  }
  if (is_number(s[i])) return 1;
  for (j = i; j < n && s[j] != ' ' && s[j] != YPOGEGRAMMENI && !is_letter(s[j]) && !is_number(s[j]); j++) {}
  return j - i;
}

/* Advances *pos to the next piece; false at the end of the text. */
static bool pretok_next(const uint32_t *s, size_t n, size_t *pos, size_t *start, size_t *len,
                        int *special) {
  for (size_t i = *pos; i < n; i++) {
    size_t m = pretok_match(s, n, i, special);
    if (!m) continue;
    *start = i;
    *len = m;
    *pos = i + m;
    return true;
  }
  *pos = n;
  return false;
}

int pa_clip_pretokenize(const char *clean_utf8, size_t len, pa_clip_piece_fn fn, void *ctx) {
  uint32_t *s = NULL;
  size_t n, pos = 0, start, plen;
  int special, rc = utf8_to_utf32(clean_utf8, len, &s, &n);
  if (rc) return rc;
  unsigned char *piece = malloc(4 * n + 1);
  if (!piece) rc = pa_fail(PA_ERR_NOMEM, "clip: pre-tokenizing %zu code points", n);
  while (!rc && pretok_next(s, n, &pos, &start, &plen, &special)) {
    size_t bytes = 0;
    for (size_t i = start; i < start + plen; i++) bytes += utf8_put(s[i], piece + bytes);
    rc = fn(ctx, (const char *)piece, bytes, special);
  }
  free(piece);
  free(s);
  return rc;
}

/* ========================================================================================
 * Steps 7-8: BPE on ids. A piece starts as one symbol per byte; repeatedly the adjacent
 * pair with the lowest merge rank is merged, every occurrence left to right. A min-heap of
 * (rank, position) candidates makes this O(n log n), so that a pathological piece of a
 * megabyte costs milliseconds, not hours. It is the same algorithm: a merge of rank r only
 * creates pairs of rank > r, so the occurrences of r pop in position order, and one whose
 * left symbol was taken by the previous occurrence ("a a a" with "a a") is stale and skipped.
 * ======================================================================================== */

typedef struct {
  size_t cap;     /* symbols the arrays hold */
  int32_t *id;    /* (cap) symbol ids; -1 once merged into the left neighbour */
  int32_t *next;  /* (cap) linked list of live symbols, -1 at the ends */
  int32_t *prev;  /* (cap) */
  uint64_t *heap; /* (3 * cap) rank << 32 | position; each merge pushes at most two */
  size_t n_heap;
  unsigned char *bytes; /* (cap) the piece as UTF-8 */
} bpe_work;

static void bpe_work_free(bpe_work *w) {
  free(w->id);
  free(w->next);
  free(w->prev);
  free(w->heap);
  free(w->bytes);
  memset(w, 0, sizeof *w);
}

static int bpe_work_reserve(bpe_work *w, size_t n) {
  if (n <= w->cap) return PA_OK;
  bpe_work_free(w);
  w->id = malloc(n * sizeof *w->id);
  w->next = malloc(n * sizeof *w->next);
  w->prev = malloc(n * sizeof *w->prev);
  w->heap = malloc(3 * n * sizeof *w->heap);
  w->bytes = malloc(n);
  if (!w->id || !w->next || !w->prev || !w->heap || !w->bytes) {
    bpe_work_free(w);
    return pa_fail(PA_ERR_NOMEM, "clip: BPE of a %zu-byte piece", n);
  }
  w->cap = n;
  return PA_OK;
}

static void heap_push(bpe_work *w, uint64_t key) {
  size_t i = w->n_heap++;
  while (i > 0 && w->heap[(i - 1) / 2] > key) {
    w->heap[i] = w->heap[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  w->heap[i] = key;
}

static uint64_t heap_pop(bpe_work *w) {
  uint64_t top = w->heap[0], last = w->heap[--w->n_heap];
  size_t i = 0, n = w->n_heap;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && w->heap[c + 1] < w->heap[c]) c++;
    if (w->heap[c] >= last) break;
    w->heap[i] = w->heap[c];
    i = c;
  }
  if (n) w->heap[i] = last;
  return top;
}

static uint64_t pair_hash_key(int32_t left, int32_t right) {
  return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

static uint32_t pair_slot(uint64_t key) {
  return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 47) & (PAIR_SLOTS - 1);
}

int pa_clip_merge_rank(const pa_clip_tokenizer *t, int left, int right) {
  uint64_t key = pair_hash_key(left, right);
  for (uint32_t s = pair_slot(key);; s = (s + 1) & (PAIR_SLOTS - 1)) {
    if (t->pair_key[s] == key) return t->pair_rank[s];
    if (t->pair_key[s] == PAIR_EMPTY) return -1;
  }
}

/* Queues the pair starting at live symbol p, if it is a merge. */
static void bpe_push_pair(const pa_clip_tokenizer *t, bpe_work *w, int32_t p) {
  int32_t q = w->next[p];
  if (q < 0) return;
  int rank = pa_clip_merge_rank(t, w->id[p], w->id[q]);
  if (rank >= 0) heap_push(w, (uint64_t)rank << 32 | (uint32_t)p);
}

/* BPE of w->bytes[0..n); the resulting ids stay in the linked list from position 0. */
static void bpe_run(const pa_clip_tokenizer *t, bpe_work *w, size_t n) {
  for (size_t i = 0; i < n; i++) {
    w->id[i] = t->byte_id[w->bytes[i]];
    w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    w->prev[i] = (int32_t)i - 1;
  }
  w->id[n - 1] += 256; /* the word-final symbol carries "</w>" */
  w->n_heap = 0;
  for (size_t i = 0; i + 1 < n; i++) bpe_push_pair(t, w, (int32_t)i);
  while (w->n_heap) {
    uint64_t key = heap_pop(w);
    int32_t rank = (int32_t)(key >> 32), p = (int32_t)(uint32_t)key, q = w->next[p];
    /* Ids only grow as symbols merge, so an entry whose ids changed can never match again. */
    if (w->id[p] != t->merge_left[rank] || q < 0 || w->id[q] != t->merge_right[rank]) continue;
    w->id[p] = 512 + rank;
    w->id[q] = -1;
    w->next[p] = w->next[q];
    if (w->next[q] >= 0) w->prev[w->next[q]] = p;
    if (w->prev[p] >= 0) bpe_push_pair(t, w, w->prev[p]);
    bpe_push_pair(t, w, p);
  }
}

/* ========================================================================================
 * Steps 7-10: text -> ids
 * ======================================================================================== */

typedef struct {
  int32_t *ids; /* the first cap ids are kept */
  int cap;
  int n; /* all ids produced */
} id_sink;

static void sink_push(id_sink *k, int32_t id) {
  if (k->n < k->cap) k->ids[k->n] = id;
  k->n++;
}

/* BPE ids of cleaned text; stops once stop_after ids exist (0: never). */
static int encode_clean(const pa_clip_tokenizer *t, const uint32_t *s, size_t n, int stop_after,
                        id_sink *sink) {
  bpe_work w = {0};
  size_t pos = 0, start, len;
  int special, rc = PA_OK;
  while (!(stop_after && sink->n >= stop_after) && pretok_next(s, n, &pos, &start, &len, &special)) {
    if (special) {
      sink_push(sink, special);
      continue;
    }
    if ((rc = bpe_work_reserve(&w, 4 * len)) != PA_OK) break;
    size_t bytes = 0;
    for (size_t i = start; i < start + len; i++) bytes += utf8_put(s[i], w.bytes + bytes);
    bpe_run(t, &w, bytes);
    for (int32_t p = 0; p >= 0; p = w.next[p]) sink_push(sink, w.id[p]);
  }
  bpe_work_free(&w);
  return rc;
}

static int encode_text(const pa_clip_tokenizer *t, const char *utf8, size_t len, int stop_after,
                       id_sink *sink) {
  uint32_t *clean = NULL;
  size_t n = 0;
  if (!t) return pa_fail(PA_ERR_INVALID, "clip: no tokenizer");
  int rc = clean_utf8(utf8, len, &clean, &n);
  if (rc) return rc;
  rc = encode_clean(t, clean, n, stop_after, sink);
  free(clean);
  return rc;
}

int pa_clip_encode(const pa_clip_tokenizer *t, const char *utf8, size_t len, int32_t *ids,
                   int cap, int *n) {
  id_sink sink = {ids, cap, 0};
  int rc = encode_text(t, utf8, len, 0, &sink);
  if (rc == PA_OK) *n = sink.n;
  return rc;
}

int pa_clip_tokenize(const pa_clip_tokenizer *t, const char *utf8, size_t len,
                     int64_t ids[PA_CLIP_CONTEXT]) {
  int32_t bpe[CLIP_MAX_TOKENS];
  id_sink sink = {bpe, CLIP_MAX_TOKENS, 0};
  /* Only ids[:75] survive, so the pieces after them need no BPE. */
  int rc = encode_text(t, utf8, len, CLIP_MAX_TOKENS, &sink);
  if (rc) return rc;
  int n = sink.n < CLIP_MAX_TOKENS ? sink.n : CLIP_MAX_TOKENS;
  ids[0] = PA_CLIP_SOT;
  for (int i = 0; i < n; i++) ids[1 + i] = bpe[i];
  ids[1 + n] = PA_CLIP_EOT;
  for (int i = 2 + n; i < PA_CLIP_CONTEXT; i++) ids[i] = 0; /* id 0 is also "!", as upstream */
  return PA_OK;
}

/* ========================================================================================
 * The vocabulary: 256 byte symbols, the same with "</w>", one per merge, SOT, EOT.
 * ======================================================================================== */

const char *pa_clip_token_text(const pa_clip_tokenizer *t, int id) {
  return id >= 0 && id < PA_CLIP_VOCAB ? t->text + t->text_off[id] : NULL;
}

/* Upstream's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68
 * take U+0100.. in byte order. Symbol ids list the printable ones first. */
static void byte_symbols(uint8_t byte_id[256], uint32_t byte_cp[256]) {
  int printable = 0, other = 0;
  for (int b = 0; b < 256; b++) {
    bool p = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    byte_cp[b] = p ? (uint32_t)b : 0x100u + (uint32_t)other;
    byte_id[b] = (uint8_t)(p ? printable++ : 188 + other++);
  }
}

/* String -> id index used while reading the merges (the file names symbols by string). */
typedef struct {
  const pa_clip_tokenizer *t;
  int32_t *slot; /* PAIR_SLOTS ids, -1 when free */
} str_index;

static uint32_t str_hash(const char *s, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h & (PAIR_SLOTS - 1);
}

/* The slot holding s, or the free slot where it belongs. */
static uint32_t str_index_slot(const str_index *x, const char *s, size_t len) {
  uint32_t i = str_hash(s, len);
  for (;; i = (i + 1) & (PAIR_SLOTS - 1)) {
    int32_t id = x->slot[i];
    if (id < 0) return i;
    const char *v = x->t->text + x->t->text_off[id];
    if (!memcmp(v, s, len) && v[len] == 0) return i;
  }
}

typedef struct {
  pa_clip_tokenizer *t;
  str_index index;
  size_t used, cap; /* bytes of t->text */
} vocab_builder;

/* Appends the string a+b as token id; fails if that string already has an id. */
static int vocab_add(vocab_builder *v, int32_t id, const char *a, size_t la, const char *b, size_t lb) {
  if (v->used + la + lb + 1 > v->cap) return pa_fail(PA_ERR_FORMAT, "clip vocab: text overflow");
  char *s = v->t->text + v->used;
  memcpy(s, a, la);
  memcpy(s + la, b, lb);
  s[la + lb] = 0;
  uint32_t slot = str_index_slot(&v->index, s, la + lb);
  if (v->index.slot[slot] >= 0) return pa_fail(PA_ERR_FORMAT, "clip vocab: duplicate token '%s'", s);
  v->index.slot[slot] = id;
  v->t->text_off[id] = (uint32_t)v->used;
  v->used += la + lb + 1;
  return PA_OK;
}

static int vocab_add_bytes(vocab_builder *v) {
  uint32_t byte_cp[256];
  int rc = PA_OK;
  byte_symbols(v->t->byte_id, byte_cp);
  for (int b = 0; b < 256 && !rc; b++) {
    unsigned char sym[4];
    size_t n = utf8_put(byte_cp[b], sym);
    int id = v->t->byte_id[b];
    rc = vocab_add(v, id, (const char *)sym, n, "", 0);
    if (!rc) rc = vocab_add(v, 256 + id, (const char *)sym, n, "</w>", 4);
  }
  return rc;
}

static int32_t vocab_lookup(const vocab_builder *v, const char *s, size_t len) {
  return v->index.slot[str_index_slot(&v->index, s, len)];
}

static int pair_insert(pa_clip_tokenizer *t, int32_t left, int32_t right, int32_t rank) {
  uint64_t key = pair_hash_key(left, right);
  uint32_t s = pair_slot(key);
  while (t->pair_key[s] != PAIR_EMPTY) {
    if (t->pair_key[s] == key) return pa_fail(PA_ERR_FORMAT, "clip merges: pair of rank %d repeats", rank);
    s = (s + 1) & (PAIR_SLOTS - 1);
  }
  t->pair_key[s] = key;
  t->pair_rank[s] = rank;
  t->merge_left[rank] = left;
  t->merge_right[rank] = right;
  return PA_OK;
}

/* Merge of rank `rank` from the line "left right" (line[0..len), without the newline). */
static int vocab_add_merge(vocab_builder *v, int32_t rank, const char *line, size_t len) {
  if (len && line[len - 1] == '\r') len--; /* a merges.txt saved with CRLF */
  const char *space = memchr(line, ' ', len);
  if (!space || space == line || space + 1 == line + len || memchr(space + 1, ' ', line + len - space - 1))
    return pa_fail(PA_ERR_FORMAT, "clip merges line %d: expected 'left right'", rank + 1);
  size_t la = (size_t)(space - line), lb = len - la - 1;
  int32_t left = vocab_lookup(v, line, la), right = vocab_lookup(v, space + 1, lb);
  if (left < 0 || right < 0)
    return pa_fail(PA_ERR_FORMAT, "clip merges line %d: unknown symbol in '%.*s'", rank + 1, (int)len, line);
  int rc = vocab_add(v, 512 + rank, line, la, space + 1, lb);
  return rc ? rc : pair_insert(v->t, left, right, rank);
}

/* Reads merges text: a header line, then PA_CLIP_MERGES merge lines (the rest is unused). */
static int vocab_read_merges(vocab_builder *v, const char *text, size_t len) {
  const char *p = memchr(text, '\n', len), *end = text + len;
  if (!p) return pa_fail(PA_ERR_FORMAT, "clip merges: no header line");
  p++;
  for (int32_t rank = 0; rank < PA_CLIP_MERGES; rank++) {
    if (p >= end) return pa_fail(PA_ERR_FORMAT, "clip merges: %d merges, need %d", rank, PA_CLIP_MERGES);
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = nl ? nl : end;
    int rc = vocab_add_merge(v, rank, p, (size_t)(line_end - p));
    if (rc) return rc;
    p = line_end + 1;
  }
  return PA_OK;
}

static int vocab_build(pa_clip_tokenizer *t, const char *merges, size_t len) {
  vocab_builder v = {t, {t, NULL}, 0, 0};
  int rc = PA_OK;
  /* Each merge's string is at most its line, so the merges text bounds the strings. */
  v.cap = 512 * 8 + len + 64;
  t->text = malloc(v.cap);
  v.index.slot = malloc(PAIR_SLOTS * sizeof *v.index.slot);
  if (!t->text || !v.index.slot) {
    rc = pa_fail(PA_ERR_NOMEM, "clip vocab: %zu bytes", v.cap);
    goto fail;
  }
  memset(v.index.slot, 0xFF, PAIR_SLOTS * sizeof *v.index.slot); /* all -1 */
  memset(t->pair_key, 0xFF, sizeof t->pair_key);                 /* all PAIR_EMPTY */
  PA_TRY(vocab_add_bytes(&v));
  PA_TRY(vocab_read_merges(&v, merges, len));
  PA_TRY(vocab_add(&v, PA_CLIP_SOT, "<start_of_text>", 15, "", 0));
  PA_TRY(vocab_add(&v, PA_CLIP_EOT, "<end_of_text>", 13, "", 0));
fail:
  free(v.index.slot);
  return rc;
}

/* ========================================================================================
 * Loading: the embedded gzip file or a path
 * ======================================================================================== */

/* Grows buf to hold at least `need` bytes (doubling). */
static int grow(char **buf, size_t *cap, size_t need) {
  if (*buf && need <= *cap) return PA_OK;
  size_t c = *buf ? *cap : need;
  while (c < need) c *= 2;
  char *p = realloc(*buf, c);
  if (!p) return pa_fail(PA_ERR_NOMEM, "clip merges: %zu bytes", c);
  *buf = p;
  *cap = c;
  return PA_OK;
}

static int gunzip(const unsigned char *src, size_t n, char **out, size_t *out_len) {
  z_stream z = {0};
  size_t cap = 0, used = 0;
  char *buf = NULL;
  int rc = PA_OK, zrc = Z_OK;
  if (n > UINT_MAX) return pa_fail(PA_ERR_INVALID, "clip merges: %zu-byte gzip file", n);
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return pa_fail(PA_ERR_NOMEM, "clip merges: zlib init");
  z.next_in = (unsigned char *)src; /* zlib's API is not const-qualified; it only reads */
  z.avail_in = (uInt)n;
  while (zrc != Z_STREAM_END) {
    PA_TRY(grow(&buf, &cap, used < 4 * n ? 4 * n : 2 * used)); /* the merges file inflates 2.4x */
    size_t room = cap - used;
    z.next_out = (unsigned char *)buf + used;
    z.avail_out = (uInt)(room < UINT_MAX ? room : UINT_MAX);
    zrc = inflate(&z, Z_NO_FLUSH);
    used = (size_t)((char *)z.next_out - buf);
    if (zrc == Z_BUF_ERROR || (zrc == Z_OK && z.avail_in == 0 && z.avail_out != 0)) {
      rc = pa_fail(PA_ERR_FORMAT, "clip merges: truncated gzip data");
      goto fail;
    }
    if (zrc != Z_OK && zrc != Z_STREAM_END) {
      rc = pa_fail(PA_ERR_FORMAT, "clip merges: gzip: %s", z.msg ? z.msg : zError(zrc));
      goto fail;
    }
  }
  *out = buf;
  *out_len = used;
  buf = NULL;
fail:
  inflateEnd(&z);
  free(buf);
  return rc;
}

/* A tokenizer from a merges file's bytes, gzip or plain text. */
static int clip_build(const unsigned char *data, size_t n, pa_clip_tokenizer **out) {
  char *text = NULL;
  size_t len = n;
  int rc = PA_OK;
  pa_clip_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return pa_fail(PA_ERR_NOMEM, "clip tokenizer");
  if (n >= 2 && data[0] == 0x1F && data[1] == 0x8B)
    PA_TRY(gunzip(data, n, &text, &len));
  PA_TRY(vocab_build(t, text ? text : (const char *)data, len));
  *out = t;
  t = NULL;
fail:
  free(text);
  pa_clip_tokenizer_free(t);
  return rc;
}

void pa_clip_tokenizer_free(pa_clip_tokenizer *t) {
  if (!t) return;
  free(t->text);
  free(t);
}

static int read_file(const char *path, unsigned char **out, size_t *n) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf = NULL;
  long size;
  int rc = PA_OK;
  if (!f) return pa_fail(PA_ERR_IO, "open %s: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
    rc = pa_fail(PA_ERR_IO, "seek %s: %s", path, strerror(errno));
    goto fail;
  }
  buf = malloc((size_t)size + 1);
  if (!buf) {
    rc = pa_fail(PA_ERR_NOMEM, "%s: %ld bytes", path, size);
    goto fail;
  }
  if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
    rc = pa_fail(PA_ERR_IO, "read %s: short read", path);
    goto fail;
  }
  *out = buf;
  *n = (size_t)size;
  buf = NULL;
fail:
  free(buf);
  fclose(f);
  return rc;
}

int pa_clip_tokenizer_load(const char *path, pa_clip_tokenizer **out) {
  unsigned char *data = NULL;
  size_t n = 0;
  *out = NULL;
  int rc = read_file(path, &data, &n);
  if (rc) return rc;
  rc = clip_build(data, n, out);
  free(data);
  return rc ? pa_fail_context(rc, "%s: ", path) : PA_OK;
}

/* The shared tokenizer: built once, kept for the life of the process. pthread_once gives
 * every thread the finished table (or the same error) without a lock on the hot path. */
static pthread_once_t shared_once = PTHREAD_ONCE_INIT;
static pa_clip_tokenizer *shared_tok;
static int shared_rc;
static char shared_err[512];

static void shared_init(void) {
  shared_rc = clip_build(pa_clip_vocab_gz, (size_t)(pa_clip_vocab_gz_end - pa_clip_vocab_gz), &shared_tok);
  if (shared_rc) snprintf(shared_err, sizeof shared_err, "%s", pa_errmsg());
}

int pa_clip_tokenizer_get(const pa_clip_tokenizer **out) {
  pthread_once(&shared_once, shared_init);
  if (shared_rc) return pa_fail(shared_rc, "embedded CLIP merges: %s", shared_err);
  *out = shared_tok;
  return PA_OK;
}
