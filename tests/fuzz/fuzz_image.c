/* libFuzzer target for the image decoders (model/image*.c: PNG through libspng, JPEG through
 * libjpeg-turbo, WebP through libwebp) and the embedded-parameter readers: any bytes must
 * decode or fail with a message, never crash, leak or read out of bounds; a decoded image
 * must encode again in every format and decode to the same size.
 * Build: cmake -DPAELLA_FUZZ=ON -DCMAKE_C_COMPILER=clang ...; ninja fuzz_image
 * Run:   ./fuzz_image corpus -max_len=65536 (seeds: any small PNG, JPEG and WebP files) */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "model/image.h"
#include "ops/error.h"

/* Images this small keep each run fast; larger ones only exercise the same code longer. */
#define MAX_PIXELS (256 * 256)

static void reencode(const pa_image *img) {
  for (int f = 0; f < PA_IMAGE_FORMAT_COUNT; f++) {
    pa_image_encoding enc = {(pa_image_format)f, 75, "{\"prompt\":\"<&>\"}"};
    void *buf = NULL;
    size_t len = 0;
    pa_image *back = NULL;
    char *params = NULL;
    if (pa_image_encode(img, &enc, &buf, &len) != PA_OK) abort();
    if (pa_image_decode(buf, len, &back) != PA_OK || back->width != img->width || back->height != img->height) abort();
    if (pa_image_read_params(buf, len, &params) != PA_OK || !params) abort();
    free(params);
    pa_image_free(back);
    free(buf);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pa_image *img = NULL;
  char *params = NULL;
  if (pa_image_read_params(data, size, &params) == PA_OK) free(params);
  if (pa_image_decode(data, size, &img) == PA_OK && (long)img->width * img->height <= MAX_PIXELS) reencode(img);
  pa_image_free(img);
  return 0;
}
