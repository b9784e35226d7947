/* Image I/O: PNG, JPEG and WebP encode/decode round trips (exact for PNG, close for the
 * lossy two), the embedded generation parameters read back from each, format detection and
 * names, and bytes that are not an image failing cleanly. */
#include <string.h>

#include "model/image.h"
#include "ops/error.h"
#include "tests/test.h"

/* A smooth gradient: lossy codecs keep it close. (H, W, 3) */
static pa_image *gradient(int w, int h) {
  pa_image *img = NULL;
  if (pa_image_new(w, h, &img)) return NULL;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      float *p = img->rgb + ((size_t)y * w + x) * 3;
      p[0] = (float)x / (w - 1);
      p[1] = (float)y / (h - 1);
      p[2] = 0.5f;
    }
  return img;
}

static double max_abs_diff(const pa_image *a, const pa_image *b) {
  double m = 0;
  for (size_t i = 0; i < (size_t)a->width * a->height * 3; i++) m = fmax(m, fabs(a->rgb[i] - b->rgb[i]));
  return m;
}

static void round_trip(pa_image_format f, double tol) {
  const char *params = "{\"prompt\":\"a <red> & \\\"blue\\\" fox \xc3\xa9\",\"seed\":7}";
  pa_image *img = gradient(64, 48), *back = NULL;
  pa_image_encoding enc = {f, 90, params};
  void *buf = NULL;
  size_t len = 0;
  char *got = NULL;
  pa_image_format detected;
  CHECK_OK(pa_image_encode(img, &enc, &buf, &len));
  CHECK(pa_image_format_detect(buf, len, &detected) == 0 && detected == f);
  CHECK_OK(pa_image_decode(buf, len, &back));
  CHECK(back && back->width == 64 && back->height == 48);
  if (back) {
    double d = max_abs_diff(img, back);
    printf("  %-5s %6zu bytes, max abs error %.4f\n", pa_image_format_name(f), len, d);
    CHECK_MSG(d <= tol, "%s: error %.4f > %.4f", pa_image_format_name(f), d, tol);
  }
  CHECK_OK(pa_image_read_params(buf, len, &got));
  CHECK_MSG(got && !strcmp(got, params), "%s params: %s", pa_image_format_name(f), got ? got : "(none)");
  free(got);
  got = NULL;
  /* without parameters: nothing is read back */
  free(buf);
  enc.params = NULL;
  CHECK_OK(pa_image_encode(img, &enc, &buf, &len));
  CHECK_OK(pa_image_read_params(buf, len, &got));
  CHECK(got == NULL);
  /* a truncated file fails to decode, with a message */
  pa_image *bad = NULL;
  CHECK(pa_image_decode(buf, len / 2, &bad) != PA_OK && bad == NULL && pa_errmsg()[0]);
  free(buf);
  pa_image_free(img);
  pa_image_free(back);
}

static void formats(void) {
  pa_image_format f;
  CHECK(pa_image_format_from_path("a/b.JPG", &f) == 1 && f == PA_IMAGE_JPEG);
  CHECK(pa_image_format_from_path("b.jpeg", &f) == 1 && f == PA_IMAGE_JPEG);
  CHECK(pa_image_format_from_path("b.webp", &f) == 1 && f == PA_IMAGE_WEBP);
  CHECK(pa_image_format_from_path("b.png", &f) == 1 && f == PA_IMAGE_PNG);
  CHECK(pa_image_format_from_path("b.gif", &f) == -1);
  CHECK(pa_image_format_from_path("dir.d/b", &f) == 0);
  CHECK(pa_image_format_from_path(".hidden", &f) == 0);
  CHECK(pa_image_format_from_name("webp", &f) == 0 && f == PA_IMAGE_WEBP);
  CHECK(pa_image_format_from_name("bmp", &f) == -1);
  CHECK(!strcmp(pa_image_format_mime(PA_IMAGE_WEBP), "image/webp"));
  CHECK(!strcmp(pa_image_format_extension(PA_IMAGE_JPEG), ".jpg"));
  pa_image *img = NULL;
  CHECK(pa_image_decode("GIF89a......", 12, &img) == PA_ERR_FORMAT && img == NULL);
  CHECK(pa_image_decode("RIFF\0\0\0\0WEBPVP8 junk", 20, &img) != PA_OK && img == NULL);
  pa_image_encoding bad_quality = {PA_IMAGE_JPEG, 0, NULL};
  void *buf = NULL;
  size_t len;
  pa_image *g = gradient(8, 8);
  CHECK(pa_image_encode(g, &bad_quality, &buf, &len) == PA_ERR_INVALID && buf == NULL);
  pa_image_free(g);
}

int main(void) {
  round_trip(PA_IMAGE_PNG, 0.5 / 255 + 1e-6);
  round_trip(PA_IMAGE_JPEG, 0.06);
  round_trip(PA_IMAGE_WEBP, 0.08);
  formats();
  TEST_END();
}
