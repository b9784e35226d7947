/* Load test of POST /v1/jobs on loopback with wrk (5 s, 64 connections): reports
 * submissions/s and p50/p99 latency. Every response must be a 202; the throughput floor
 * asserted here is deliberately low (a loaded CI machine), the figures are printed. */
#include "tests/scheduler/harness.h"

static double field_after(const char *text, const char *label) {
  const char *p = strstr(text, label);
  if (!p) return -1;
  p += strlen(label);
  while (*p == ' ') p++;
  char *end;
  double v = strtod(p, &end);
  if (!strncmp(end, "us", 2)) v /= 1000;
  else if (!strncmp(end, "ms", 2)) v *= 1;
  else if (*end == 's') v *= 1000;
  return v;
}

int main(void) {
  if (system("command -v wrk >/dev/null 2>&1") != 0) {
    fprintf(stderr, "wrk is not installed (scripts/install-deps.sh installs it)\n");
    return 1;
  }
  if (harness_start_redis()) return 1;
  sched_config c;
  harness_config(&c);
  c.max_active = 1 << 30;
  c.rate = 1e9;
  c.burst = 1e9;
  sched_server *s = NULL;
  CHECK(sched_server_start(&c, &s) == PA_OK);
  if (s) {
    char script[400], cmd[800];
    snprintf(script, sizeof script, "%s/post.lua", h_dir);
    FILE *f = fopen(script, "w");
    fprintf(f, "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
               "wrk.body = '{\"prompt\":\"a load test fox\",\"width\":32,\"height\":32,\"steps\":2}'\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, "timeout 30 wrk -t2 -c64 -d5s --latency -s %s http://127.0.0.1:%d/v1/jobs 2>&1", script,
             sched_server_port(s));
    FILE *p = popen(cmd, "r");
    char out[8192] = "";
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    if (p) pclose(p);
    fputs(out, stdout);
    double rps = field_after(out, "Requests/sec:"), p50 = field_after(out, "50%"), p99 = field_after(out, "99%");
    printf("load: %.0f submissions/s, p50 %.2f ms, p99 %.2f ms (target >= 5000/s, p99 < 20 ms)\n", rps, p50, p99);
    CHECK(rps > 1000);
    CHECK(p99 > 0 && p99 < 200);
    CHECK_MSG(!strstr(out, "Non-2xx"), "some submissions were refused");
    /* no worker: --dispatch-depth of them on the stream, the rest waiting in the key's queue */
    redisReply *r = sched_cmdf(&c, "XLEN %s", c.redis.stream);
    long long waiting = 0;
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == c.dispatch_depth);
    CHECK(dispatch_waiting(&c, NULL, &waiting) == PA_OK && (r ? r->integer : 0) + waiting > 5000);
    if (r) freeReplyObject(r);
  }
  sched_server_stop(s);
  sched_redis_drop();
  harness_cleanup();
  hub_shutdown();
  TEST_END();
}
