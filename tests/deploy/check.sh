#!/usr/bin/env bash
# Deployment checks without a cluster or a Docker engine (docs/deploy.md, "CI checks"):
# docker-compose.yml through `docker-compose config`, the Dockerfiles parsed, the Helm chart
# rendered by charts/render (Helm's template engine rebuilt from Debian's Go packages) for
# the default values, ci/*-values.yaml and a shared-Secret install, and the output checked;
# the chart's own Redis run from its rendered command with redis-server and KEDA's activation
# rule applied to one queued job; values files against values.schema.json; the README's
# values table complete and current; and every setting of paella-worker/paella-scheduler
# --help reachable from the chart and compose.
# usage: check.sh [WORK_DIR]   (PAELLA_WORKER_BIN, PAELLA_SCHEDULER_BIN: the binaries)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
chart=$root/charts/paella
# Debian's python3-yaml/python3-jsonschema, whatever python3 is first on PATH.
py=/usr/bin/python3
check() { "$py" "$root/tests/deploy/check_deploy.py" "$@"; }
failed=0
step() { # name, command...
  local name=$1
  shift
  echo "== $name"
  if "$@"; then echo "-- $name: ok"; else echo "-- $name: FAILED"; failed=$((failed + 1)); fi
}

compose_config() {
  # Every profile, so the GPU and CPU workers and Kafka are validated too; `config` needs
  # no Docker engine.
  (cd "$root" && docker-compose -f docker-compose.yml --profile gpu --profile cpu --profile kafka config -q)
  # The durability settings docs/queues.md requires of Redis.
  (cd "$root" && docker-compose -f docker-compose.yml config) >"$work/compose.yml"
  grep -q -- '--appendonly' "$work/compose.yml" && grep -q -- 'noeviction' "$work/compose.yml"
}

build_renderer() {
  # Offline, GOPATH mode against /usr/share/gocode (golang-github-masterminds-sprig-dev).
  (cd "$root/charts/render" && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$work/gocache" \
    GOFLAGS= go build -o "$work/render" .)
}

render() { # name, render args...
  local name=$1
  shift
  "$work/render" -name paella -namespace paella "$@" "$chart" >"$work/$name.yaml" || return 1
  echo "$work/$name.yaml: $(grep -c '^kind:' "$work/$name.yaml") objects"
}

render_all() {
  render default &&
    render kafka -f "$chart/ci/kafka-scale-to-zero-values.yaml" &&
    render redis-full -f "$chart/ci/redis-full-values.yaml" &&
    render production -f "$chart/ci/production-values.yaml" &&
    render legacy-secret --set secrets.existingSecret=paella-credentials
}

render_refusals() {
  # The chart's own guards (beyond the schema) must stop a bad install.
  local bad=0
  if "$work/render" --set worker.terminationGracePeriodSeconds=300 "$chart" >/dev/null 2>"$work/err"; then
    echo "a grace period shorter than the longest job was accepted"; bad=1
  else grep -q "must exceed" "$work/err" || { cat "$work/err"; bad=1; }; fi
  if "$work/render" --set queue.type=kafka --set queue.kafka.brokers=k:9092 "$chart" >/dev/null 2>"$work/err"; then
    echo "the Redis-only scheduler was rendered on Kafka"; bad=1
  else grep -q "Redis stream only" "$work/err" || { cat "$work/err"; bad=1; }; fi
  if "$work/render" --set queue.redis.tls.enabled=true --set redis.enabled=true "$chart" >/dev/null 2>"$work/err"; then
    echo "TLS to the chart's own Redis (which has none) was accepted"; bad=1
  else grep -q "has no TLS" "$work/err" || { cat "$work/err"; bad=1; }; fi
  # KEDA activates on lag > threshold: with scale to zero anything above 0 strands jobs.
  local activation
  for activation in "redis.activationLagCount" "kafka.activationLagThreshold"; do
    if "$work/render" --set autoscaling.scaleToZero=true --set "autoscaling.$activation=1" \
      --set queue.type="${activation%%.*}" --set queue.kafka.brokers=k:9092 \
      --set scheduler.enabled=false "$chart" >/dev/null 2>"$work/err"; then
      echo "scale to zero with $activation=1 was accepted: one job would never wake the workers"; bad=1
    else grep -q "would never run" "$work/err" || { cat "$work/err"; bad=1; }; fi
  done
  return $bad
}

help_texts() {
  local w=${PAELLA_WORKER_BIN:-} s=${PAELLA_SCHEDULER_BIN:-}
  if [ ! -x "$w" ] || [ ! -x "$s" ]; then
    echo "paella-worker/paella-scheduler not built (PAELLA_WORKER_BIN, PAELLA_SCHEDULER_BIN)"
    return 1
  fi
  "$w" --help >"$work/worker-help.txt"
  "$s" --help >"$work/scheduler-help.txt"
}

step "docker-compose config" compose_config
step "Dockerfiles" check dockerfiles
step "values.schema.json" check schema
step "README.md values table" "$py" "$root/tests/deploy/values_table.py" --check
if step "build charts/render" build_renderer && step "render the chart" render_all; then
  step "rendered: default values" check rendered "$work/default.yaml" default
  step "rendered: Kafka + scale to zero" check rendered "$work/kafka.yaml" kafka
  step "rendered: Redis with auth, CPU worker, ingress" check rendered "$work/redis-full.yaml" redis-full
  step "rendered: chart's Redis, scale to zero, NetworkPolicy, split Secrets" \
    check rendered "$work/production.yaml" production
  step "rendered: one shared existingSecret (before the split)" \
    check rendered "$work/legacy-secret.yaml" legacy-secret
  step "chart refuses bad settings" render_refusals
  # The rendered Redis command on Debian's redis-server; one job through KEDA's lag reading.
  step "the chart's Redis run, one job wakes the workers" check redis "$work/production.yaml"
  if step "binaries' --help" help_texts; then
    step "every setting reachable" check settings "$work/worker-help.txt" "$work/scheduler-help.txt" \
      "$work/kafka.yaml" "$work/redis-full.yaml"
  fi
fi
echo "deploy checks: $failed failed"
[ "$failed" -eq 0 ]
