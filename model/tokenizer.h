/* The two text tokenizers of Paella v3's conditioning: ByT5 (UTF-8 bytes, model/tok_byt5.c)
 * for the T5 encoder and OpenCLIP's byte-level BPE (model/tok_clip.c) for the CLIP ViT-H-14
 * text tower. docs/tokenizers.md describes both rules and the one known difference from
 * upstream (ftfy is not reproduced). All functions take UTF-8 and refuse invalid UTF-8 with
 * PA_ERR_INVALID. */
#ifndef PAELLA_MODEL_TOKENIZER_H
#define PAELLA_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

/* ---- UTF-8 (shared by both tokenizers, defined in model/tok_byt5.c) -------------------------- */

/* Decodes strict UTF-8 (no overlong forms, surrogates or values past U+10FFFF) into code
 * points. out may be NULL to only validate; otherwise it must hold len entries. *n_out
 * receives the number of code points. Fails with PA_ERR_INVALID naming the byte offset. */
int pa_utf8_decode(const char *utf8, size_t len, uint32_t *out, size_t *n_out);

/* ---- ByT5 ------------------------------------------------------------------------------ */

#define PA_BYT5_PAD 0
#define PA_BYT5_EOS 1
#define PA_BYT5_MAX_LEN 768 /* Paella's text length: 767 bytes + </s> */

/* One text: ids = UTF-8 bytes + 3, then </s>. With more than max_len - 1 bytes, the bytes
 * are cut at max_len - 1 (even inside a character, like the upstream tokenizer) and </s>
 * stays last. ids must hold max_len entries; *n receives the count (1..max_len). */
int pa_byt5_tokenize(const char *utf8, size_t len, int max_len, int64_t *ids, int *n);

/* A batch as one (batch, *seq_len) row-major array (malloc'd into *ids, caller frees):
 * each row tokenized as above and padded with 0 to `pad_to`, or to the longest row when
 * pad_to <= 0. pad_to must be >= every row's length. lens may be NULL (NUL-terminated). */
int pa_byt5_tokenize_batch(const char *const *texts, const size_t *lens, int batch, int max_len,
                           int pad_to, int64_t **ids, int *seq_len);

/* ---- CLIP (OpenCLIP ViT-H-14) ------------------------------------------------------------ */

#define PA_CLIP_CONTEXT 77
#define PA_CLIP_SOT 49406
#define PA_CLIP_EOT 49407
#define PA_CLIP_VOCAB 49408
#define PA_CLIP_MERGES 48894 /* merges used: PA_CLIP_VOCAB - 512 byte symbols - 2 specials */

typedef struct pa_clip_tokenizer pa_clip_tokenizer;

/* The process-wide tokenizer built from the merges file linked into the library (decompressed
 * and indexed on the first call, about 30 ms). Thread safe; the result is shared and must not
 * be freed. All the functions below only read the tokenizer, so any number of threads may
 * use it at once. */
int pa_clip_tokenizer_get(const pa_clip_tokenizer **out);

/* Builds a tokenizer from a merges file: the upstream bpe_simple_vocab_16e6.txt.gz (gzip) or
 * a plain-text merges.txt as published with the transformers format (a header line, then one
 * "left right" merge per line). The first 48894 merges are used. Free with
 * pa_clip_tokenizer_free. */
int pa_clip_tokenizer_load(const char *path, pa_clip_tokenizer **out);
void pa_clip_tokenizer_free(pa_clip_tokenizer *t);

/* The model input: [SOT] + the first 75 BPE ids + [EOT], padded with 0 to 77. */
int pa_clip_tokenize(const pa_clip_tokenizer *t, const char *utf8, size_t len,
                     int64_t ids[PA_CLIP_CONTEXT]);

/* All BPE ids of a text, without SOT/EOT or truncation: *n receives the total count and the
 * first min(*n, cap) ids are written. */
int pa_clip_encode(const pa_clip_tokenizer *t, const char *utf8, size_t len, int32_t *ids,
                   int cap, int *n);

/* The stages, for tests and debugging. */

/* Steps 2-5: HTML unescape twice, whitespace stripped and collapsed, lowercased. *out is a
 * malloc'd NUL-terminated UTF-8 string (caller frees). */
int pa_clip_clean_text(const char *utf8, size_t len, char **out, size_t *out_len);

/* Step 6 on already cleaned text: calls fn once per piece, in order, with its UTF-8 bytes
 * and special_id = PA_CLIP_SOT / PA_CLIP_EOT for the two special strings, else 0. A nonzero
 * return from fn stops the scan and is returned. */
typedef int (*pa_clip_piece_fn)(void *ctx, const char *piece, size_t len, int special_id);
int pa_clip_pretokenize(const char *clean_utf8, size_t len, pa_clip_piece_fn fn, void *ctx);

/* The vocabulary string of an id (byte-to-unicode alphabet, "</w>" included), NUL-terminated;
 * NULL when id is out of range. */
const char *pa_clip_token_text(const pa_clip_tokenizer *t, int id);

/* The rank of merging ids (left, right), or -1 when the pair is not a merge. */
int pa_clip_merge_rank(const pa_clip_tokenizer *t, int left, int right);

#endif
