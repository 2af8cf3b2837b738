#include "util/util_base64.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int
value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

long
util_base64_decode(const char *src, size_t len, unsigned char *dst, size_t cap)
{
	size_t o = 0;

	if (len % 4 != 0)
		return -1;
	for (size_t i = 0; i < len; i += 4) {
		int v[4];
		size_t pad = 0;

		for (size_t k = 0; k < 4; k++) {
			if (src[i + k] == '=') {
				/* Padding only in the last quantum, only at its end. */
				if (i + 4 != len || k < 2)
					return -1;
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0)
				return -1;
			v[k] = value(src[i + k]);
			if (v[k] < 0)
				return -1;
		}
		if (o + 3 - pad > cap)
			return -1;
		dst[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
		if (pad < 2)
			dst[o++] = (unsigned char)((v[1] & 15) << 4 | v[2] >> 2);
		if (pad < 1)
			dst[o++] = (unsigned char)((v[2] & 3) << 6 | v[3]);
	}
	return (long)o;
}

size_t
util_base64_encode(const unsigned char *src, size_t len, char *dst)
{
	size_t o = 0, i;

	for (i = 0; i + 2 < len; i += 3) {
		dst[o++] = alphabet[src[i] >> 2];
		dst[o++] = alphabet[(src[i] & 3) << 4 | src[i + 1] >> 4];
		dst[o++] = alphabet[(src[i + 1] & 15) << 2 | src[i + 2] >> 6];
		dst[o++] = alphabet[src[i + 2] & 63];
	}
	if (i < len) {
		dst[o++] = alphabet[src[i] >> 2];
		if (i + 1 < len) {
			dst[o++] = alphabet[(src[i] & 3) << 4 | src[i + 1] >> 4];
			dst[o++] = alphabet[(src[i + 1] & 15) << 2];
		} else {
			dst[o++] = alphabet[(src[i] & 3) << 4];
			dst[o++] = '=';
		}
		dst[o++] = '=';
	}
	dst[o] = '\0';
	return o;
}
