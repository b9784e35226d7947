/* libFuzzer target: arbitrary bytes into the msgpack decoders of all three messages.
 * Built by scripts/fuzz.sh with clang -fsanitize=fuzzer,address,undefined. */
#include "tests/fuzz/roundtrip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pw_error err;
  pw_msg_type type;
  pw_job job;
  pw_progress progress;
  pw_result result;
  (void)pw_peek_type(data, size, 0, &type, &err);
  if (pw_job_decode(data, size, &job, &err) == 0) roundtrip_job(&job);
  pw_job_free(&job);
  if (pw_progress_decode(data, size, &progress, &err) == 0) roundtrip_progress(&progress);
  pw_progress_free(&progress);
  if (pw_result_decode(data, size, &result, &err) == 0) roundtrip_result(&result);
  pw_result_free(&result);
  return 0;
}
