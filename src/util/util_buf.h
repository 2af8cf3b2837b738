/*
 * util_buf — a growable byte buffer with a hard maximum.
 *
 * Every append checks the maximum and fails instead of truncating, so a
 * caller always learns that input went past a limit.  The buffer owns its
 * storage; buf_free() releases it.  data is not NUL-terminated unless the
 * caller appends one.
 */
#ifndef PETREL_UTIL_BUF_H
#define PETREL_UTIL_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

struct buf {
	char *data; /* owned */
	size_t len; /* bytes in use */
	size_t cap; /* bytes allocated */
	size_t max; /* hard limit on len */
};

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
/* Empties the buffer, keeping its storage. */
void buf_reset(struct buf *b);
/* Appends n bytes; -1 (nothing appended) when len would pass max. */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Drops the first n bytes (n <= len). */
void buf_consume(struct buf *b, size_t n);
/* Returns a NUL-terminated view of the contents (appends a hidden NUL). */
const char *buf_cstr(struct buf *b);

#endif
