/* Invariants both fuzz targets check on every message a decoder accepts: it re-encodes,
 * the re-encoded bytes decode again to the same bytes, and its JSON form is a fixpoint
 * (JSON -> message -> JSON gives the same text). A violation aborts, which libFuzzer
 * reports as a crash with the input saved. */
#ifndef PAELLA_TESTS_FUZZ_ROUNDTRIP_H
#define PAELLA_TESTS_FUZZ_ROUNDTRIP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

static void fuzz_require(int ok, const char *what, const pw_error *err) {
  if (ok) return;
  fprintf(stderr, "fuzz invariant broken: %s (%s %s: %s)\n", what, pw_code_name(err->code),
          err->field, err->message);
  abort();
}

#define DEFINE_ROUNDTRIP(name, type, encode, decode, to_json, from_json, init, free_fn)       \
  static void name(const type *msg) {                                                        \
    pw_error err = {0};                                                                      \
    uint8_t *a = NULL, *b = NULL;                                                            \
    size_t na = 0, nb = 0;                                                                   \
    char *j1 = NULL, *j2 = NULL;                                                             \
    type m2, m3;                                                                             \
    init(&m2);                                                                               \
    init(&m3);                                                                               \
    fuzz_require(encode(msg, &a, &na, &err) == 0, "encode accepted message", &err);          \
    fuzz_require(decode(a, na, &m2, &err) == 0, "decode own encoding", &err);                \
    fuzz_require(encode(&m2, &b, &nb, &err) == 0, "re-encode", &err);                        \
    fuzz_require(na == nb && memcmp(a, b, na) == 0, "msgpack round trip is exact", &err);    \
    fuzz_require(to_json(&m2, 0, &j1, &err) == 0, "to JSON", &err);                          \
    fuzz_require(from_json(j1, strlen(j1), &m3, &err) == 0, "parse own JSON", &err);         \
    fuzz_require(to_json(&m3, 0, &j2, &err) == 0, "to JSON again", &err);                    \
    fuzz_require(strcmp(j1, j2) == 0, "JSON round trip is exact", &err);                     \
    free(a);                                                                                 \
    free(b);                                                                                 \
    free(j1);                                                                                \
    free(j2);                                                                                \
    free_fn(&m2);                                                                            \
    free_fn(&m3);                                                                            \
  }

DEFINE_ROUNDTRIP(roundtrip_job, pw_job, pw_job_encode, pw_job_decode, pw_job_to_json,
                 pw_job_from_json, pw_job_init, pw_job_free)
DEFINE_ROUNDTRIP(roundtrip_progress, pw_progress, pw_progress_encode, pw_progress_decode,
                 pw_progress_to_json, pw_progress_from_json, pw_progress_init, pw_progress_free)
DEFINE_ROUNDTRIP(roundtrip_result, pw_result, pw_result_encode, pw_result_decode,
                 pw_result_to_json, pw_result_from_json, pw_result_init, pw_result_free)

#endif
