/*
 * tls — petrel's only contact with OpenSSL.
 *
 * Client side (the relay): opportunistic TLS on a blocking socket, TLS 1.2
 * or newer, certificates not verified (RFC 7435 opportunistic security:
 * encryption against passive listeners; verification needs DANE/MTA-STS).
 * Server side: a context from tls_cert/tls_key for STARTTLS and implicit TLS.
 */
#ifndef PETREL_TLS_H
#define PETREL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct tls_ctx;	 /* an SSL_CTX */
struct tls_conn; /* an SSL on a blocking socket */

/* A client context for opportunistic TLS.  NULL (err filled) on failure. */
struct tls_ctx *tls_client_ctx_new(char *err, size_t err_cap);
void tls_ctx_free(struct tls_ctx *ctx);
/* One more handle on the same context (freed with tls_ctx_free, each). */
struct tls_ctx *tls_ctx_share(struct tls_ctx *ctx);

/*
 * Handshakes as a client on the connected blocking socket fd (its
 * SO_RCVTIMEO/SO_SNDTIMEO bound the wait).  sni may be NULL.  Returns the
 * connection, or NULL with err filled.  fd stays owned by the caller.
 */
struct tls_conn *tls_client_connect(struct tls_ctx *ctx, int fd, const char *sni, char *err,
				    size_t err_cap);
/* Like read(2)/write(2): bytes moved, 0 at a clean end, -1 on error (errno set). */
ssize_t tls_read(struct tls_conn *c, void *buf, size_t len);
ssize_t tls_write(struct tls_conn *c, const void *buf, size_t len);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" into dst. */
void tls_describe(const struct tls_conn *c, char *dst, size_t cap);
/* Sends close_notify (best effort) and frees; does not close fd. */
void tls_conn_free(struct tls_conn *c);

/*
 * A server context from PEM files (TLS 1.2 minimum, the system's modern
 * cipher defaults, no compression, no renegotiation).  NULL with err filled.
 */
struct tls_ctx *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err,
				   size_t err_cap);

/* ---- libevent glue (tls_bev.c) ------------------------------------------ */
struct bufferevent;
struct event_base;

/* Implicit TLS (RFC 8314): a bufferevent that handshakes as a server on fd. */
struct bufferevent *tls_bev_accept(struct tls_ctx *ctx, struct event_base *base, int fd);
/*
 * STARTTLS (RFC 3207): replaces an existing socket bufferevent by a TLS one
 * on the same connection.  The caller has already queued the 220 (written
 * out here, in clear) and thrown away every octet the client sent before it.
 * On success plain is freed; on failure (NULL) it is left as it was.
 */
struct bufferevent *tls_bev_starttls(struct tls_ctx *ctx, struct event_base *base,
				     struct bufferevent *plain);
/*
 * Sends TLS close_notify (RFC 8446 6.1) on a TLS bufferevent whose output is
 * written; call just before bufferevent_free() (which sends nothing).  Does
 * nothing on a plain bufferevent or before the handshake completed.
 */
void tls_bev_close_notify(struct bufferevent *bev);
/*
 * Enables reading on a bufferevent whose reading was disabled.  On a TLS one
 * it also has what OpenSSL already holds read (libevent 2.1 reads it only
 * once the socket is readable again, which may be never).
 */
void tls_bev_resume_reading(struct bufferevent *bev);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" of a TLS bufferevent into dst. */
void tls_bev_describe(struct bufferevent *bev, char *dst, size_t cap);

#endif
