/* clients/python against a real scheduler (in this process), redis-server and a CPU
 * paella-worker that signs webhooks: runs clients/python/tests/test_client.py with Debian's
 * /usr/bin/python3 and passes when it does. PAELLA_TEST_STORE_DIR: the file:// store's
 * directory, where the test reads batch shards. */
#include <stdio.h>
#include <stdlib.h>

#include "tests/scheduler/harness.h"

#define WEBHOOK_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

int main(void) {
  setenv("PAELLA_WEBHOOK_SECRET", WEBHOOK_SECRET, 1); /* inherited by the worker */
  sched_config c;
  sched_tracker *t;
  sched_server *s;
  CHECK(harness_start_stack(&c, &t, &s, "--webhook-allow-private") == 0);
  if (s && t) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "PAELLA_URL=http://127.0.0.1:%d PAELLA_TEST_WEBHOOK_SECRET=%s PAELLA_SOURCE_DIR=%s "
             "PAELLA_TEST_STORE_DIR=%s/outputs /usr/bin/python3 %s/clients/python/tests/test_client.py",
             sched_server_port(s), WEBHOOK_SECRET, PAELLA_SOURCE_DIR, h_dir, PAELLA_SOURCE_DIR);
    int st = system(cmd);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "test_client.py exited %d (worker log: %s/worker.log)",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1, h_dir);
  }
  harness_stop_stack(t, s);
  TEST_END();
}
