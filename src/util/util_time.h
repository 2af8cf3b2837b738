/*
 * util_time — clocks and the date formats mail needs.
 */
#ifndef PETREL_UTIL_TIME_H
#define PETREL_UTIL_TIME_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Monotonic milliseconds, for timeouts and delays. */
uint64_t util_now_ms(void);
/* RFC 5322 date-time ("Sat, 28 Nov 2026 21:00:00 +0000") into dst. */
void util_rfc5322_date(time_t t, char *dst, size_t cap);

#endif
