/* Strict number parsing for command lines and URLs: the whole string must be the number. */
#ifndef PAELLA_OPS_PARSE_H
#define PAELLA_OPS_PARSE_H

/* A base-10 integer in [lo, hi] into *out; 0 on success, -1 otherwise (*out untouched). */
int pa_parse_int(const char *s, long lo, long hi, int *out);

#endif
