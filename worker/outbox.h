/* The webhook outbox's Redis layout (docs/queues.md), shared by the worker (queue_redis.c adds
 * job webhooks, courier.c delivers) and the scheduler (batch completion webhooks):
 *   {stream}:webhooks                sorted set: message ids by due time (ms)
 *   {stream}:webhook:{message id}    hash: the message (fields below)
 * A message is added once per id: ENQUEUE_LUA skips an id whose hash exists. */
#ifndef PAELLA_WORKER_OUTBOX_H
#define PAELLA_WORKER_OUTBOX_H

#define PA_OUTBOX_SUFFIX ":webhooks"
#define PA_OUTBOX_MESSAGE_SUFFIX ":webhook:"

/* A Lua function for scripts that add a message: enqueue(outbox key, message hash key, a)
 * with ARGV[a .. a+7] = message id, job id, event, url, secret id, has secret id ("1"/"0"),
 * body, now (ms). Returns 1 when added, 0 when the id was there already. */
#define PA_OUTBOX_ENQUEUE_LUA                                                                       \
  "local function enqueue(outbox, hash, a)\n"                                                       \
  "  if redis.call('EXISTS', hash) == 1 then return 0 end\n"                                        \
  "  redis.call('HSET', hash, 'job_id', ARGV[a + 1], 'event', ARGV[a + 2], 'url', ARGV[a + 3],\n"   \
  "    'secret_id', ARGV[a + 4], 'has_secret_id', ARGV[a + 5], 'body', ARGV[a + 6], 'attempts', 0,\n" \
  "    'created_ms', ARGV[a + 7])\n"                                                                \
  "  redis.call('ZADD', outbox, 'NX', ARGV[a + 7], ARGV[a])\n"                                      \
  "  return 1\n"                                                                                    \
  "end\n"

#endif
