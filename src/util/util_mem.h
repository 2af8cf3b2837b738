/*
 * util_mem — allocation wrappers that abort on exhaustion.
 *
 * petrel treats a failed allocation as fatal (there is no sane SMTP reply for
 * it), so callers never check for NULL.  Every function returns memory the
 * caller owns and releases with free().
 */
#ifndef PETREL_UTIL_MEM_H
#define PETREL_UTIL_MEM_H

#include <stdbool.h>
#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Copies src into dst (capacity cap > 0), cutting it to fit; always NUL-terminates. */
void util_strlcpy(char *dst, const char *src, size_t cap);
/* True when s[0..n) holds an octet >= 0x80 (8-bit or UTF-8 text). */
bool util_has_8bit(const char *s, size_t n);
/* Overwrites n bytes in a way the compiler may not elide (passwords, AUTH data). */
void util_wipe(void *p, size_t n);

#endif
