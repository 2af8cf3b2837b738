#include "tls/tls.h"

#include <stdio.h>
#include <stdlib.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls/tls_internal.h"
#include "util/util_mem.h"


struct tls_ctx *
tls_server_ctx_new(const char *cert_file, const char *key_file, char *err, size_t err_cap)
{
	struct tls_ctx *ctx = xcalloc(1, sizeof(*ctx));
	unsigned long e;

	ctx->ssl_ctx = SSL_CTX_new(TLS_server_method());
	if (ctx->ssl_ctx == NULL)
		goto fail;
	SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
					      SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_file) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx->ssl_ctx) != 1)
		goto fail;
	return ctx;
fail:
	e = ERR_get_error();
	snprintf(err, err_cap, "TLS %s / %s: %s", cert_file, key_file,
		 e ? ERR_reason_error_string(e) : "cannot create context");
	ERR_clear_error();
	if (ctx->ssl_ctx != NULL)
		SSL_CTX_free(ctx->ssl_ctx);
	free(ctx);
	return NULL;
}

struct bufferevent *
tls_bev_accept(struct tls_ctx *ctx, struct event_base *base, int fd)
{
	SSL *ssl = SSL_new(ctx->ssl_ctx);

	if (ssl == NULL)
		return NULL;
	return bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
					      BEV_OPT_CLOSE_ON_FREE);
}

struct bufferevent *
tls_bev_starttls(struct tls_ctx *ctx, struct event_base *base, struct bufferevent *plain)
{
	SSL *ssl = SSL_new(ctx->ssl_ctx);

	if (ssl == NULL)
		return NULL;
	return bufferevent_openssl_filter_new(base, plain, ssl, BUFFEREVENT_SSL_ACCEPTING,
					      BEV_OPT_CLOSE_ON_FREE);
}

void
tls_bev_describe(struct bufferevent *bev, char *dst, size_t cap)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);

	if (ssl == NULL) {
		snprintf(dst, cap, "none");
		return;
	}
	snprintf(dst, cap, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}
