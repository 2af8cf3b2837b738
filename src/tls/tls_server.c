#include "tls/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
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
	if (e != 0) {
		char why[256];

		/* (ERR_reason_error_string is NULL for some errors, "Permission denied" among them)
		 */
		ERR_error_string_n(e, why, sizeof(why));
		snprintf(err, err_cap, "TLS %s / %s: %s", cert_file, key_file, why);
	} else {
		snprintf(err, err_cap, "TLS %s / %s: cannot create context", cert_file, key_file);
	}
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

/*
 * STARTTLS gets a socket-based TLS bufferevent on (a duplicate of) the same
 * descriptor, like implicit TLS, and not a filter over the plain one: with a
 * filter, "the output buffer is empty" only means the octets went to the
 * plain bufferevent below, so a reply written just before the session closes
 * (221 to QUIT, 421 after failed AUTHs, a TLS alert) was freed with it
 * unsent.  Here an empty output buffer means the octets are in the kernel.
 */
struct bufferevent *
tls_bev_starttls(struct tls_ctx *ctx, struct event_base *base, struct bufferevent *plain)
{
	evutil_socket_t fd = bufferevent_getfd(plain);
	struct evbuffer *out = bufferevent_get_output(plain);
	struct bufferevent *bev;
	SSL *ssl;

	if (fd < 0)
		return NULL;
	/*
	 * The 220 (and anything before it) goes out in clear before the
	 * handshake.  A socket bufferevent keeps the start of its output frozen
	 * for all but its own write callback: thawed for this, frozen again after.
	 */
	evbuffer_unfreeze(out, 1);
	while (evbuffer_get_length(out) > 0) {
		if (evbuffer_write(out, fd) <= 0)
			break; /* a client that does not read its replies gets no TLS */
	}
	evbuffer_freeze(out, 1);
	if (evbuffer_get_length(out) > 0)
		return NULL;
	ssl = SSL_new(ctx->ssl_ctx);
	if (ssl == NULL)
		return NULL;
	/*
	 * The descriptor passes to the TLS bufferevent as it is, never closed
	 * nor dup()ed: with epoll's change list, the plain one's removal is
	 * applied at the next turn of the loop, and applied to a closed
	 * descriptor number it would fail and leave the socket watched through
	 * its duplicate, level-triggered, for ever (a busy loop).  Here its
	 * removal and the TLS one's interest meet on one descriptor number.
	 */
	bufferevent_disable(plain, EV_READ | EV_WRITE);
	bufferevent_setfd(plain, -1);
	bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
					     BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		bufferevent_setfd(plain, fd); /* the caller closes it with plain */
		return NULL;
	}
	/* The plain bufferevent's write timeout carries over. */
	if (evutil_timerisset(&plain->timeout_write))
		bufferevent_set_timeouts(bev, NULL, &plain->timeout_write);
	/* Its input was drained by the caller (CVE-2011-0411); it no longer holds the descriptor.
	 */
	bufferevent_free(plain);
	return bev;
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

void
tls_bev_resume_reading(struct bufferevent *bev)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);

	bufferevent_enable(bev, EV_READ);
	if (ssl != NULL && SSL_has_pending(ssl))
		event_active(&bev->ev_read, EV_READ, 1);
}

void
tls_bev_close_notify(struct bufferevent *bev)
{
	SSL *ssl = bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;

	/* Best effort on a non-blocking socket: the alert goes out now or not at all. */
	if (ssl != NULL && SSL_is_init_finished(ssl))
		(void)SSL_shutdown(ssl);
	ERR_clear_error();
}
