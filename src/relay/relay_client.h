/*
 * relay_client — the client side of one SMTP connection as a pure state
 * machine: the mirror of smtp_session.  It reads the server's replies (via
 * smtp_reply) and says what to send next; it never touches a socket.
 *
 * One connection carries one or more transactions (connection reuse):
 * relay_client_new() starts at the greeting; relay_client_start() begins a
 * transaction once the client is RELAY_ACT_IDLE.  PIPELINING (RFC 2920) is
 * used when offered: MAIL, every RCPT and DATA go in one write.  STARTTLS
 * (RFC 3207) is used when offered and tls_wanted; after the handshake the
 * client sends EHLO again.  SIZE (RFC 1870), 8BITMIME and SMTPUTF8 are
 * declared when the message needs them.
 *
 * Results are per recipient: some can be accepted while others fail.  A
 * failure before any recipient (greeting, EHLO, MAIL, a broken reply) is a
 * host failure: the glue tries the next MX when it is temporary.
 */
#ifndef PETREL_RELAY_CLIENT_H
#define PETREL_RELAY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp/smtp_reply.h"
#include "util/util_buf.h"

struct relay_client;

struct relay_client_conf {
	const char *helo_name; /* borrowed: our hostname for EHLO/HELO */
	bool tls_wanted;       /* use STARTTLS when the server offers it */
};

/* One transaction; strings borrowed until the transaction ends. */
struct relay_client_msg {
	const char *sender; /* "" for the null sender */
	const char *const *rcpts;
	size_t rcpts_len;
	uint64_t size;	/* message octets, for SIZE= */
	bool body_8bit; /* BODY=8BITMIME */
	bool smtputf8;	/* needs SMTPUTF8 (non-ASCII addresses or headers) */
};

enum relay_client_action {
	RELAY_ACT_NONE,	    /* read more replies and feed them */
	RELAY_ACT_SEND,	    /* write relay_client_output(), then read */
	RELAY_ACT_STARTTLS, /* do the TLS handshake, then relay_client_tls_done() */
	RELAY_ACT_BODY,	    /* write the output, then the message (dot-stuffed, CRLF) and ".\r\n" */
	RELAY_ACT_IDLE,	    /* no transaction: relay_client_start() or relay_client_quit() */
	RELAY_ACT_CLOSE,    /* write the output (if any) and close the connection */
};

enum relay_rcpt_status {
	RELAY_RCPT_PENDING, /* not decided (a host failure came first) */
	RELAY_RCPT_OK,	    /* the server accepted the message for it */
	RELAY_RCPT_TEMP,    /* 4xx: retry later */
	RELAY_RCPT_PERM,    /* 5xx: bounce */
};

struct relay_rcpt_result {
	enum relay_rcpt_status status;
	struct smtp_reply reply; /* the reply that decided it (RCPT or end of DATA) */
};

struct relay_client *relay_client_new(const struct relay_client_conf *cfg);
void relay_client_free(struct relay_client *c);

/*
 * Feeds bytes read from the server.  Returns how many were consumed and
 * sets *act (never RELAY_ACT_NONE while unconsumed input remains and an
 * action is due).
 */
size_t relay_client_feed(struct relay_client *c, const char *in, size_t len,
			 enum relay_client_action *act);
/* Bytes to write (commands); the glue writes them and empties the buffer. */
struct buf *relay_client_output(struct relay_client *c);
/* Ends RELAY_ACT_STARTTLS: ok false means the handshake failed (host failure). */
enum relay_client_action relay_client_tls_done(struct relay_client *c, bool ok);
/* The glue wrote the whole body after RELAY_ACT_BODY; the client now waits for the reply. */
void relay_client_body_sent(struct relay_client *c);
/* Starts a transaction (only when idle); returns the action (usually RELAY_ACT_SEND). */
enum relay_client_action relay_client_start(struct relay_client *c,
					    const struct relay_client_msg *m);
/* Queues QUIT; returns RELAY_ACT_CLOSE. */
enum relay_client_action relay_client_quit(struct relay_client *c);
/* The connection broke or timed out: undecided recipients stay PENDING, a host failure is set. */
void relay_client_abort(struct relay_client *c, const char *why);

/* Per-recipient results of the last transaction (rcpts_len entries). */
const struct relay_rcpt_result *relay_client_results(const struct relay_client *c);
/*
 * The host failure of the last transaction, if any: returns true and sets
 * *permanent and reply (a synthesized 4xx for broken connections) when the
 * transaction failed before recipients were decided.
 */
bool relay_client_host_error(const struct relay_client *c, bool *permanent,
			     const struct smtp_reply **reply);
/* What the server offered in EHLO. */
bool relay_client_has_tls(const struct relay_client *c);
bool relay_client_tls_active(const struct relay_client *c);

#endif
