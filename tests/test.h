/* Minimal test harness: CHECK records a failure and continues; each test program ends with
 * TEST_END, which prints "N passed, N failed" and returns non-zero on any failure. */
#ifndef PAELLA_TESTS_TEST_H
#define PAELLA_TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int test_passed_, test_failed_;

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (cond) {                                                          \
      test_passed_++;                                                    \
    } else {                                                             \
      test_failed_++;                                                    \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                    \
  } while (0)

#define CHECK_MSG(cond, ...)                                                \
  do {                                                                      \
    if (cond) {                                                             \
      test_passed_++;                                                       \
    } else {                                                                \
      test_failed_++;                                                       \
      fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                         \
      fprintf(stderr, "\n");                                                \
    }                                                                       \
  } while (0)

/* A call returning pa_status must succeed; prints pa_errmsg() otherwise. */
#define CHECK_OK(expr)                                                              \
  do {                                                                              \
    int rc_ = (expr);                                                               \
    CHECK_MSG(rc_ == 0, "%s -> %d: %s", #expr, rc_, pa_errmsg());                   \
  } while (0)

#define CHECK_NEAR(a, b, tol) \
  CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", (double)(a), (double)(b), (double)(tol))

#define TEST_END()                                                        \
  do {                                                                    \
    printf("%d passed, %d failed\n", test_passed_, test_failed_);         \
    return test_failed_ ? 1 : 0;                                          \
  } while (0)

#endif
