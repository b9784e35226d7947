/* Where `paella generate` and `paella fetch` put files: output names and safe placement. */
#ifndef PAELLA_CLI_OUTPUT_H
#define PAELLA_CLI_OUTPUT_H

#include <stddef.h>

/* "out.png", image 3 of 12 -> "out-03.png": zero-padded to the width of the largest index
 * (at least 2 digits) so names sort in order, the extension kept (`ext` appended when the
 * base has none). One image keeps the name as given. */
void cli_output_name(const char *base, const char *ext, int index, int total, char *buf, size_t cap);

/* Whether `path` may be written: "-" (stdout, not a terminal), a new name in an existing
 * directory, or an existing regular file. Devices, FIFOs, sockets and directories are
 * refused with a message naming the path. PA_OK or a pa_fail code. */
int cli_output_check(const char *path);

/* Writes `len` bytes to `path`: "-" is stdout; otherwise a temporary file in the target's
 * directory, renamed over `path` only after cli_output_check passes again, so that a
 * failure leaves no partial file and a device node is never replaced. */
int cli_output_write(const char *path, const void *buf, size_t len);

#endif
