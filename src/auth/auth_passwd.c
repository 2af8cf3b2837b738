#include "auth/auth.h"

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/util_mem.h"

/* Compares without an early exit, so timing says nothing about where they differ. */
static bool
equal_ct(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = (unsigned char)(la != lb);

	for (size_t i = 0; i < la && i < lb; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

bool
auth_password_verify(const char *stored, const char *password)
{
	const char *hash = stored;
	struct crypt_data *cd;
	const char *out;
	bool ok;

	/* RFC 4616 2: a password is at least one character; no stored hash makes "" one. */
	if (stored == NULL || password == NULL || password[0] == '\0')
		return false;
	if (stored[0] == '{') {
		const char *end = strchr(stored, '}');
		size_t n;
		if (end == NULL)
			return false;
		n = (size_t)(end - stored - 1);
		hash = end + 1;
		if (n == 5 && strncasecmp(stored + 1, "PLAIN", 5) == 0)
			return equal_ct(hash, password);
		/* The crypt(3) family: the hash names its own method ($6$, $2y$ ...). */
		if (!((n == 12 && strncasecmp(stored + 1, "SHA512-CRYPT", 12) == 0) ||
		      (n == 12 && strncasecmp(stored + 1, "SHA256-CRYPT", 12) == 0) ||
		      (n == 9 && strncasecmp(stored + 1, "BLF-CRYPT", 9) == 0) ||
		      (n == 5 && strncasecmp(stored + 1, "CRYPT", 5) == 0)))
			return false;
	}
	if (hash[0] == '\0')
		return false;
	cd = xcalloc(1, sizeof(*cd));
	out = crypt_r(password, hash, cd);
	/* libxcrypt returns "*0"/"*1" on failure, which never equals a real hash. */
	ok = out != NULL && out[0] != '*' && equal_ct(out, hash);
	util_wipe(cd, sizeof(*cd));
	free(cd);
	return ok;
}

int
auth_password_hash(const char *password, char *dst, size_t cap)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	const char *out;
	int rc = -1;

	if (crypt_gensalt_rn("$6$", 0, NULL, 0, salt, sizeof(salt)) == NULL)
		return -1;
	cd = xcalloc(1, sizeof(*cd));
	out = crypt_r(password, salt, cd);
	if (out != NULL && out[0] != '*' &&
	    (size_t)snprintf(dst, cap, "{SHA512-CRYPT}%s", out) < cap)
		rc = 0;
	util_wipe(cd, sizeof(*cd));
	free(cd);
	return rc;
}
