/*
 * auth — password verification against Dovecot passwd-file hashes.
 *
 * Schemes: {SHA512-CRYPT}, {SHA256-CRYPT}, {BLF-CRYPT}, {CRYPT} (anything
 * crypt(3) of libxcrypt knows), and {PLAIN} (for tests).  Comparisons run
 * in constant time.  Blocking and slow on purpose (crypt): call from a
 * worker thread.  The only file that uses libcrypt.
 */
#ifndef PETREL_AUTH_H
#define PETREL_AUTH_H

#include <stdbool.h>
#include <stddef.h>

/*
 * True when password matches stored ("{SCHEME}hash"; no scheme means {CRYPT}).
 * An empty password matches nothing (RFC 4616 2), whatever was hashed.
 */
bool auth_password_verify(const char *stored, const char *password);
/*
 * Writes "{SHA512-CRYPT}$6$..." for password into dst (capacity >= 160).
 * Returns 0, or -1 when no random salt could be made.
 */
int auth_password_hash(const char *password, char *dst, size_t cap);

#endif
