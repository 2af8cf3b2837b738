/*
 * util_id — queue and session identifiers.
 *
 * An id is 16 upper-case hex digits: 9 from the microsecond clock, 7 from a
 * per-process random base plus a counter, so ids sort by arrival, never
 * repeat within a process and (with high probability) across restarts.
 * Ids are safe file names.
 */
#ifndef PETREL_UTIL_ID_H
#define PETREL_UTIL_ID_H

#include <stdbool.h>
#include <stddef.h>

#define UTIL_ID_LEN 16

/* Writes a fresh id and a NUL into dst (UTIL_ID_LEN + 1 bytes). Thread-safe. */
void util_id_new(char dst[UTIL_ID_LEN + 1]);
/* True when s is exactly an id's shape (16 hex digits). */
bool util_id_valid(const char *s);

#endif
