/*
 * tls_internal — the one definition of struct tls_ctx, shared by the
 * client and server halves of src/tls/.
 */
#ifndef PETREL_TLS_INTERNAL_H
#define PETREL_TLS_INTERNAL_H

#include <openssl/ssl.h>

struct tls_ctx {
	SSL_CTX *ssl_ctx;
};

#endif
