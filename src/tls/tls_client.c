#include "tls/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls/tls_internal.h"
#include "util/util_mem.h"

struct tls_conn {
	SSL *ssl;
};

static void
openssl_error(char *err, size_t err_cap, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e == 0) {
		snprintf(err, err_cap, "%s failed", what);
		return;
	}
	ERR_error_string_n(e, buf, sizeof(buf));
	snprintf(err, err_cap, "%s: %s", what, buf);
	ERR_clear_error();
}

struct tls_ctx *
tls_client_ctx_new(char *err, size_t err_cap)
{
	struct tls_ctx *ctx = xcalloc(1, sizeof(*ctx));

	ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
	if (ctx->ssl_ctx == NULL) {
		openssl_error(err, err_cap, "SSL_CTX_new");
		free(ctx);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_2_VERSION);
	/* Opportunistic: an unverifiable certificate still beats plain text. */
	SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_mode(ctx->ssl_ctx, SSL_MODE_AUTO_RETRY);
	return ctx;
}

void
tls_ctx_free(struct tls_ctx *ctx)
{
	if (ctx == NULL)
		return;
	SSL_CTX_free(ctx->ssl_ctx);
	free(ctx);
}

struct tls_ctx *
tls_ctx_share(struct tls_ctx *ctx)
{
	struct tls_ctx *c = xcalloc(1, sizeof(*c));

	SSL_CTX_up_ref(ctx->ssl_ctx);
	c->ssl_ctx = ctx->ssl_ctx;
	return c;
}

static bool
is_address(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

struct tls_conn *
tls_client_connect(struct tls_ctx *ctx, int fd, const char *sni, char *err, size_t err_cap)
{
	struct tls_conn *c = xcalloc(1, sizeof(*c));

	c->ssl = SSL_new(ctx->ssl_ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
		openssl_error(err, err_cap, "SSL_new");
		goto fail;
	}
	/* A host name only: RFC 6066 3 allows no address there (a literal's "[...]" or its bare
	 * text). */
	if (sni != NULL && sni[0] != '\0' && sni[0] != '[' && !is_address(sni))
		SSL_set_tlsext_host_name(c->ssl, sni);
	if (SSL_connect(c->ssl) != 1) {
		openssl_error(err, err_cap, "TLS handshake");
		goto fail;
	}
	return c;
fail:
	SSL_free(c->ssl);
	free(c);
	return NULL;
}

ssize_t
tls_read(struct tls_conn *c, void *buf, size_t len)
{
	size_t n = 0;

	if (SSL_read_ex(c->ssl, buf, len, &n) == 1)
		return (ssize_t)n;
	switch (SSL_get_error(c->ssl, 0)) {
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		errno = EAGAIN; /* the socket timeout expired */
		break;
	default:
		if (errno == 0)
			errno = EPROTO;
	}
	ERR_clear_error();
	return -1;
}

ssize_t
tls_write(struct tls_conn *c, const void *buf, size_t len)
{
	size_t n = 0;

	if (SSL_write_ex(c->ssl, buf, len, &n) == 1)
		return (ssize_t)n;
	if (errno == 0)
		errno = EPROTO;
	ERR_clear_error();
	return -1;
}

void
tls_describe(const struct tls_conn *c, char *dst, size_t cap)
{
	snprintf(dst, cap, "%s %s", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
}

void
tls_conn_free(struct tls_conn *c)
{
	if (c == NULL)
		return;
	SSL_shutdown(c->ssl);
	SSL_free(c->ssl);
	free(c);
}
