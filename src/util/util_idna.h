/*
 * util_idna — the ASCII form of a domain name (RFC 5890), so that a domain
 * written with Unicode labels ("müller.example", as SMTPUTF8 clients send it)
 * and its A-label form ("xn--mller-kva.example") are one domain for DNS, for
 * local_domains and for the users and aliases files.
 */
#ifndef PETREL_UTIL_IDNA_H
#define PETREL_UTIL_IDNA_H

#include <stdbool.h>
#include <stddef.h>

/* Longest ASCII name written (RFC 1035 2.3.4, without a trailing dot). */
#define UTIL_IDNA_MAX 253

/* True when s[0..len) holds an octet above 0x7f: a name to convert. */
bool util_idna_needed(const char *s, size_t len);

/*
 * Writes into out (capacity cap, NUL-terminated) the ASCII form of the
 * domain s[0..len), a trailing dot left off: ASCII names are copied as they
 * are; a name with UTF-8 labels is mapped as UTS #46 (non-transitional: case
 * folded, NFC) and each such label written as "xn--" + Punycode by libidn2.
 * Returns the length written, or -1 when the name is not valid UTF-8, not a
 * valid IDNA2008 name, or does not fit; why (may be NULL) then says which.
 */
long util_idna_to_ascii(const char *s, size_t len, char *out, size_t cap, const char **why);

/*
 * Points *s and *len at the ASCII form of the domain there: left as they are
 * for an ASCII name, else at buf (UTIL_IDNA_MAX + 1 octets) holding its
 * A-label form.  False when the name has none (not valid IDNA2008).
 */
bool util_idna_ascii(const char **s, size_t *len, char *buf);

#endif
