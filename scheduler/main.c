/* paella-scheduler: the HTTP API, the tracker and the reaper in one process. Stops cleanly
 * on SIGINT/SIGTERM (in-flight requests finish, SSE streams end). */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "scheduler/sched.h"
#include "proto/proto.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

/* Every HTTP connection holds a descriptor: the soft limit (often 1024) would refuse
 * connections long before --max-connections, so take the hard limit. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--version")) { /* version, commit, build type, CUDA */
    printf("%s\n", pw_build_description());
    return 0;
  }
  sched_config cfg;
  bool help = false;
  sched_config_defaults(&cfg);
  if (sched_config_parse(&cfg, argc, argv, &help)) {
    fprintf(stderr, "paella-scheduler: %s\n", pa_errmsg());
    return 2;
  }
  if (help) {
    sched_config_usage();
    return 0;
  }
  if (cfg.n_keys == 0) fprintf(stderr, "paella-scheduler: no API keys configured: authentication is OFF\n");
  raise_fd_limit();
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sched_tracker *tracker = NULL;
  sched_server *server = NULL;
  if (tracker_start(&cfg, &tracker) || sched_server_start(&cfg, &server)) {
    fprintf(stderr, "paella-scheduler: %s\n", pa_errmsg());
    tracker_stop(tracker);
    return 1;
  }
  /* The bound port on one line: tests and scripts that pass port 0 read it from here. */
  printf("paella-scheduler listening on %s:%d\n", cfg.listen_host, sched_server_port(server));
  fflush(stdout);
  while (!stop_requested) pause();
  sched_server_stop(server);
  tracker_stop(tracker);
  hub_shutdown();
  return 0;
}
