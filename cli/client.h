/* HTTP client of a running scheduler for `paella submit|status|wait|fetch|batch`
 * (docs/api.md): --url / $PAELLA_URL, --api-key / $PAELLA_API_KEY. */
#ifndef PAELLA_CLI_CLIENT_H
#define PAELLA_CLI_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
  const char *url, *key;
} client;

/* The defaults from the environment. */
void client_init(client *c);
/* --url URL / --api-key KEY (also --url=URL): 1 when argv[*i] was one (and *i advanced),
 * 0 when not, CLI_EXIT_USAGE when its value is missing. */
int client_option(client *c, int argc, char **argv, int *i);

/* One request; *out is the parsed JSON reply (NULL if not JSON). `headers` is NULL or a
 * NULL-terminated list of "Name: value". Returns the HTTP status, or -1 when the scheduler
 * could not be reached (message printed). */
long client_request(const client *c, const char *method, const char *path, const char *ctype, const char *body,
                    size_t len, const char *const *headers, json_t **out);
/* GET of a URL or path (redirects followed) into `dest` through cli_output_write. Returns
 * the HTTP status or -1. */
long client_download(const client *c, const char *path, const char *dest);

/* Prints "paella: HTTP 404 not_found: no job X" (the field in parentheses when there is
 * one) and returns CLI_EXIT_FAILURE. */
int client_api_failed(long status, const json_t *reply);
void client_print_json(const json_t *j);
/* A whole file ("-": stdin), NUL-terminated; NULL when unreadable. */
char *client_read_all(const char *path, size_t *len);
bool client_is_help(int argc, char **argv); /* any --help or -h */

#endif
