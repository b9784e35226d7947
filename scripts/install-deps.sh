#!/usr/bin/env bash
# Installs every build and test dependency of paella from Debian's packages (and npm for
# test-only servers). Safe to run repeatedly; needs root (apt-get).
set -euo pipefail

APT_PACKAGES=(
  build-essential cmake pkg-config ninja-build git ca-certificates
  libopenblas-openmp-dev     # CPU GEMMs (the OpenMP build: one thread pool with our loops)
  libjansson-dev             # JSON (configs in safetensors metadata, HTTP edge)
  libzip-dev zlib1g-dev      # torch.save zip checkpoints, gzip'd BPE merges
  libicu-dev                 # CLIP tokenizer: Unicode categories and Python-exact lowercasing
  libmsgpack-dev             # wire protocol (msgpack-c)
  libspng-dev libpng-dev     # PNG in/out
  libjpeg62-turbo-dev        # JPEG in/out (libjpeg-turbo)
  libwebp-dev                # WebP in/out, XMP chunk through libwebpmux
  libssl-dev                 # SHA-256, HMAC
  clang llvm libclang-rt-14-dev  # libFuzzer targets, sanitizer runtimes
  libhiredis-dev redis-server    # Redis queue, job registry, embedding cache (+ the test server)
  librdkafka-dev                 # Kafka queue (tests use librdkafka's mock cluster)
  libcurl4-openssl-dev           # S3 uploads (CURLOPT_AWS_SIGV4), webhooks
  libmicrohttpd-dev              # the scheduler's HTTP API, worker metrics
  python3-botocore               # test-only: reference SigV4 signatures
  chromium wrk                   # test-only: dashboard screenshot (headless), scheduler load test
  stress-ng                      # test-only: scripts/test-under-load.sh (the suite beside busy CPUs)
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure "${APT_PACKAGES[@]}"
echo "install-deps: all packages present"

# Test-only: s3rver, a local S3 API for the storage integration test (tests/worker), and
# @redocly/cli, which validates docs/openapi.json (tests/api), pinned by
# tests/tools/package-lock.json. node and npm come with the machine image.
tools_dir="$(cd "$(dirname "$0")/../tests/tools" && pwd)"
if [ ! -x "$tools_dir/node_modules/.bin/s3rver" ] || [ ! -x "$tools_dir/node_modules/.bin/redocly" ]; then
  (cd "$tools_dir" && npm ci --no-audit --no-fund)
fi
echo "install-deps: s3rver and redocly present"

# Test-only: the deployment checks (tests/deploy): docker-compose validates
# docker-compose.yml, Go + sprig build charts/render (Debian has no helm), python3-yaml and
# python3-jsonschema check the rendered chart and values.schema.json.
DEPLOY_CHECK_PACKAGES=(docker-compose golang-go golang-github-masterminds-sprig-dev python3-yaml python3-jsonschema)
apt_ensure "${DEPLOY_CHECK_PACKAGES[@]}"
echo "install-deps: deployment check tools present"
