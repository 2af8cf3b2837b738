/*
 * util_base64 — RFC 4648 base64, strict, for SASL (RFC 4954 4).
 */
#ifndef PETREL_UTIL_BASE64_H
#define PETREL_UTIL_BASE64_H

#include <stddef.h>

/*
 * Decodes src[0..len) into dst (capacity cap).  Strict: only the base64
 * alphabet, length a multiple of 4, '=' only as padding at the end.
 * Returns the decoded length, or -1 on malformed input or when dst is too
 * small.
 */
long util_base64_decode(const char *src, size_t len, unsigned char *dst, size_t cap);
/* Encodes src into dst (capacity >= 4 * ((len + 2) / 3) + 1), NUL-terminated; returns length. */
size_t util_base64_encode(const unsigned char *src, size_t len, char *dst);

#endif
