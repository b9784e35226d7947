/* libFuzzer target for the allowlisted unpickler (ops/pickle.c): any byte string given as a
 * data.pkl must parse or fail with a message, never crash, leak or read out of bounds.
 * Build: cmake -DPAELLA_FUZZ=ON -DCMAKE_C_COMPILER=clang ...; ninja fuzz_pickle
 * Seeds:  mkdir corpus && unzip -p tests/golden/t5_tiny.bin t5_tiny/data.pkl > corpus/t5
 * Run:    ./fuzz_pickle corpus -max_len=65536 */
#include <stddef.h>
#include <stdint.h>

#include "ops/error.h"
#include "ops/pickle.h"

/* Walks what the loader walks: the top-level dict, one nested dict, the tensor views. */
static void visit(const pk_value *v, int depth) {
  if (v->kind == PK_TENSOR) {
    int64_t extent;
    (void)pk_tensor_extent(&v->tensor, &extent);
  }
  if (v->kind != PK_DICT || depth > 1) return;
  for (int64_t i = 0; i < v->dict.n; i++) visit(v->dict.vals[i], depth + 1);
  (void)pk_dict_get(v, "state_dict");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pk_doc *doc = NULL;
  const pk_value *root;
  if (pk_parse(data, size, &doc, &root) == PA_OK) visit(root, 0);
  pk_doc_free(doc);
  return 0;
}
