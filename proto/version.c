/* The build's identity, from definitions that proto/CMakeLists.txt sets at configure time. */
#include "proto/proto.h"

#ifndef PAELLA_VERSION
#define PAELLA_VERSION "0.0.0"
#define PAELLA_GIT_COMMIT "unknown"
#define PAELLA_BUILD_TYPE "unknown"
#define PAELLA_CUDA_BUILT 0
#endif
#if PAELLA_CUDA_BUILT
#define CUDA_WORD "yes"
#else
#define CUDA_WORD "no"
#endif

const char *pw_build_version(void) { return PAELLA_VERSION; }

const char *pw_build_description(void) {
  return "paella " PAELLA_VERSION " (commit " PAELLA_GIT_COMMIT ", " PAELLA_BUILD_TYPE " build, CUDA " CUDA_WORD ")";
}
