/*
 * smtp_session — the server side of one SMTP session as a pure state
 * machine (RFC 5321, with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
 * ENHANCEDSTATUSCODES, CHUNKING and STARTTLS).
 *
 * Bytes in, replies and events out: the session never touches a socket, a
 * file or the clock.  The glue (server/) feeds it the bytes the client sent;
 * the session appends replies to its output buffer and stops at every event
 * the glue must act on (store a message, start TLS, close).  While it waits
 * for the glue (a commit, a TLS handshake) it consumes nothing, so pipelined
 * input is never read ahead into the wrong state.
 *
 * Policy that needs outside knowledge (is this recipient ours, may this
 * client relay) is asked through struct smtp_policy, synchronously.
 *
 * The session owns its envelope and buffers; smtp_session_free() releases
 * them.  Pointers returned by accessors are borrowed until the next call
 * that changes the session.
 */
#ifndef PETREL_SMTP_SESSION_H
#define PETREL_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp/smtp_parse.h"
#include "util/util_buf.h"

struct smtp_session;

enum smtp_rcpt_verdict {
	SMTP_RCPT_ACCEPT,
	SMTP_RCPT_UNKNOWN_USER, /* 550 5.1.1 */
	SMTP_RCPT_BAD_MAILBOX,	/* 553 5.1.3: not a safe mailbox name */
	SMTP_RCPT_RELAY_DENIED, /* 550 5.7.1 */
	SMTP_RCPT_TEMPFAIL,	/* 451 4.3.0 */
};

/*
 * A 4xx or 5xx reply, as smtp_policy.refused is told of it for the log.
 * Every pointer is borrowed for the call only; the {pointer, length} text
 * fields are not NUL-terminated, and the address and HELO fields are as the
 * client wrote them (any octet but LF, in a line refused for its control
 * octets): escape them before they are logged.
 */
enum smtp_refusal_kind {
	SMTP_REFUSAL_MAIL,     /* of the connection, MAIL, RCPT, DATA, BDAT or a message's end */
	SMTP_REFUSAL_PROTOCOL, /* of any other command or line: unknown, malformed, out of order
				  (a client sending garbage makes one per line) */
};

struct smtp_refusal {
	enum smtp_refusal_kind kind;
	/* NUL-terminated: the verb ("MAIL", "RCPT", "HELO"...), "UNKNOWN" (not a verb),
	   "END-OF-MESSAGE" (DATA's or BDAT's message) or "CONNECT" (smtp_session_refuse) */
	const char *command;
	const char *reply; /* the reply line as queued, without its CRLF */
	size_t reply_len;
	/* MAIL's address (parsed, else as written), else the transaction's sender ("" for
	   <>); NULL: none */
	const char *sender;
	size_t sender_len;
	/* RCPT's address (parsed, else as written); for DATA, BDAT and a message's end the
	   first recipient accepted; NULL: none */
	const char *rcpt;
	size_t rcpt_len;
	size_t nrcpt;	  /* DATA, BDAT and a message's end: the recipients accepted; else 0 */
	const char *helo; /* HELO/EHLO's argument, else the session's HELO name; NULL: none */
	size_t helo_len;
};

struct smtp_policy {
	void *ctx;
	/* Decides one recipient; called once per syntactically valid RCPT. */
	enum smtp_rcpt_verdict (*check_rcpt)(void *ctx, const struct smtp_path *rcpt);
	/*
	 * May an authenticated client (auth_user) use this sender?  NULL: yes.
	 * A refusal is 553 5.7.1 (RFC 4954 does not name one; Postfix's).
	 */
	bool (*sender_allowed)(void *ctx, const struct smtp_path *sender, const char *auth_user);
	/*
	 * A 4xx or 5xx reply to the client was just queued.  NULL: not told.
	 * Called for every one, in order, except AUTH's 535 (the glue knows of
	 * a failed check first: smtp_session_auth_done) and the 421 of
	 * smtp_session_timeout and smtp_session_close_421 (the glue's own).
	 */
	void (*refused)(void *ctx, const struct smtp_refusal *r);
};

struct smtp_session_conf {
	const char *hostname;	   /* borrowed, outlives the session */
	uint64_t max_message_size; /* SIZE and the DATA/BDAT limit */
	size_t max_recipients;
	bool starttls_offered;	  /* advertise and accept STARTTLS */
	bool auth_offered;	  /* AUTH PLAIN LOGIN, offered under TLS only (RFC 4954 4) */
	bool auth_required;	  /* submission: MAIL needs AUTH first (530 5.7.0) */
	size_t max_errors;	  /* bad commands before 421 and close (0: 20) */
	size_t max_auth_failures; /* failed AUTHs before 421 and close (0: 3) */
	/*
	 * A message holding a NUL octet is refused after its end (550 5.6.0),
	 * for a store that cannot carry one (petrel sendmail -bs: the drop files
	 * of spool/incoming/).  Off: NUL is content like any octet.
	 */
	bool refuse_nul;
};

enum smtp_event {
	SMTP_EVENT_NONE,	  /* all input used (or a partial line kept): feed more */
	SMTP_EVENT_MESSAGE_BEGIN, /* DATA/BDAT started a message: open a queue entry for the
				     envelope */
	SMTP_EVENT_BODY,	  /* body octets ready: take them with smtp_session_body_take() */
	SMTP_EVENT_MESSAGE_END,	  /* message complete and acceptable: take the last octets,
				     store durably, then call smtp_session_commit_done() */
	SMTP_EVENT_MESSAGE_ABORT, /* message refused (reply queued): discard the queue entry */
	SMTP_EVENT_STARTTLS,	  /* flush the output, drop all unread input, start TLS, then
				     call smtp_session_tls_started() */
	SMTP_EVENT_AUTH,	  /* credentials to check: smtp_session_auth_take(), then
				     smtp_session_auth_done() */
	SMTP_EVENT_CLOSE,	  /* flush the output and close */
};

