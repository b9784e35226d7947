/* `paella tokenize --byt5|--clip [--json] [--max-len N] [--merges FILE] TEXT|-`: prints the
 * token ids the text encoders would see, space-separated on one line (or as a JSON array).
 * TEXT "-" reads the text from stdin, byte for byte (no newline is stripped). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "model/tokenizer.h"
#include "ops/error.h"

typedef struct {
  int byt5, clip, json, lines, max_len;
  const char *merges; /* NULL: the merges file linked into the library */
  const char *text;
} tokenize_opts;

static void tokenize_usage(FILE *f) {
  fprintf(f,
          "usage: paella tokenize --byt5|--clip [--json] [--max-len N] [--merges FILE] TEXT|-\n"
          "  --byt5          ByT5 ids: UTF-8 bytes + 3, then </s>=1 (at most --max-len, default %d)\n"
          "  --clip          CLIP ids: [SOT] BPE ids [EOT], padded with 0 to %d\n"
          "  --merges FILE   CLIP merges file (bpe_simple_vocab_16e6.txt.gz or merges.txt)\n"
          "  --json          print a JSON array instead of space-separated ids\n"
          "  --lines         with '-': every stdin line is one text, one output line each\n"
          "  TEXT            the text as UTF-8; '-' reads it from stdin\n",
          PA_BYT5_MAX_LEN, PA_CLIP_CONTEXT);
}

/* 0 ok, 1 help printed, 2 usage error. */
static int parse_opts(int argc, char **argv, tokenize_opts *o) {
  *o = (tokenize_opts){.max_len = PA_BYT5_MAX_LEN};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
    if (!strcmp(a, "--byt5")) o->byt5 = 1;
    else if (!strcmp(a, "--clip")) o->clip = 1;
    else if (!strcmp(a, "--json")) o->json = 1;
    else if (!strcmp(a, "--lines")) o->lines = 1;
    else if (!strcmp(a, "--max-len") && i + 1 < argc) o->max_len = atoi(argv[++i]);
    else if (!strcmp(a, "--merges") && i + 1 < argc) o->merges = argv[++i];
    else if ((a[0] == '-' && a[1] != 0) || o->text) {
      int option = a[0] == '-' && a[1] != 0;
      fprintf(stderr, "paella tokenize: %s '%s'\n", option ? "unknown option" : "one TEXT only (quote it), got also", a);
      return 2;
    } else o->text = a;
  }
  if (o->byt5 + o->clip != 1 || !o->text || o->max_len < 1 || (o->lines && strcmp(o->text, "-"))) return 2;
  return 0;
}

/* The whole of stdin, malloc'd. */
static char *read_stdin(size_t *len) {
  size_t cap = 4096, n = 0, got;
  char *buf = malloc(cap);
  while (buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
    n += got;
    if (n == cap) {
      char *grown = realloc(buf, cap *= 2);
      if (!grown) free(buf);
      buf = grown;
    }
  }
  *len = n;
  return buf;
}

static void print_ids(const int64_t *ids, int n, int json) {
  fputs(json ? "[" : "", stdout);
  for (int i = 0; i < n; i++) printf("%s%lld", i ? (json ? ", " : " ") : "", (long long)ids[i]);
  fputs(json ? "]\n" : "\n", stdout);
}

static int clip_ids(const tokenize_opts *o, const char *text, size_t len, int64_t *ids) {
  pa_clip_tokenizer *own = NULL;
  const pa_clip_tokenizer *t;
  int rc = o->merges ? pa_clip_tokenizer_load(o->merges, &own) : pa_clip_tokenizer_get(&t);
  if (rc) return rc;
  if (own) t = own;
  rc = pa_clip_tokenize(t, text, len, ids);
  pa_clip_tokenizer_free(own);
  return rc;
}

static int tokenize_one(const tokenize_opts *o, const char *text, size_t len, int64_t *ids) {
  int n = PA_CLIP_CONTEXT;
  int rc = o->clip ? clip_ids(o, text, len, ids) : pa_byt5_tokenize(text, len, o->max_len, ids, &n);
  if (rc == PA_OK) print_ids(ids, n, o->json);
  else fprintf(stderr, "paella tokenize: %s\n", pa_errmsg());
  return rc;
}

/* --lines: many texts in one process (training data), each line without its newline. */
static int tokenize_lines(const tokenize_opts *o, char *input, size_t len, int64_t *ids) {
  int rc = PA_OK;
  for (size_t start = 0; start < len && rc == PA_OK;) {
    char *nl = memchr(input + start, '\n', len - start);
    size_t end = nl ? (size_t)(nl - input) : len;
    rc = tokenize_one(o, input + start, end - start, ids);
    start = end + 1;
  }
  return rc;
}

int cmd_tokenize(int argc, char **argv) {
  tokenize_opts o;
  int rc = parse_opts(argc, argv, &o);
  if (rc) {
    tokenize_usage(rc == 1 ? stdout : stderr);
    return rc == 1 ? 0 : 2;
  }
  size_t len = strlen(o.text);
  char *input = !strcmp(o.text, "-") ? read_stdin(&len) : NULL;
  int64_t *ids = malloc((size_t)(o.max_len > PA_CLIP_CONTEXT ? o.max_len : PA_CLIP_CONTEXT) * sizeof *ids);
  if (!ids || (!input && !strcmp(o.text, "-"))) {
    rc = pa_fail(PA_ERR_NOMEM, "out of memory");
  } else {
    rc = o.lines ? tokenize_lines(&o, input, len, ids) : tokenize_one(&o, input ? input : o.text, len, ids);
  }
  free(ids);
  free(input);
  return rc == PA_OK ? 0 : 1;
}
