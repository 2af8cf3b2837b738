/*
 * The conversion itself is libidn2's (IDNA2008 with the UTS #46 mapping):
 * its tables of Unicode properties, normalisation and Bidi rules are not
 * something to keep by hand.
 */
#include "util/util_idna.h"

#include <idn2.h>
#include <stdlib.h>
#include <string.h>

bool
util_idna_needed(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

bool
util_idna_ascii(const char **s, size_t *len, char *buf)
{
	long n;

	if (!util_idna_needed(*s, *len))
		return true;
	n = util_idna_to_ascii(*s, *len, buf, UTIL_IDNA_MAX + 1, NULL);
	if (n < 0)
		return false;
	*s = buf;
	*len = (size_t)n;
	return true;
}

long
util_idna_to_ascii(const char *s, size_t len, char *out, size_t cap, const char **why)
{
	char in[4 * UTIL_IDNA_MAX + 1];
	uint8_t *ascii = NULL;
	size_t n;
	int rc;

	if (why != NULL)
		*why = "name too long";
	if (len > 0 && s[len - 1] == '.')
		len--;
	if (!util_idna_needed(s, len)) {
		if (len >= cap)
			return -1;
		memcpy(out, s, len);
		out[len] = '\0';
		return (long)len;
	}
	if (len >= sizeof(in) || memchr(s, '\0', len) != NULL) {
		if (why != NULL && len < sizeof(in))
			*why = "NUL in name";
		return -1;
	}
	memcpy(in, s, len);
	in[len] = '\0';
	rc = idn2_lookup_u8((const uint8_t *)in, &ascii, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
	if (rc != IDN2_OK) {
		if (why != NULL)
			*why = idn2_strerror(rc);
		return -1;
	}
	n = strlen((const char *)ascii);
	if (n > 0 && ascii[n - 1] == '.')
		n--;
	if (n > UTIL_IDNA_MAX || n >= cap) {
		idn2_free(ascii);
		return -1;
	}
	memcpy(out, ascii, n);
	out[n] = '\0';
	idn2_free(ascii);
	return (long)n;
}