enum smtp_state {
	SMTP_STATE_INIT,      /* greeted, no HELO/EHLO yet */
	SMTP_STATE_READY,     /* HELO/EHLO done, no transaction */
	SMTP_STATE_MAIL,      /* MAIL accepted */
	SMTP_STATE_RCPT,      /* at least one RCPT accepted */
	SMTP_STATE_DATA,      /* reading a DATA body */
	SMTP_STATE_BDAT,      /* reading a BDAT chunk */
	SMTP_STATE_BDAT_NEXT, /* between BDAT chunks */
	SMTP_STATE_DISCARD,   /* reading and dropping a refused BDAT chunk */
	SMTP_STATE_COMMIT,    /* waiting for smtp_session_commit_done() */
	SMTP_STATE_TLS,	      /* waiting for smtp_session_tls_started() */
	SMTP_STATE_AUTH,      /* reading a SASL response line (RFC 4954 4) */
	SMTP_STATE_AUTH_WAIT, /* waiting for smtp_session_auth_done() */
	SMTP_STATE_CLOSED,    /* nothing more is read */
};
#define SMTP_STATE_COUNT (SMTP_STATE_CLOSED + 1)

/* Creates a session and queues the 220 greeting.  cfg and policy are copied. */
struct smtp_session *smtp_session_new(const struct smtp_session_conf *cfg,
				      const struct smtp_policy *policy);
void smtp_session_free(struct smtp_session *s);

/*
 * Feeds client bytes.  Returns how many were consumed (possibly fewer than
 * len, possibly 0 when only a partial command line is there — keep those
 * bytes and feed them again with what follows) and sets *ev to the event the
 * glue must act on before feeding again.  After acting on an event, feed
 * again even when no input is left (len 0): the session may have more to do
 * (a zero-size BDAT chunk ends without input).  It also stops consuming
 * while its output holds more than a few dozen KiB: write the output, then
 * feed again.
 */
size_t smtp_session_feed(struct smtp_session *s, const char *in, size_t len, enum smtp_event *ev);

/* Replies waiting to be written; the glue writes them and empties the buffer. */
struct buf *smtp_session_output(struct smtp_session *s);

/* Body octets decoded so far (SMTP_EVENT_BODY / MESSAGE_END); the buffer is then emptied. */
void smtp_session_body_take(struct smtp_session *s, const char **data, size_t *len);

enum smtp_commit_result {
	SMTP_COMMIT_OK,	      /* on stable storage: 250 */
	SMTP_COMMIT_NO_SPACE, /* disk full: 452 4.3.1 */
	SMTP_COMMIT_ERROR,    /* any other local failure: 451 4.3.0 */
};
/* Ends SMTP_STATE_COMMIT with the glue's result; id (queue id) is quoted in the 250. */
void smtp_session_commit_done(struct smtp_session *s, enum smtp_commit_result r, const char *id);
/* Ends SMTP_STATE_TLS: the session starts over (EHLO required again, RFC 3207 4.2). */
void smtp_session_tls_started(struct smtp_session *s);
/*
 * The credentials of SMTP_EVENT_AUTH (borrowed, wiped at auth_done).  user
 * is the authentication identity as given; password may hold any octet but
 * NUL.
 */
void smtp_session_auth_take(const struct smtp_session *s, const char **user, const char **password);
/*
 * Ends SMTP_STATE_AUTH_WAIT: 235, or 535 5.7.8 (and 421 after too many
 * failures).  The 535 is not told to policy.refused: the glue logs a
 * failed check when it learns of it (the 535 may come seconds later).
 */
void smtp_session_auth_done(struct smtp_session *s, bool ok);
/* The SASL mechanism of the last AUTH exchange, "PLAIN" or "LOGIN" (for the log). */
const char *smtp_session_auth_mechanism(const struct smtp_session *s);
/* The authenticated user, or NULL. */
const char *smtp_session_auth_user(const struct smtp_session *s);
/* The client was silent for too long: queue 421 4.4.2 and close. */
void smtp_session_timeout(struct smtp_session *s);
/* The server is stopping: queue "421 <enhanced> <host> <text>", close. */
void smtp_session_close_421(struct smtp_session *s, const char *enhanced, const char *text);
/*
 * Refuses the connection before anything was written (a connection limit,
 * a stop): the same 421 replaces the greeting, is told to policy.refused as
 * a refusal of CONNECT, and the session closes.
 */
void smtp_session_refuse(struct smtp_session *s, const char *enhanced, const char *text);

enum smtp_state smtp_session_state(const struct smtp_session *s);
const char *smtp_state_name(enum smtp_state st);

/* Envelope of the current transaction (valid from MESSAGE_BEGIN to the commit). */
const char *smtp_session_sender(const struct smtp_session *s); /* "" for <> */
size_t smtp_session_rcpt_count(const struct smtp_session *s);
const char *smtp_session_rcpt(const struct smtp_session *s, size_t i);
const struct smtp_mail_params *smtp_session_mail_params(const struct smtp_session *s);
uint64_t smtp_session_message_size(const struct smtp_session *s);
const char *smtp_session_helo(const struct smtp_session *s); /* "" before HELO/EHLO */
/* "SMTP", "ESMTP", "ESMTPS", "ESMTPA" or "ESMTPSA" (Received header "with", RFC 3848). */
const char *smtp_session_protocol(const struct smtp_session *s);
/* The session is under TLS (set by the glue for implicit TLS). */
void smtp_session_set_tls(struct smtp_session *s, bool on);

#endif
